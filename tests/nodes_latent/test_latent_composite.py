"""LatentComposite, LatentCompositeMasked, LatentBlend, LatentCrop, LatentFlip, LatentRotate on exact values."""

import torch
import torch.nn.functional as F

from .conftest import lat, msk, ramp


def test_composite_places_and_clips(run):
    to, src = torch.zeros(2, 4, 4, 4), ramp(1, 4, 3, 3) + 10
    out = run("LatentComposite", {"samples_to": ["a", 0], "samples_from": ["b", 0], "x": 16, "y": 8, "feather": 0},
              a=lat(to, batch_index=[7, 8]), b=lat(src))
    expected = to.clone()
    expected[:, :, 1:4, 2:4] = src[:, :, :3, :2]
    assert torch.equal(out["samples"], expected) and out["batch_index"] == [7, 8]
    outside = run("LatentComposite", {"samples_to": ["a", 0], "samples_from": ["b", 0], "x": 64, "y": 0,
                                      "feather": 0}, a=lat(to), b=lat(src))
    assert torch.equal(outside["samples"], to)


def test_composite_feathers_only_inner_edges(run):
    to, src = torch.zeros(1, 1, 8, 8), torch.ones(1, 1, 4, 4)
    inner = run("LatentComposite", {"samples_to": ["a", 0], "samples_from": ["b", 0], "x": 16, "y": 16,
                                    "feather": 16}, a=lat(to), b=lat(src))
    edge = torch.tensor([0.5, 1.0, 1.0, 0.5])
    assert torch.equal(inner["samples"][0, 0, 2:6, 2:6], edge[:, None] * edge[None, :])
    assert inner["samples"].sum() == (edge[:, None] * edge[None, :]).sum()
    corner = run("LatentComposite", {"samples_to": ["a", 0], "samples_from": ["b", 0], "x": 0, "y": 0,
                                     "feather": 16}, a=lat(to), b=lat(src))
    right = torch.tensor([1.0, 1.0, 1.0, 0.5])  # only the right and bottom edges lie inside the destination
    assert torch.equal(corner["samples"][0, 0, :4, :4], right[:, None] * right[None, :])


def test_composite_masked_without_and_with_mask(run):
    dest, src = torch.zeros(1, 4, 4, 4), ramp(1, 4, 2, 2) + 5
    dest_mask = torch.zeros(1, 1, 32, 32)
    plain = run("LatentCompositeMasked", {"destination": ["a", 0], "source": ["b", 0], "x": 24, "y": 8,
                                          "resize_source": False}, a=lat(dest, noise_mask=dest_mask), b=lat(src))
    expected = dest.clone()
    expected[:, :, 1:3, 3:4] = src[:, :, :, :1]
    assert torch.equal(plain["samples"], expected)
    assert torch.equal(plain["noise_mask"], dest_mask)
    mask = torch.tensor([[[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]])  # 2×4 pixels, resized to the 2×2 source
    masked = run("LatentCompositeMasked", {"destination": ["a", 0], "source": ["b", 0], "x": 0, "y": 0,
                                           "resize_source": False, "mask": ["m", 0]}, a=lat(dest), b=lat(src),
                 m=msk(mask))
    weight = F.interpolate(mask.reshape(1, 1, 2, 4), size=(2, 2), mode="bilinear")
    expected = dest.clone()
    expected[:, :, :2, :2] = weight * src
    assert torch.equal(masked["samples"], expected)


def test_composite_masked_resize_source_fills_the_destination(run):
    dest, src = torch.zeros(2, 4, 4, 4), ramp(2, 4, 2, 2)
    out = run("LatentCompositeMasked", {"destination": ["a", 0], "source": ["b", 0], "x": 8, "y": 8,
                                        "resize_source": True}, a=lat(dest), b=lat(src))
    stretched = F.interpolate(src, size=(4, 4), mode="bilinear")
    expected = dest.clone()
    expected[:, :, 1:, 1:] = stretched[:, :, :3, :3]
    assert torch.equal(out["samples"], expected)


def test_blend(run, failure):
    s1, s2 = ramp(2, 4, 2, 2), ramp(2, 4, 2, 2) * -3
    out = run("LatentBlend", {"samples1": ["a", 0], "samples2": ["b", 0], "blend_factor": 0.25},
              a=lat(s1, batch_index=[2, 3]), b=lat(s2))
    assert torch.equal(out["samples"], s1 * 0.25 + s2 * 0.75) and out["batch_index"] == [2, 3]
    errors = failure("LatentBlend", {"samples1": ["a", 0], "samples2": ["b", 0], "blend_factor": -0.1},
                     a=lat(s1), b=lat(s2))
    assert errors[0]["type"] == "value_smaller_than_min"


def test_crop_cuts_samples_and_noise_mask_together(run):
    s = ramp(1, 4, 12, 12)
    mask = torch.arange(96 * 96, dtype=torch.float32).reshape(1, 1, 96, 96)
    out = run("LatentCrop", {"samples": ["a", 0], "width": 64, "height": 80, "x": 16, "y": 8},
              a=lat(s, noise_mask=mask, batch_index=[5]))
    assert torch.equal(out["samples"], s[..., 1:11, 2:10])
    assert torch.equal(out["noise_mask"], mask[..., 8:88, 16:80]) and out["batch_index"] == [5]
    pulled_back = run("LatentCrop", {"samples": ["a", 0], "width": 64, "height": 64, "x": 96, "y": 96}, a=lat(s))
    assert torch.equal(pulled_back["samples"], s[..., 4:12, 4:12])  # offsets pulled back to keep 8 latent px


def test_crop_bounds(failure):
    errors = failure("LatentCrop", {"samples": ["a", 0], "width": 32, "height": 64, "x": 0, "y": 0},
                     a=lat(ramp(1, 4, 8, 8)))
    assert errors[0]["type"] == "value_smaller_than_min" and errors[0]["extra_info"]["input_name"] == "width"


def test_flip_and_rotate_move_the_mask_with_the_samples(run):
    s = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    mask = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    vertical = run("LatentFlip", {"samples": ["a", 0], "flip_method": "x-axis: vertically"}, a=lat(s, mask))
    assert vertical["samples"].tolist() == [[[[3.0, 4.0], [1.0, 2.0]]]]
    assert vertical["noise_mask"].tolist() == [[[[0.0, 0.0], [1.0, 0.0]]]]
    horizontal = run("LatentFlip", {"samples": ["a", 0], "flip_method": "y-axis: horizontally"}, a=lat(s))
    assert horizontal["samples"].tolist() == [[[[2.0, 1.0], [4.0, 3.0]]]]
    clockwise = run("LatentRotate", {"samples": ["a", 0], "rotation": "90 degrees"}, a=lat(s, mask))
    assert clockwise["samples"].tolist() == [[[[3.0, 1.0], [4.0, 2.0]]]]
    assert clockwise["noise_mask"].tolist() == [[[[0.0, 1.0], [0.0, 0.0]]]]
    half = run("LatentRotate", {"samples": ["a", 0], "rotation": "180 degrees"}, a=lat(s))
    assert half["samples"].tolist() == [[[[4.0, 3.0], [2.0, 1.0]]]]
    back = run("LatentRotate", {"samples": ["a", 0], "rotation": "270 degrees"}, a=lat(s))
    assert back["samples"].tolist() == [[[[2.0, 4.0], [1.0, 3.0]]]]
    same = run("LatentRotate", {"samples": ["a", 0], "rotation": "none"}, a=lat(s))
    assert torch.equal(same["samples"], s)
