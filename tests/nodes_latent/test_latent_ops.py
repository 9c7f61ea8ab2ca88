"""LatentAdd … LatentCut on exact values: batch fitting, resizing, the first input's noise_mask / batch_index kept,
bounds and shape errors."""

import pytest
import torch

from nodes.imageio import common_upscale
from nodes.latent_ops import interpolate

from .conftest import lat, ramp


def test_add_and_subtract_cycle_a_shorter_second_batch_and_keep_the_first_latents_fields(run):
    s1, s2 = ramp(3, 4, 2, 2), ramp(1, 4, 2, 2) * 10
    mask = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    extra = {"a": lat(s1, noise_mask=mask, batch_index=[4, 5, 6]), "b": lat(s2, batch_index=[9])}
    added = run("LatentAdd", {"samples1": ["a", 0], "samples2": ["b", 0]}, **extra)
    subtracted = run("LatentSubtract", {"samples1": ["a", 0], "samples2": ["b", 0]}, **extra)
    assert torch.equal(added["samples"], s1 + s2.repeat(3, 1, 1, 1))
    assert torch.equal(subtracted["samples"], s1 - s2.repeat(3, 1, 1, 1))
    assert torch.equal(added["noise_mask"], mask) and added["batch_index"] == [4, 5, 6]


def test_add_truncates_a_longer_second_batch_and_resizes_another_size(run):
    s1, s2 = ramp(1, 4, 2, 3), ramp(2, 4, 4, 4)
    out = run("LatentAdd", {"samples1": ["a", 0], "samples2": ["b", 0]}, a=lat(s1), b=lat(s2))
    assert torch.equal(out["samples"], s1 + common_upscale(s2[:1], 3, 2, "bilinear", "center"))


def test_add_refuses_other_channel_counts(failure):
    message = failure("LatentAdd", {"samples1": ["a", 0], "samples2": ["b", 0]}, a=lat(ramp(1, 4, 2, 2)),
                      b=lat(ramp(1, 3, 2, 2)))
    assert "3 and 4 channels" in message


def test_multiply_and_its_bounds(run, failure):
    s = ramp(2, 4, 2, 2)
    out = run("LatentMultiply", {"samples": ["a", 0], "multiplier": -2.5}, a=lat(s, batch_index=[1, 2]))
    assert torch.equal(out["samples"], s * -2.5) and out["batch_index"] == [1, 2]
    errors = failure("LatentMultiply", {"samples": ["a", 0], "multiplier": 10.5}, a=lat(s))
    assert errors[0]["type"] == "value_bigger_than_max"
    assert errors[0]["extra_info"]["input_name"] == "multiplier"


def test_interpolate_blends_directions_and_lengths(run):
    s1 = torch.zeros(1, 4, 1, 2)
    s1[0, 0] = 3.0  # direction (1, 0, 0, 0), length 3
    s2 = torch.zeros(1, 4, 1, 2)
    s2[0, 1] = 1.0  # direction (0, 1, 0, 0), length 1
    out = run("LatentInterpolate", {"samples1": ["a", 0], "samples2": ["b", 0], "ratio": 0.5}, a=lat(s1), b=lat(s2))
    expected = torch.zeros(1, 4, 1, 2)
    expected[0, :2] = 2.0 / 2 ** 0.5  # halfway direction (1, 1)/√2 at the mean length 2
    assert torch.allclose(out["samples"], expected, atol=1e-6)
    same = run("LatentInterpolate", {"samples1": ["a", 0], "samples2": ["b", 0], "ratio": 1.0}, a=lat(s1), b=lat(s2))
    assert torch.allclose(same["samples"], s1, atol=1e-6)


def test_interpolate_works_per_item_on_batches():
    s1, s2 = ramp(3, 4, 2, 2), ramp(3, 4, 2, 2).flip(0) * 2 + 1
    whole = interpolate(s1, s2, 0.3)
    for i in range(3):
        assert torch.allclose(whole[i:i + 1], interpolate(s1[i:i + 1], s2[i:i + 1], 0.3), atol=1e-6)
    zeros = interpolate(torch.zeros(1, 4, 2, 2), torch.zeros(1, 4, 2, 2), 0.5)
    assert torch.equal(zeros, torch.zeros(1, 4, 2, 2))  # 0/0 directions become 0, not NaN


@pytest.mark.parametrize(("dim", "axis", "second_first"), [("x", 3, False), ("-x", 3, True), ("y", 2, False),
                                                           ("-y", 2, True)])
def test_concat_along_each_axis(run, dim, axis, second_first):
    s1, s2 = ramp(2, 4, 2, 3), ramp(1, 4, 2, 3) + 100
    out = run("LatentConcat", {"samples1": ["a", 0], "samples2": ["b", 0], "dim": dim},
              a=lat(s1, batch_index=[3, 4]), b=lat(s2))
    s2 = s2.repeat(2, 1, 1, 1)
    parts = (s2, s1) if second_first else (s1, s2)
    assert torch.equal(out["samples"], torch.cat(parts, dim=axis))
    assert out["batch_index"] == [3, 4]


def test_concat_errors_name_the_shapes_and_the_video_axis(failure):
    mismatch = failure("LatentConcat", {"samples1": ["a", 0], "samples2": ["b", 0], "dim": "x"},
                       a=lat(ramp(1, 4, 2, 3)), b=lat(ramp(1, 4, 3, 3)))
    assert "(1, 4, 2, 3)" in mismatch and "(1, 4, 3, 3)" in mismatch
    video = failure("LatentConcat", {"samples1": ["a", 0], "samples2": ["b", 0], "dim": "t"},
                    a=lat(ramp(1, 4, 2, 3)), b=lat(ramp(1, 4, 2, 3)))
    assert "video latent" in video
    combo = failure("LatentConcat", {"samples1": ["a", 0], "samples2": ["b", 0], "dim": "z"},
                    a=lat(ramp(1, 4, 2, 3)), b=lat(ramp(1, 4, 2, 3)))
    assert combo[0]["type"] == "value_not_in_list"


@pytest.mark.parametrize(("dim", "index", "amount", "expected"), [
    ("x", 1, 2, lambda s: s[..., 1:3]),
    ("x", 3, 5, lambda s: s[..., 3:4]),    # clamped to what is left
    ("x", 9, 1, lambda s: s[..., 3:4]),    # index clamped to the last column
    ("x", -1, 5, lambda s: s[..., 3:4]),   # negative counts from the end
    ("x", -9, 2, lambda s: s[..., 0:2]),
    ("y", 1, 1, lambda s: s[..., 1:2, :]),
])
def test_cut(run, dim, index, amount, expected):
    s = ramp(2, 4, 3, 4)
    out = run("LatentCut", {"samples": ["a", 0], "dim": dim, "index": index, "amount": amount}, a=lat(s))
    assert torch.equal(out["samples"], expected(s))


def test_cut_bounds(failure):
    errors = failure("LatentCut", {"samples": ["a", 0], "dim": "x", "index": 0, "amount": 0}, a=lat(ramp(1, 4, 2, 2)))
    assert errors[0]["type"] == "value_smaller_than_min"
