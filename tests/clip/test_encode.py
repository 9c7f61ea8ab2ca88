import copy
from contextlib import contextmanager

import pytest
import torch
from safetensors.torch import save_file

from nodes.clip import ClipModel
from nodes.clip.encoder import final_layer_norm
from nodes.clip.tokenize import text_token_ids

from .conftest import tiny_encoder

START, END = 49406, 49407


def window_ids(tokenizer, text, pad):
    body = text_token_ids(tokenizer, text)
    return torch.tensor([[START, *body, END] + [pad] * (75 - len(body))])


def hf(module, ids):
    with torch.no_grad():
        return module(input_ids=ids, output_hidden_states=True)


@pytest.fixture
def sd15(clip_l, tokenizer):
    return ClipModel([clip_l], tokenizer, "sd15")


def test_default_sd15_output_is_the_final_layer(sd15, clip_l, tokenizer):
    cond, pooled = sd15.encode("a photo of a cat")
    ref = hf(clip_l, window_ids(tokenizer, "a photo of a cat", END))
    assert cond.shape == (1, 77, 32) and cond.dtype == torch.float32
    assert torch.equal(cond, ref.last_hidden_state)
    assert torch.equal(pooled, ref.pooler_output)   # SD1: un-projected end-token state


def test_long_prompt_gives_three_windows_and_first_window_pooled(sd15, clip_l, tokenizer):
    cond, pooled = sd15.encode("a " * 200)
    assert cond.shape == (1, 231, 32)
    a = text_token_ids(tokenizer, "a")[0]
    first = torch.tensor([[START] + [a] * 75 + [END]])
    ref = hf(clip_l, first)
    assert torch.equal(cond[:, :77], ref.last_hidden_state)
    assert torch.equal(pooled, ref.pooler_output)


def test_weight_one_everywhere_equals_unweighted(sd15):
    plain, plain_pooled = sd15.encode("a red cat sitting")
    for text in ("(a red cat sitting:1.0)", "a (red:1) cat (sitting:1.0)"):
        cond, pooled = sd15.encode(text)
        assert torch.equal(cond, plain) and torch.equal(pooled, plain_pooled)


def test_weight_changes_exactly_the_weighted_rows(sd15, tokenizer):
    plain, plain_pooled = sd15.encode("a red cat sitting")
    weighted, weighted_pooled = sd15.encode("a (red cat:1.5) sitting")
    empty, _ = sd15.encode("")
    n_a, n_rc = len(text_token_ids(tokenizer, "a ")), len(text_token_ids(tokenizer, "red cat"))
    rows = list(range(1 + n_a, 1 + n_a + n_rc))
    changed = [i for i in range(77) if not torch.equal(plain[0, i], weighted[0, i])]
    assert changed == rows
    expected = (plain[0, rows] - empty[0, rows]) * 1.5 + empty[0, rows]
    assert torch.allclose(weighted[0, rows], expected, atol=1e-6)
    assert torch.equal(weighted_pooled, plain_pooled)


def test_clip_skip_selects_a_hidden_layer_with_final_norm_for_sd15(sd15, clip_l, tokenizer):
    text = "a photo of a cat"
    ref = hf(clip_l, window_ids(tokenizer, text, END))
    last, _ = sd15.encode(text)
    skip2, pooled = sd15.clone(layer_idx=-2).encode(text)
    assert not torch.allclose(skip2, last)
    assert torch.equal(skip2, final_layer_norm(clip_l)(ref.hidden_states[-2]))
    assert torch.equal(pooled, ref.pooler_output)                 # pooled always from the last layer
    assert torch.equal(sd15.clone(layer_idx=-1).encode(text)[0], last)
    assert torch.equal(sd15.clone(layer_idx=-24).encode(text)[0], last)   # deeper than the model: last layer
    assert sd15.layer_idx is None                                 # clone leaves the original alone


