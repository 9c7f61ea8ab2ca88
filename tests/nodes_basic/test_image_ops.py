import pytest
import torch
import torch.nn.functional as F

from .helpers import const


def test_image_invert(run_node):
    image = torch.tensor([[[[0.0, 0.25, 1.0], [0.5, 0.75, 0.1]]]])
    out = run_node("ImageInvert", {"image": ["i", 0]}, extra={"i": const("Image", image)})
    assert torch.allclose(out, 1.0 - image)


def ramp_image(batch: int = 1, height: int = 2, width: int = 3) -> torch.Tensor:
    values = torch.arange(batch * height * width * 3, dtype=torch.float32) / (batch * height * width * 3)
    return values.reshape(batch, height, width, 3)


@pytest.mark.parametrize(("width", "height", "expected_hw"), [
    (6, 4, (4, 6)), (6, 0, (4, 6)), (0, 1, (1, 2)), (0, 0, (2, 3)), (7, 5, (5, 7)),
])
def test_image_scale_sizes(run_node, width, height, expected_hw):
    out = run_node("ImageScale", {"image": ["i", 0], "upscale_method": "bilinear", "width": width, "height": height,
                                  "crop": "disabled"}, extra={"i": const("Image", ramp_image(2))})
    assert out.shape == (2, *expected_hw, 3)


def test_image_scale_nearest_doubles_pixels(run_node):
    image = ramp_image()
    out = run_node("ImageScale", {"image": ["i", 0], "upscale_method": "nearest-exact", "width": 6, "height": 4,
                                  "crop": "disabled"}, extra={"i": const("Image", image)})
    assert torch.equal(out, image.repeat_interleave(2, 1).repeat_interleave(2, 2))


def test_image_scale_center_crop(run_node):
    image = ramp_image(1, 2, 6)
    out = run_node("ImageScale", {"image": ["i", 0], "upscale_method": "area", "width": 2, "height": 2,
                                  "crop": "center"}, extra={"i": const("Image", image)})
    expected = F.interpolate(image[:, :, 2:4].movedim(-1, 1), size=(2, 2), mode="area").movedim(1, -1)
    assert torch.allclose(out, expected)


def test_image_scale_lanczos_keeps_constant_colour(run_node):
    image = torch.full((1, 4, 4, 3), 0.6)
    out = run_node("ImageScale", {"image": ["i", 0], "upscale_method": "lanczos", "width": 8, "height": 6,
                                  "crop": "disabled"}, extra={"i": const("Image", image)})
    assert out.shape == (1, 6, 8, 3)
    assert torch.allclose(out, torch.full_like(out, int(0.6 * 255) / 255))


def test_image_scale_by(run_node):
    image = ramp_image(1, 2, 2)
    out = run_node("ImageScaleBy", {"image": ["i", 0], "upscale_method": "nearest-exact", "scale_by": 1.5},
                   extra={"i": const("Image", image)})
    assert out.shape == (1, 3, 3, 3)
    expected = F.interpolate(image.movedim(-1, 1), size=(3, 3), mode="nearest-exact").movedim(1, -1)
    assert torch.equal(out, expected)


@pytest.mark.parametrize(("height", "width", "megapixels", "steps", "expected_hw"), [
    # 0.01 MP = 10485.76 px: a square side of 102.4 -> 102; 2:1 keeps its aspect: 144.8 x 72.4
    (4, 4, 0.01, 1, (102, 102)), (2, 4, 0.01, 1, (72, 145)),
    (3, 4, 1.0, 1, (887, 1182)),  # 3:4 at one megapixel (1048576 px)
    (2, 4, 0.01, 8, (72, 144)), (4, 4, 0.01, 64, (128, 128)),  # each side rounded to a multiple of the steps
    (96, 128, 0.01, 1, (89, 118)),  # 12288 px -> 10486: scales down too
])
def test_image_scale_to_total_pixels_sizes(run_node, height, width, megapixels, steps, expected_hw):
    image = ramp_image(2, height, width)
    out = run_node("ImageScaleToTotalPixels", {"image": ["i", 0], "upscale_method": "bilinear",
                                               "megapixels": megapixels, "resolution_steps": steps},
                   extra={"i": const("Image", image)})
    assert out.shape == (2, *expected_hw, 3)
    expected = F.interpolate(image.movedim(-1, 1), size=expected_hw, mode="bilinear").movedim(1, -1)
    assert torch.allclose(out, expected)


def reference_outpaint_mask(h, w, top, bottom, left, right, feathering):
    """Per-pixel expectation: 1 in the padding; ((F − d)/F)² near padded sides inside the original."""
    mask = torch.ones(h + top + bottom, w + left + right)
    inner = torch.zeros(h, w)
    if feathering > 0 and feathering * 2 < h and feathering * 2 < w:
        for i in range(h):
            for j in range(w):
                d = min(i if top else h, (h - i) if bottom else h, j if left else w, (w - j) if right else w)
                if d < feathering:
                    inner[i, j] = ((feathering - d) / feathering) ** 2
    mask[top:top + h, left:left + w] = inner
    return mask.unsqueeze(0)


@pytest.mark.parametrize(("left", "top", "right", "bottom", "feathering"), [
    (8, 0, 0, 0, 3), (0, 8, 8, 0, 2), (8, 8, 8, 8, 4), (0, 0, 0, 16, 0), (8, 0, 8, 0, 6), (0, 0, 0, 0, 2),
])
def test_image_pad_for_outpaint(run_node, left, top, right, bottom, feathering):
    image = ramp_image(2, 10, 12)
    inputs = {"image": ["i", 0], "left": left, "top": top, "right": right, "bottom": bottom,
              "feathering": feathering}
    extra = {"i": const("Image", image)}
    padded = run_node("ImagePadForOutpaint", inputs, slot=0, extra=extra)
    mask = run_node("ImagePadForOutpaint", inputs, slot=1, extra=extra)
    assert padded.shape == (2, 10 + top + bottom, 12 + left + right, 3)
    assert torch.equal(padded[:, top:top + 10, left:left + 12], image)
    grey = torch.ones(padded.shape[1], padded.shape[2], dtype=torch.bool)
    grey[top:top + 10, left:left + 12] = False
    assert torch.all(padded[:, grey] == 0.5)
    assert torch.allclose(mask, reference_outpaint_mask(10, 12, top, bottom, left, right, feathering))


def test_image_pad_feather_values_next_to_left_padding(run_node):
    image = torch.zeros(1, 10, 10, 3)
    mask = run_node("ImagePadForOutpaint", {"image": ["i", 0], "left": 8, "top": 0, "right": 0, "bottom": 0,
                                            "feathering": 4}, slot=1, extra={"i": const("Image", image)})
    # distance 0, 1, 2, 3 from the padded edge → (4 − d)² / 16
    assert torch.allclose(mask[0, 5, 8:13], torch.tensor([1.0, 9 / 16, 4 / 16, 1 / 16, 0.0]))
    assert torch.all(mask[0, :, :8] == 1.0)
