import math

import pytest
import torch
import torch.nn.functional as F

from graphengine import PromptValidationError

from .helpers import const


def latent_batch(batch: int, channels: int = 4, h: int = 2, w: int = 2) -> torch.Tensor:
    return torch.arange(batch * channels * h * w, dtype=torch.float32).reshape(batch, channels, h, w)


def test_empty_latent_image_shape_and_zeros(run_node):
    out = run_node("EmptyLatentImage", {"width": 72, "height": 64, "batch_size": 3})
    assert set(out) == {"samples"}
    assert out["samples"].shape == (3, 4, 8, 9)
    assert torch.count_nonzero(out["samples"]) == 0


def test_empty_latent_image_bounds_are_validated(executor):
    prompt = {"n": {"class_type": "EmptyLatentImage", "inputs": {"width": 8, "height": 64, "batch_size": 1}},
              "out": {"class_type": "Capture", "inputs": {"value": ["n", 0]}}}
    with pytest.raises(PromptValidationError) as info:
        executor.execute(prompt)
    errors = info.value.node_errors["n"]["errors"]
    assert errors[0]["type"] == "value_smaller_than_min"


@pytest.mark.parametrize(("width", "height", "expected"), [
    (1024, 512, (128, 64)),   # (latent width, latent height) = pixels / 8
    (1024, 0, (128, 128)),    # 0 keeps the aspect ratio of the square input
    (0, 256, (32, 32)),
    (32, 32, (8, 8)),         # at least 64 px per side
    (0, 0, (4, 4)),           # both 0: unchanged
])
def test_latent_upscale_shapes(run_node, width, height, expected):
    extra = {"l": {"class_type": "EmptyLatentImage", "inputs": {"width": 32, "height": 32, "batch_size": 2}}}
    out = run_node("LatentUpscale", {"samples": ["l", 0], "upscale_method": "nearest-exact", "width": width,
                                     "height": height, "crop": "disabled"}, extra=extra)
    assert out["samples"].shape == (2, 4, expected[1], expected[0])


def test_latent_upscale_keeps_aspect_of_wide_latent(run_node):
    extra = {"l": {"class_type": "EmptyLatentImage", "inputs": {"width": 128, "height": 64, "batch_size": 1}}}
    out = run_node("LatentUpscale", {"samples": ["l", 0], "upscale_method": "bilinear", "width": 0,
                                     "height": 128, "crop": "disabled"}, extra=extra)
    assert out["samples"].shape == (1, 4, 16, 32)


def test_latent_upscale_center_crop_takes_the_middle(run_node):
    samples = latent_batch(1, 1, 2, 4)  # 2 rows x 4 columns; square target crops columns 1..2
    out = run_node("LatentUpscale", {"samples": ["l", 0], "upscale_method": "nearest-exact", "width": 64,
                                     "height": 64, "crop": "center"}, extra={"l": const("Latent", samples)})
    expected = F.interpolate(samples[..., 1:3], size=(8, 8), mode="nearest-exact")
    assert torch.equal(out["samples"], expected)


def test_latent_upscale_by_nearest_repeats_values(run_node):
    samples = latent_batch(1, 1, 2, 2)
    out = run_node("LatentUpscaleBy", {"samples": ["l", 0], "upscale_method": "nearest-exact", "scale_by": 2.0},
                   extra={"l": const("Latent", samples)})
    assert torch.equal(out["samples"], samples.repeat_interleave(2, -1).repeat_interleave(2, -2))


@pytest.mark.parametrize("method", ["bilinear", "area", "bicubic"])
def test_latent_upscale_by_torch_modes(run_node, method):
    samples = latent_batch(2, 4, 3, 5)
    out = run_node("LatentUpscaleBy", {"samples": ["l", 0], "upscale_method": method, "scale_by": 1.5},
                   extra={"l": const("Latent", samples)})
    assert torch.allclose(out["samples"], F.interpolate(samples, size=(4, 8), mode=method))