def test_sd2_pads_with_zero_and_uses_penultimate_with_norm(tokenizer):
    h = tiny_encoder(hidden=32, projection=24, seed=3)
    clip = ClipModel([h], tokenizer, "sd2")
    assert [t for t, _ in clip.tokenize("a cat")["h"][0]][-1] == 0
    ids = window_ids(tokenizer, "a cat", 0)
    ref = hf(h, ids)
    cond, pooled = clip.encode("a cat")
    assert torch.equal(cond, final_layer_norm(h)(ref.hidden_states[-2]))
    assert torch.equal(pooled, ref.text_embeds)


def test_sdxl_concatenates_penultimate_l_and_g_and_pools_g(clip_l, clip_g, tokenizer):
    clip = ClipModel([clip_l, clip_g], tokenizer, "sdxl")
    cond, pooled = clip.encode("a photo of a cat")
    assert cond.shape == (1, 77, 32 + 48) and pooled.shape == (1, 40)
    ref_l = hf(clip_l, window_ids(tokenizer, "a photo of a cat", END))
    ref_g = hf(clip_g, window_ids(tokenizer, "a photo of a cat", 0))
    assert torch.equal(cond[..., :32], ref_l.hidden_states[-2])     # no final layer norm for SDXL
    assert torch.equal(cond[..., 32:], ref_g.hidden_states[-2])
    assert torch.allclose(pooled, ref_g.text_embeds)
    skip1, _ = clip.clone(layer_idx=-1).encode("a photo of a cat")
    assert torch.equal(skip1[..., 32:], ref_g.hidden_states[-1])


def test_sdxl_refiner_is_g_only(clip_g, tokenizer):
    clip = ClipModel({"g": clip_g}, tokenizer, "sdxl_refiner")
    cond, pooled = clip.encode("a cat " * 50)
    assert cond.shape == (1, 154, 48) and pooled.shape == (1, 40)


def test_custom_family_is_a_single_l_style_encoder(tokenizer):
    demo = tiny_encoder(hidden=128, layers=3, seed=4)
    cond, pooled = ClipModel([demo], tokenizer, "custom").encode("hello")
    assert cond.shape == (1, 77, 128) and pooled.shape == (1, 128)


def _with_token_row(module, token_id, vector):
    patched = copy.deepcopy(module)
    with torch.no_grad():
        patched.get_input_embeddings().weight[token_id] = vector
    return patched


def test_embedding_vectors_are_injected_at_their_slots(clip_l, tokenizer, tmp_path):
    vectors = torch.randn(2, 32)
    save_file({"emb_params": vectors}, str(tmp_path / "style.safetensors"))
    clip = ClipModel([clip_l], tokenizer, "sd15", embedding_dirs=[tmp_path])
    cond, _ = clip.encode("a embedding:style cat")

    # Reference: the same vectors placed in two spare vocabulary rows of a copy of the model.
    spare = (400, 401)
    ref_model = _with_token_row(_with_token_row(clip_l, spare[0], vectors[0]), spare[1], vectors[1])
    a, cat = text_token_ids(tokenizer, "a"), text_token_ids(tokenizer, "cat")
    ids = [START, *a, *spare, *cat, END]
    ref = hf(ref_model, torch.tensor([ids + [END] * (77 - len(ids))]))
    assert torch.allclose(cond, ref.last_hidden_state, atol=1e-6)

    # Only the embedding slots differ at the input of the transformer (token + position embeddings).
    captured = []
    embeddings = clip_l.embeddings
    handle = embeddings.register_forward_hook(lambda m, i, o: captured.append(o.clone()))
    try:
        clip.encode("a embedding:style cat")
        ClipModel([clip_l], tokenizer, "sd15").encode("a embedding:style cat")   # no folder: skipped → "a cat"
        clip.encode("a , , cat")
    finally:
        handle.remove()
    injected, _skipped, same_length = captured
    first = 1 + len(a)
    differing = [i for i in range(77) if not torch.equal(injected[0, i], same_length[0, i])]
    assert differing == [first, first + 1]
    positions = embeddings.position_embedding.weight[first:first + 2]
    assert torch.allclose(injected[0, first:first + 2] - positions, vectors, atol=1e-6)


