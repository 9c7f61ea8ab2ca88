import math

import pytest
import torch
import torch.nn.functional as F

from nodes.image_filters import bayer_thresholds

from ..nodes_basic.helpers import const


def sample(batch=1, height=6, width=7, seed=0) -> torch.Tensor:
    return torch.rand(batch, height, width, 3, generator=torch.Generator().manual_seed(seed))


BLEND_EXPECTED = {
    "normal": lambda a, b: b,
    "multiply": lambda a, b: a * b,
    "screen": lambda a, b: 1 - (1 - a) * (1 - b),
    "overlay": lambda a, b: 2 * a * b if a <= 0.5 else 1 - 2 * (1 - a) * (1 - b),
    "soft_light": lambda a, b: (a - (1 - 2 * b) * a * (1 - a)) if b <= 0.5 else
    a + (2 * b - 1) * ((((16 * a - 12) * a + 4) * a if a <= 0.25 else math.sqrt(a)) - a),
    "difference": lambda a, b: a - b,
}


@pytest.mark.parametrize("mode", list(BLEND_EXPECTED))
def test_image_blend_modes(run_node, mode):
    base = torch.tensor([0.1, 0.2, 0.4, 0.6, 0.9, 0.3]).reshape(1, 1, 2, 3)
    layer = torch.tensor([0.7, 0.3, 0.5, 0.2, 0.8, 0.6]).reshape(1, 1, 2, 3)
    out = run_node("ImageBlend", {"image1": ["a", 0], "image2": ["b", 0], "blend_factor": 0.75, "blend_mode": mode},
                   extra={"a": const("Image", base), "b": const("Image", layer)})
    expected = [min(1.0, max(0.0, 0.25 * a + 0.75 * BLEND_EXPECTED[mode](a, b)))
                for a, b in zip(base.flatten().tolist(), layer.flatten().tolist())]
    assert out.flatten().tolist() == pytest.approx(expected, abs=1e-6)


def test_image_blend_resizes_image2(run_node):
    out = run_node("ImageBlend", {"image1": ["a", 0], "image2": ["b", 0], "blend_factor": 1.0, "blend_mode": "normal"},
                   extra={"a": const("Image", sample(1, 4, 4)), "b": const("Image", torch.full((1, 2, 2, 3), 0.25))})
    assert out.shape == (1, 4, 4, 3) and torch.allclose(out, torch.full_like(out, 0.25), atol=1e-6)


def reference_blur(image: torch.Tensor, radius: int, sigma: float) -> torch.Tensor:
    """ComfyUI's definition: a (2r+1)² Gaussian over coordinates spanning −1..1, reflect padding."""
    size = 2 * radius + 1
    axis = torch.linspace(-1, 1, size)
    grid_y, grid_x = torch.meshgrid(axis, axis, indexing="ij")
    kernel = torch.exp(-(grid_x**2 + grid_y**2) / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).expand(3, 1, size, size)
    padded = F.pad(image.movedim(-1, 1), (radius,) * 4, mode="reflect")
    return F.conv2d(padded, kernel, groups=3).movedim(1, -1)


@pytest.mark.parametrize(("radius", "sigma"), [(1, 1.0), (3, 0.5), (2, 4.0)])
def test_image_blur_matches_the_definition(run_node, radius, sigma):
    image = sample(2)
    out = run_node("ImageBlur", {"image": ["i", 0], "blur_radius": radius, "sigma": sigma},
                   extra={"i": const("Image", image)})
    assert torch.allclose(out, reference_blur(image, radius, sigma), atol=1e-5)


def test_image_sharpen_is_unsharp_mask(run_node):
    image = sample()
    out = run_node("ImageSharpen", {"image": ["i", 0], "sharpen_radius": 2, "sigma": 0.8, "alpha": 0.3},
                   extra={"i": const("Image", image)})
    expected = (image + 3.0 * (image - reference_blur(image, 2, 0.8))).clamp(0, 1)
    assert torch.allclose(out, expected, atol=1e-5)
    flat = run_node("ImageSharpen", {"image": ["i", 0], "sharpen_radius": 1, "sigma": 1.0, "alpha": 5.0},
                    extra={"i": const("Image", torch.full((1, 4, 4, 3), 0.4))})
    assert torch.allclose(flat, torch.full_like(flat, 0.4), atol=1e-6)  # nothing to sharpen


def test_blur_and_sharpen_bounds(rejected):
    image = {"i": const("Image", sample())}
    assert rejected("ImageBlur", {"image": ["i", 0], "blur_radius": 32, "sigma": 0.05}, image) == \
        {"value_bigger_than_max", "value_smaller_than_min"}
    assert rejected("ImageSharpen", {"image": ["i", 0], "sharpen_radius": 0, "sigma": 1.0, "alpha": 5.5},
                    image) == {"value_bigger_than_max", "value_smaller_than_min"}


