"""Conditioning evaluation: strength, areas (+ feather), masks, timestep ranges, batching, CFG."""
import pytest
import torch

from nodes.samplers.conds import (
    entry_weight,
    feather_area_edges,
    guided_x0,
    mask_bounds,
    repeat_to_batch,
    resolve_area,
)
from tests.samplers.toy import ToyModel, toy_network

SIGMA = torch.tensor([2.0])


def cond(value, dim=768, tokens=77, **options):
    return [torch.full((1, tokens, dim), value), options]


def direct_x0(model, x, sigma, context):
    """x0 of one plain network pass on x (no weighting), from the model-sampling formulas."""
    ms = model.model_sampling
    out = toy_network(ms.calculate_input(sigma, x), ms.timestep(sigma).float(), context)
    return ms.calculate_denoised(sigma, out, x)


@pytest.fixture
def x():
    return torch.randn(1, 4, 24, 24, generator=torch.Generator().manual_seed(0))


def test_single_entry_strength_is_normalised_away(x):
    model = ToyModel()
    full, _ = guided_x0(model, x, SIGMA, [cond(0.3)], [], 1.0)
    weak, _ = guided_x0(model, x, SIGMA, [cond(0.3, strength=0.25)], [], 1.0)
    assert torch.allclose(full, weak, rtol=1e-6, atol=1e-6)
    assert torch.allclose(full, direct_x0(model, x, SIGMA, torch.full((1, 77, 768), 0.3)), atol=1e-6)


def test_combined_entries_are_averaged_by_strength(x):
    model = ToyModel()
    a = direct_x0(model, x, SIGMA, torch.full((1, 77, 768), 0.3))
    b = direct_x0(model, x, SIGMA, torch.full((1, 77, 768), -0.5))
    combined, _ = guided_x0(model, x, SIGMA, [cond(0.3, strength=1.0), cond(-0.5, strength=3.0)], [], 1.0)
    assert torch.allclose(combined, (a + 3 * b) / 4, atol=1e-5)


def test_area_entry_runs_on_its_window_with_feathered_inner_edges(x):
    calls = []
    model = ToyModel(calls=calls)
    area = cond(-0.5, area=(16, 12, 8, 4))  # h, w, y, x in latent pixels
    combined, _ = guided_x0(model, x, SIGMA, [cond(0.3), area], [], 1.0)
    assert sorted(tuple(c[0].shape) for c in calls) == [(1, 4, 16, 12), (1, 4, 24, 24)]
    full = direct_x0(model, x, SIGMA, torch.full((1, 77, 768), 0.3))
    crop = direct_x0(model, x[..., 8:24, 4:16], SIGMA, torch.full((1, 77, 768), -0.5))
    # outside the window only the full entry counts
    assert torch.allclose(combined[..., :8, :], full[..., :8, :], atol=1e-6)
    assert torch.allclose(combined[..., :, 16:], full[..., :, 16:], atol=1e-6)
    # inner edges (top at y=8, left at x=4, right at x=16) fade in over 8 pixels; the bottom edge
    # lies on the latent border and does not fade
    def fade(distance):
        return min(1.0, (distance + 1) / 8)

    for row in (0, 3, 7, 15):
        for col in (0, 5, 11):
            w = fade(row) * fade(col) * fade(11 - col)
            expected = (full[..., 8 + row, 4 + col] + w * crop[..., row, col]) / (1 + w)
            assert torch.allclose(combined[..., 8 + row, 4 + col], expected, atol=1e-5)


def test_feather_weights():
    """A 10-row area starting at y=3 in a 20-row latent: both edges are inner, their fades overlap."""
    weight = feather_area_edges(torch.ones(1, 1, 10, 10), (10, 10, 3, 0), height=20, width=10)
    expected_rows = [1 / 8, 2 / 8, 3 / 8, 4 / 8 * 7 / 8, 5 / 8 * 6 / 8, 6 / 8 * 5 / 8, 7 / 8 * 4 / 8, 3 / 8, 2 / 8, 1 / 8]
    assert weight[0, 0, :, 5].tolist() == pytest.approx(expected_rows)
    assert torch.equal(weight[0, 0, 5, :], torch.full((10,), 6 / 8 * 5 / 8))  # columns span the latent


