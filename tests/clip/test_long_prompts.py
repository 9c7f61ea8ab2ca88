"""Huge prompts: tokenized in whitespace-cut pieces (same ids), packed in linear time, interruptible between units."""

import pytest

from graphengine import CancelToken, Interrupted
from nodes.clip.tokenize import (TEXT_UNIT_CHARS, TokenizerSpec, pack_windows, text_pieces, text_token_ids,
                                 tokenize_prompt)

SD1 = TokenizerSpec(start_id=49406, end_id=49407, pad_id=49407)
MIXED = "A  (Cat),  Dog!!\n x héllo wörld 123 it's <|endoftext|> ok\t\tdone ... 😀 emoji, ((nested:1.2)) end "


def test_pieces_are_cut_at_whitespace_and_rejoin_to_the_text():
    text = MIXED * 20
    pieces = text_pieces(text, 17)
    assert "".join(pieces) == text
    assert all(len(p) >= 17 for p in pieces[:-1])
    assert all(p[0].isspace() for p in pieces[1:])
    assert text_pieces("x" * 100, 10) == ["x" * 100]  # no whitespace: one piece


@pytest.mark.parametrize("size", [1, 5, 17, 64])
def test_tokenizing_in_pieces_gives_the_same_ids(tokenizer, size):
    text = MIXED * 8
    whole = text_token_ids(tokenizer, text)
    assert [t for piece in text_pieces(text, size) for t in text_token_ids(tokenizer, piece)] == whole


def test_a_huge_group_packs_into_full_windows_in_order():
    group = [(i % 40000, 1.0) for i in range(150_000)]
    windows = pack_windows([group], SD1)
    assert len(windows) == 2000
    assert all(len(w) == 77 and w[0][0] == SD1.start_id and w[76][0] == SD1.end_id for w in windows)
    assert [slot for w in windows for slot in w[1:76]] == group


def test_huge_prompt_reports_units_and_stops_when_cancelled(tokenizer):
    text = "a red circle, " * (TEXT_UNIT_CHARS // 14 * 3 + 10)  # just over 3 units of text
    ticks = []
    windows = tokenize_prompt(text, tokenizer, SD1, lambda name: None,
                              progress=lambda done, total: ticks.append((done, total)))
    assert ticks == [(0, 4), (1, 4), (2, 4), (3, 4), (4, 4)]
    assert [t for w in windows for t, _ in w[1:76] if t != SD1.end_id] == text_token_ids(tokenizer, text)

    token = CancelToken()

    def cancel_at_second_unit(done, total):
        token.raise_if_cancelled()
        if done == 1:
            token.cancel()

    with pytest.raises(Interrupted):
        tokenize_prompt(text, tokenizer, SD1, lambda name: None, progress=cancel_at_second_unit)