def test_weighted_embedding_and_width_mismatch(clip_l, tokenizer, tmp_path, caplog):
    save_file({"emb_params": torch.randn(1, 32)}, str(tmp_path / "ok.safetensors"))
    save_file({"emb_params": torch.randn(1, 99)}, str(tmp_path / "wide.safetensors"))
    clip = ClipModel([clip_l], tokenizer, "sd15", embedding_dirs=[tmp_path])
    plain, _ = clip.encode("a embedding:ok cat")
    weighted, _ = clip.encode("a (embedding:ok:1.4) cat")
    assert torch.equal(plain[0, :2], weighted[0, :2]) and not torch.equal(plain[0, 2], weighted[0, 2])
    mismatched, _ = clip.encode("a embedding:wide cat")
    assert "shape mismatch" in caplog.text
    assert torch.equal(mismatched, clip.encode("a cat")[0])   # dropped; a pad takes the freed slot at the end


def test_pickled_embedding_is_refused_and_skipped(clip_l, tokenizer, tmp_path):
    import os
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.mkdir, (str(tmp_path / "pwned"),))

    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump(Evil(), f)
    clip = ClipModel([clip_l], tokenizer, "sd15", embedding_dirs=[tmp_path])
    assert torch.equal(clip.encode("a embedding:evil cat")[0], clip.encode("a cat")[0])
    assert not (tmp_path / "pwned").exists()


class RecordingManager:
    """A stand-in for the model manager: records which modules were used and checks they run inside `use`."""

    def __init__(self):
        self.used = []
        self.active = None

    @contextmanager
    def use(self, module):
        self.used.append(module)
        self.active = module
        try:
            yield module
        finally:
            self.active = None


def test_encoders_run_inside_the_manager(clip_l, clip_g, tokenizer):
    manager = RecordingManager()
    seen = []
    handles = [m.register_forward_pre_hook(lambda mod, args: seen.append(manager.active is mod))
               for m in (clip_l, clip_g)]
    try:
        ClipModel([clip_l, clip_g], tokenizer, "sdxl", manager=manager).encode("(a cat:1.2)")
    finally:
        for h in handles:
            h.remove()
    assert manager.used == [clip_l, clip_g] and seen == [True, True]


def test_bad_family_and_encoder_count(clip_l, tokenizer):
    with pytest.raises(ValueError, match="unknown CLIP family"):
        ClipModel([clip_l], tokenizer, "sd3")
    with pytest.raises(ValueError, match="expected 2"):
        ClipModel([clip_l], tokenizer, "sdxl")


class CopyingManager:
    """A manager that runs a prepared copy of the module (as one that places weights on a device might)."""

    def __init__(self, copies):
        self.copies = copies

    @contextmanager
    def use(self, module):
        yield self.copies[id(module)]


def test_the_module_handed_back_by_the_manager_is_the_one_run(clip_l, tokenizer):
    other = tiny_encoder(hidden=32, seed=9)
    managed = ClipModel([clip_l], tokenizer, "sd15", manager=CopyingManager({id(clip_l): other}))
    assert torch.equal(managed.encode("a cat")[0], ClipModel([other], tokenizer, "sd15").encode("a cat")[0])


def test_clone_can_swap_encoders_and_keeps_the_layer(clip_l, tokenizer):
    other = tiny_encoder(hidden=32, seed=9)
    skipped = ClipModel([clip_l], tokenizer, "sd15").clone(layer_idx=-2)
    swapped = skipped.clone(text_encoders=[other])
    assert swapped.layer_idx == -2 and swapped.text_encoders["l"] is other
    direct = ClipModel([other], tokenizer, "sd15", layer_idx=-2)
    assert torch.equal(swapped.encode("a cat")[0], direct.encode("a cat")[0])
