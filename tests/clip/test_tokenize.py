import logging

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
import torch
from safetensors.torch import save_file

from nodes.clip.embeddings import load_embedding
from nodes.clip.tokenize import TokenizerSpec, pack_windows, text_token_ids, tokenize_prompt

START, END = 49406, 49407
SD1 = TokenizerSpec(start_id=START, end_id=END, pad_id=END)
OPENCLIP = TokenizerSpec(start_id=START, end_id=END, pad_id=0)


def no_embeddings(name):
    return None


def ids(window):
    return [t if isinstance(t, int) else "vec" for t, _ in window]


@pytest.mark.parametrize("text", ["a photo of a cat", "A  (Cat),  Dog!!\n x", "héllo wörld 123"])
def test_text_ids_match_the_tokenizer_without_specials(tokenizer, text):
    assert text_token_ids(tokenizer, text) == tokenizer(text)["input_ids"][1:-1]


def test_short_prompt_is_one_padded_window(tokenizer):
    (window,) = tokenize_prompt("a cat", tokenizer, SD1, no_embeddings)
    body = text_token_ids(tokenizer, "a cat")
    assert ids(window) == [START, *body, END] + [END] * (77 - 2 - len(body))
    (window,) = tokenize_prompt("a cat", tokenizer, OPENCLIP, no_embeddings)
    assert ids(window) == [START, *body, END] + [0] * (77 - 2 - len(body))


def test_empty_prompt(tokenizer):
    (window,) = tokenize_prompt("", tokenizer, OPENCLIP, no_embeddings)
    assert ids(window) == [START, END] + [0] * 75


def test_long_prompt_is_cut_into_77_token_windows(tokenizer):
    assert len(text_token_ids(tokenizer, "a " * 200)) == 200
    windows = tokenize_prompt("a " * 200, tokenizer, SD1, no_embeddings)
    assert [len(w) for w in windows] == [77, 77, 77]
    a = text_token_ids(tokenizer, "a")[0]
    assert ids(windows[0]) == [START] + [a] * 75 + [END]
    assert ids(windows[1]) == [START] + [a] * 75 + [END]
    assert ids(windows[2]) == [START] + [a] * 50 + [END] * 26


def test_short_groups_move_whole_to_the_next_window():
    windows = pack_windows([[(1, 1.0)] * 70, [(2, 1.0)] * 7], SD1)
    assert ids(windows[0]) == [START] + [1] * 70 + [END] * 6
    assert ids(windows[1]) == [START] + [2] * 7 + [END] * 69


def test_groups_of_eight_or_more_are_cut_at_the_window_edge():
    windows = pack_windows([[(1, 1.0)] * 70, [(2, 1.0)] * 8], OPENCLIP)
    assert ids(windows[0]) == [START] + [1] * 70 + [2] * 5 + [END]
    assert ids(windows[1]) == [START] + [2] * 3 + [END] + [0] * 72


def test_weights_follow_the_tokens(tokenizer):
    (window,) = tokenize_prompt("a (red cat:1.5) ((dog))", tokenizer, SD1, no_embeddings)
    weights = [w for _, w in window]
    n_a, n_red_cat = len(text_token_ids(tokenizer, "a ")), len(text_token_ids(tokenizer, "red cat"))
    assert weights[0] == 1.0
    assert weights[1:1 + n_a] == [1.0] * n_a
    assert weights[1 + n_a:1 + n_a + n_red_cat] == [1.5] * n_red_cat
    assert weights[1 + n_a + n_red_cat] == pytest.approx(1.21)   # the " " run has no tokens
    assert set(weights[-70:]) == {1.0}


def test_embedding_vectors_take_slots_with_the_chunk_weight(tokenizer, tmp_path):
    vectors = torch.randn(3, 32)
    save_file({"emb_params": vectors}, str(tmp_path / "style.safetensors"))

    def find(name):
        return load_embedding(name, [tmp_path], "clip_l", 32)

    (window,) = tokenize_prompt("a (embedding:style:0.8) cat", tokenizer, SD1, find)
    a, cat = text_token_ids(tokenizer, "a"), text_token_ids(tokenizer, "cat")
    assert ids(window)[:1 + len(a) + 3 + len(cat) + 1] == [START, *a, "vec", "vec", "vec", *cat, END]
    slots = window[1 + len(a):1 + len(a) + 3]
    assert all(torch.equal(t, vectors[i]) and w == 0.8 for i, (t, w) in enumerate(slots))


def test_trailing_comma_after_embedding_name_is_retried_and_kept_as_text(tokenizer, tmp_path):
    save_file({"emb_params": torch.randn(1, 32)}, str(tmp_path / "style.safetensors"))
    find = lambda name: load_embedding(name, [tmp_path], "clip_l", 32)  # noqa: E731
    (window,) = tokenize_prompt("embedding:style, dog", tokenizer, SD1, find)
    assert ids(window)[:5] == [START, "vec", *text_token_ids(tokenizer, ", dog"), END]


def test_missing_embedding_warns_and_is_skipped_but_following_text_is_kept(tokenizer, caplog):
    with caplog.at_level(logging.WARNING):
        got = tokenize_prompt("embedding:nothere dog", tokenizer, SD1, no_embeddings)
    assert "embedding:nothere does not exist" in caplog.text
    assert ids(got[0]) == ids(tokenize_prompt("dog", tokenizer, SD1, no_embeddings)[0])


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(list("()[]:\\ \n,.ab1e") + ["embedding:x", "word ", "(y:1.5)"]),
                max_size=120).map("".join))
def test_fuzz_every_window_is_well_formed(tokenizer, text):
    for window in tokenize_prompt(text, tokenizer, OPENCLIP, no_embeddings):
        tokens = ids(window)
        assert len(tokens) == 77 and tokens[0] == START and END in tokens