def test_percentage_area_is_rounded_to_latent_pixels():
    assert resolve_area(("percentage", 0.5, 0.25, 0.5, 0.0), 24, 24) == (12, 6, 12, 0)
    assert resolve_area(("percentage", 0.01, 0.01, 0.0, 0.0), 24, 24) == (1, 1, 0, 0)
    assert resolve_area((8, 8, 0, 8), 24, 24) == (8, 8, 0, 8)
    assert resolve_area(None, 24, 24) is None


def test_mask_weights_blend_per_pixel_without_feather(x):
    model = ToyModel()
    mask = torch.zeros(1, 48, 48)
    mask[:, :, 24:] = 1.0  # pixel-space mask, right half; resized to the latent
    masked = cond(-0.5, mask=mask, mask_strength=0.5)
    combined, _ = guided_x0(model, x, SIGMA, [cond(0.3), masked], [], 1.0)
    a = direct_x0(model, x, SIGMA, torch.full((1, 77, 768), 0.3))
    b = direct_x0(model, x, SIGMA, torch.full((1, 77, 768), -0.5))
    assert torch.allclose(combined[..., :11], a[..., :11], atol=1e-6)
    assert torch.allclose(combined[..., 13:], (a[..., 13:] + 0.5 * b[..., 13:]) / 1.5, atol=1e-5)
    window, weight = entry_weight({"mask": mask, "strength": 2.0}, x.shape)
    assert window == (slice(0, 24), slice(0, 24)) and float(weight.max()) == 2.0


def test_mask_bounds_become_the_area():
    mask = torch.zeros(1, 24, 24)
    mask[:, 5:9, 10:20] = 1.0
    assert mask_bounds(mask) == (4, 10, 5, 10)
    window, weight = entry_weight({"mask": mask, "set_area_to_bounds": True}, torch.Size([1, 4, 24, 24]))
    assert window == (slice(5, 9), slice(10, 20)) and weight.shape == (1, 4, 4, 10)
    assert torch.all(weight == 1.0)


def test_timestep_range_switches_entries_on_and_off(x):
    model = ToyModel()
    late_only = cond(-0.5, start_percent=0.5, end_percent=1.0)
    high = torch.tensor([5.0])  # above percent_to_sigma(0.5) = 1.6156: entry inactive
    low = torch.tensor([1.0])
    only_base_high, _ = guided_x0(model, x, high, [cond(0.3), late_only], [], 1.0)
    base_high, _ = guided_x0(model, x, high, [cond(0.3)], [], 1.0)
    assert torch.equal(only_base_high, base_high)
    both_low, _ = guided_x0(model, x, low, [cond(0.3), late_only], [], 1.0)
    base_low, _ = guided_x0(model, x, low, [cond(0.3)], [], 1.0)
    assert not torch.allclose(both_low, base_low)


def test_cfg_one_skips_the_uncond_pass_and_cfg_combines_in_x0_space(x):
    calls = []
    model = ToyModel(calls=calls)
    x0, uncond = guided_x0(model, x, SIGMA, [cond(0.3)], [cond(-0.2)], 1.0)
    assert uncond is None and [c[0].shape[0] for c in calls] == [1]
    calls.clear()
    x0_pp, uncond_pp = guided_x0(model, x, SIGMA, [cond(0.3)], [cond(-0.2)], 1.0, force_uncond=True)
    assert [c[0].shape[0] for c in calls] == [2] and uncond_pp is not None
    assert torch.allclose(x0_pp, x0, atol=1e-6)
    calls.clear()
    guided, uncond = guided_x0(model, x, SIGMA, [cond(0.3)], [cond(-0.2)], 7.5)
    assert [c[0].shape[0] for c in calls] == [2]
    assert torch.equal(guided, uncond + (x0 - uncond) * 7.5)


def test_context_rows_follow_the_latent_batch_and_lengths_split_calls():
    calls = []
    model = ToyModel(calls=calls)
    x = torch.randn(3, 4, 8, 8)
    two_rows = [torch.stack([torch.full((77, 768), 0.1), torch.full((77, 768), 0.2)]), {}]
    guided_x0(model, x, torch.full((3,), 2.0), [two_rows, cond(0.3, tokens=154)], [], 1.0)
    assert sorted(c[0].shape[0] for c in calls) == [3, 3]  # 77 and 154 tokens cannot share a call
    assert repeat_to_batch(torch.arange(2), 5).tolist() == [0, 1, 0, 1, 0]
    assert repeat_to_batch(torch.arange(4), 3).tolist() == [0, 1, 2]