def test_bislerp_keeps_unit_length_between_orthogonal_vectors(run_node):
    # two pixels with orthogonal unit channel vectors (1,0) and (0,1)
    samples = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])
    out = run_node("LatentUpscaleBy", {"samples": ["l", 0], "upscale_method": "bislerp", "scale_by": 2.0},
                   extra={"l": const("Latent", samples)})["samples"]
    assert out.shape == (1, 2, 2, 4)
    vectors = out[0, :, 0, :].T  # 4 positions x 2 channels
    # half-pixel positions 0, 0.25, 0.75, 1 (clamped) between the two vectors
    for vector, t in zip(vectors, [0.0, 0.25, 0.75, 1.0]):
        angle = t * math.pi / 2
        assert torch.allclose(vector, torch.tensor([math.cos(angle), math.sin(angle)]), atol=1e-6)
    assert torch.allclose(out[0, :, 0], out[0, :, 1])  # rows identical (one source row)


def test_latent_from_batch_golden_batch_index(run_node):
    samples = latent_batch(6)
    out = run_node("LatentFromBatch", {"samples": ["l", 0], "batch_index": 3, "length": 2},
                   extra={"l": const("Latent", samples)})
    assert out["batch_index"] == [3, 4]
    assert torch.equal(out["samples"], samples[3:5])


def test_latent_from_batch_chained_keeps_original_indices(run_node):
    samples = latent_batch(6)
    extra = {"l": const("Latent", samples),
             "a": {"class_type": "LatentFromBatch", "inputs": {"samples": ["l", 0], "batch_index": 2, "length": 3}}}
    out = run_node("LatentFromBatch", {"samples": ["a", 0], "batch_index": 1, "length": 5}, extra=extra)
    assert out["batch_index"] == [3, 4]
    assert torch.equal(out["samples"], samples[3:5])


@pytest.mark.parametrize(("index", "length", "expected"), [
    (-1, 1, [5]), (-2, 2, [4, 5]), (10, 3, [5]), (4, 64, [4, 5]), (-100, 1, [0]), (0, 1, [0]),
])
def test_latent_from_batch_clamps_and_counts_from_end(run_node, index, length, expected):
    samples = latent_batch(6)
    out = run_node("LatentFromBatch", {"samples": ["l", 0], "batch_index": index, "length": length},
                   extra={"l": const("Latent", samples)})
    assert out["batch_index"] == expected
    assert torch.equal(out["samples"], samples[expected[0]:expected[-1] + 1])


def test_repeat_latent_batch_repeats_samples_and_offsets_indices(run_node):
    samples = latent_batch(2)
    out = run_node("RepeatLatentBatch", {"samples": ["l", 0], "amount": 3},
                   extra={"l": const("Latent", samples, batch_index=[3, 4])})
    assert torch.equal(out["samples"], torch.cat([samples] * 3))
    assert out["batch_index"] == [3, 4, 5, 6, 7, 8]


def test_repeat_latent_batch_without_index_adds_none(run_node):
    out = run_node("RepeatLatentBatch", {"samples": ["l", 0], "amount": 2},
                   extra={"l": const("Latent", latent_batch(1))})
    assert out["samples"].shape == (2, 4, 2, 2)
    assert "batch_index" not in out


def test_set_latent_noise_mask_and_slicing_keeps_it(run_node, executor):
    masks = torch.stack([torch.full((4, 4), float(i) / 4) for i in range(4)])
    extra = {"l": const("Latent", latent_batch(4)), "m": const("Mask", masks),
             "s": {"class_type": "SetLatentNoiseMask", "inputs": {"samples": ["l", 0], "mask": ["m", 0]}}}
    out = run_node("LatentFromBatch", {"samples": ["s", 0], "batch_index": 1, "length": 2}, extra=extra)
    assert torch.equal(out["noise_mask"], masks[1:3].unsqueeze(1))
    with_mask = run_node("SetLatentNoiseMask", {"samples": ["l", 0], "mask": ["m", 0]}, extra=extra)
    assert with_mask["noise_mask"].shape == (4, 1, 4, 4)
    assert torch.equal(with_mask["samples"], latent_batch(4))