def test_bayer_thresholds_are_centred_permutations():
    assert bayer_thresholds(2).tolist() == [[-0.375, 0.125], [0.375, -0.125]]
    for order in (4, 8, 16):
        values = sorted(bayer_thresholds(order).flatten().tolist())
        assert values == pytest.approx([(k + 0.5) / order**2 - 0.5 for k in range(order**2)])


def bands() -> torch.Tensor:
    """Black, mid-grey and white columns, 8×8 each."""
    image = torch.zeros(1, 8, 24, 3)
    image[:, :, 8:16] = 100 / 255
    image[:, :, 16:] = 1.0
    return image


@pytest.mark.parametrize("dither", ["none", "floyd-steinberg", "bayer-2", "bayer-4", "bayer-8", "bayer-16"])
def test_image_quantize_palette_size_and_dithering(run_node, dither):
    out = run_node("ImageQuantize", {"image": ["i", 0], "colors": 2, "dither": dither},
                   extra={"i": const("Image", bands())})
    colours = {tuple(p) for p in (out * 255).round().reshape(-1, 3).tolist()}
    assert len(colours) == 2 and (0.0, 0.0, 0.0) in colours
    grey = {tuple(p) for p in (out[:, :, 8:16] * 255).round().reshape(-1, 3).tolist()}
    assert len(grey) == (1 if dither == "none" else 2)  # dithering mixes both palette colours in the grey band


def test_image_quantize_keeps_an_image_within_its_palette(run_node):
    image = bands()
    out = run_node("ImageQuantize", {"image": ["i", 0], "colors": 3, "dither": "floyd-steinberg"},
                   extra={"i": const("Image", image)})
    assert torch.equal(out, image)


def test_image_add_noise_is_seeded(run_node):
    image = torch.full((2, 4, 5, 3), 0.5)
    out = run_node("ImageAddNoise", {"image": ["i", 0], "seed": 7, "strength": 0.2},
                   extra={"i": const("Image", image)})
    noise = torch.randn(image.shape, generator=torch.Generator().manual_seed(7))
    assert torch.allclose(out, (image + 0.2 * noise).clamp(0, 1))
    still = run_node("ImageAddNoise", {"image": ["i", 0], "seed": 7, "strength": 0.0},
                     extra={"i": const("Image", image)})
    assert torch.equal(still, image)


@pytest.mark.parametrize("operation", ["erode", "dilate", "open", "close", "gradient", "bottom_hat", "top_hat"])
@pytest.mark.parametrize("size", [3, 4])
def test_morphology_matches_kornia(run_node, operation, size):
    import kornia.morphology as morph

    reference = {"erode": morph.erosion, "dilate": morph.dilation, "open": morph.opening, "close": morph.closing,
                 "gradient": morph.gradient, "bottom_hat": morph.bottom_hat, "top_hat": morph.top_hat}[operation]
    image = sample(2, 7, 9)
    out = run_node("Morphology", {"image": ["i", 0], "operation": operation, "kernel_size": size},
                   extra={"i": const("Image", image)})
    expected = reference(image.movedim(-1, 1), torch.ones(size, size)).movedim(1, -1)
    assert torch.allclose(out, expected, atol=1e-6)


def test_morphology_kernel_wider_than_the_image(run_node):
    image = sample(1, 5, 6)
    out = run_node("Morphology", {"image": ["i", 0], "operation": "dilate", "kernel_size": 999},
                   extra={"i": const("Image", image)})
    assert torch.equal(out, image.amax(dim=(1, 2), keepdim=True).expand_as(image))


def test_rgb_to_yuv_and_back(executor):
    image = sample(1, 3, 4)
    prompt = {"i": const("Image", image),
              "yuv": {"class_type": "ImageRGBToYUV", "inputs": {"image": ["i", 0]}},
              "rgb": {"class_type": "ImageYUVToRGB", "inputs": {"Y": ["yuv", 0], "U": ["yuv", 1], "V": ["yuv", 2]}},
              "y": {"class_type": "Capture", "inputs": {"value": ["yuv", 0]}},
              "v": {"class_type": "Capture", "inputs": {"value": ["yuv", 2]}},
              "back": {"class_type": "Capture", "inputs": {"value": ["rgb", 0]}}}
    result = executor.execute(prompt)
    assert result.ok, result.error
    y, v, back = (result.outputs[k]["value"][0] for k in ("y", "v", "back"))
    r, g, b = image.unbind(-1)
    luma = 0.299 * r + 0.587 * g + 0.114 * b
    assert y.shape == image.shape and torch.allclose(y[..., 1], luma, atol=1e-6)
    assert torch.allclose(v[..., 0], (r - luma) * 0.713 + 0.5, atol=1e-6)
    assert torch.allclose(back, image, atol=1e-5)
