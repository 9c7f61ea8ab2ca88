"""Token merging (ToMe for SD): the bipartite matching / merge / unmerge functions on small tensors, and the
TomePatch module patch on a tiny UNet (which attention layers it merges, ratio 0, determinism, clean instance)."""

from __future__ import annotations

import pytest
import torch

from nodes.lora.applied import module_patches_applied
from nodes.model_patches.tome import TomePatch, top_level
from nodes.model_patches.token_merging import bipartite_matching, destination_mask, merge, unmerge

from .test_module_patch_math import hook_state, inputs
from .tiny import tiny_unet


def windowed(h: int, w: int, channels: int = 6, batch: int = 2, seed: int = 0) -> torch.Tensor:
    """[B, h·w, C] tokens, identical within each 2x2 window, distinct (positive, so never opposite) across windows."""
    g = torch.Generator().manual_seed(seed)
    per_window = torch.rand(batch, h // 2, w // 2, channels, generator=g) + 0.1
    grid = per_window.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)
    return grid.reshape(batch, h * w, channels)


def test_one_destination_per_window_at_a_random_cell():
    masks = [destination_mask(6, 8, 2, 2, torch.Generator().manual_seed(s)) for s in range(4)]
    for mask in masks:
        windows = mask.reshape(3, 2, 4, 2).permute(0, 2, 1, 3).reshape(12, 4)
        assert windows.sum(dim=1).tolist() == [1] * 12
    assert len({tuple(m.flatten().tolist()) for m in masks}) > 1
    # a partial window at the bottom/right edge holds only sources
    assert not destination_mask(5, 5, 2, 2, torch.Generator().manual_seed(0))[4].any()


@pytest.mark.parametrize("r", [1, 7, 24, 100])
def test_merged_count_is_n_minus_r_and_at_most_the_sources(r):
    x = torch.randn(2, 64, 5)
    matching = bipartite_matching(x, 8, 8, r, generator=torch.Generator().manual_seed(1))
    merged = merge(x, matching)
    removed = min(r, 64 - 16)  # 16 destinations: at most the 48 sources merge
    assert merged.shape == (2, 64 - removed, 5) and matching.merged_tokens == 64 - removed
    assert unmerge(merged, matching).shape == x.shape


def test_unmerge_after_merge_is_the_identity_when_merged_tokens_are_identical():
    x = windowed(8, 8)
    matching = bipartite_matching(x, 8, 8, 48, generator=torch.Generator().manual_seed(2))
    # every source is identical to the destination of its own window and merges into it
    assert matching.merged_tokens == 16
    torch.testing.assert_close(unmerge(merge(x, matching), matching), x, rtol=0, atol=1e-6)


def test_unmerge_puts_kept_tokens_back_exactly_and_merged_ones_take_their_destinations_value():
    x = torch.randn(1, 36, 4, generator=torch.Generator().manual_seed(3))
    matching = bipartite_matching(x, 6, 6, 10, generator=torch.Generator().manual_seed(3))
    y = torch.randn(1, matching.merged_tokens, 4)
    out = unmerge(y, matching)
    kept = matching.sources[matching.kept[0]]
    assert torch.equal(out[0, kept], y[0, :kept.numel()])
    assert torch.equal(out[0, matching.destinations], y[0, kept.numel():])
    moved = matching.sources[matching.merged[0]]
    assert torch.equal(out[0, moved], y[0, kept.numel() + matching.targets[0]])


def test_a_merge_averages_the_most_similar_source_into_its_destination():
    x = torch.randn(1, 16, 3, generator=torch.Generator().manual_seed(4))
    matching = bipartite_matching(x, 4, 4, 1, generator=torch.Generator().manual_seed(4))
    unit = x[0] / x[0].norm(dim=-1, keepdim=True)
    similarity = unit[matching.sources] @ unit[matching.destinations].T
    best_source, best_target = divmod(int(similarity.argmax()), matching.destinations.numel())
    assert (int(matching.merged[0, 0]), int(matching.targets[0, 0])) == (best_source, best_target)
    merged = merge(x, matching)
    source, destination = x[0, matching.sources[best_source]], x[0, matching.destinations[best_target]]
    torch.testing.assert_close(merged[0, matching.kept.shape[1] + best_target], (destination + source) / 2)


def test_nothing_merges_for_r_zero_or_a_grid_one_token_wide():
    x = torch.randn(1, 16, 3)
    assert bipartite_matching(x, 4, 4, 0) is None
    assert bipartite_matching(x, 1, 16, 5) is None
    with pytest.raises(ValueError, match="4x5 grid"):
        bipartite_matching(x, 4, 5, 5)


def test_only_the_top_level_is_patched():
    assert top_level(64 * 48, (64, 48))
    assert not top_level(32 * 24, (64, 48))
    assert not top_level(16 * 12, (64, 48))


# -- the patch on a UNet -------------------------------------------------------------------------------------------

def attention_rows(unet, sample, context) -> dict[str, int]:
    """Rows of the hidden states each attn1 is called with."""
    rows, handles = {}, []
    for name, module in unet.named_modules():
        if name.endswith(".attn1"):
            def record(_m, args, kwargs, name=name):
                rows[name] = int(kwargs.get("hidden_states", args[0] if args else None).shape[1])
            handles.append(module.register_forward_pre_hook(record, with_kwargs=True))
    try:
        with torch.no_grad():
            unet(sample, 10, encoder_hidden_states=context)
    finally:
        for handle in handles:
            handle.remove()
    return rows


@pytest.fixture(scope="module")
def unet():
    return tiny_unet()


def unet_out(unet, patch, sample, context) -> torch.Tensor:
    with module_patches_applied(unet, (patch,)), torch.no_grad():
        return unet(sample, 10, encoder_hidden_states=context).sample


def test_the_patch_merges_queries_of_the_top_level_self_attention_only(unet):
    sample, context = inputs(16)
    plain = attention_rows(unet, sample, context)
    with module_patches_applied(unet, (TomePatch(0.5),)):
        patched = attention_rows(unet, sample, context)
    top = {name for name, rows in plain.items() if rows == 256}
    assert top and top != set(plain)
    assert patched == {name: 256 - 128 if name in top else rows for name, rows in plain.items()}


def test_ratio_zero_is_bit_identical_and_a_ratio_changes_the_output_a_little(unet):
    sample, context = inputs(16)
    clean = hook_state(unet)
    with torch.no_grad():
        base = unet(sample, 10, encoder_hidden_states=context).sample
    assert torch.equal(unet_out(unet, TomePatch(0.0), sample, context), base)
    merged = unet_out(unet, TomePatch(0.5), sample, context)
    again = unet_out(unet, TomePatch(0.5), sample, context)
    assert torch.equal(merged, again)  # the destination draw is seeded per run
    change = (merged - base).abs().mean() / base.abs().mean()
    assert 0 < change < 0.2
    assert hook_state(unet) == clean
    with torch.no_grad():
        assert torch.equal(unet(sample, 10, encoder_hidden_states=context).sample, base)
