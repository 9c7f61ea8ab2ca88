import pytest
import torch

from .helpers import const


def single_pixel(size: int = 5, value: float = 1.0) -> torch.Tensor:
    mask = torch.zeros(1, size, size)
    mask[0, size // 2, size // 2] = value
    return mask


def test_solid_mask(run_node):
    out = run_node("SolidMask", {"value": 0.25, "width": 3, "height": 2})
    assert torch.equal(out, torch.full((1, 2, 3), 0.25))


def test_invert_mask(run_node):
    mask = torch.tensor([[[0.0, 0.25], [0.75, 1.0]]])
    out = run_node("InvertMask", {"mask": ["m", 0]}, extra={"m": const("Mask", mask)})
    assert torch.equal(out, torch.tensor([[[1.0, 0.75], [0.25, 0.0]]]))


def test_grow_mask_by_one_tapered_gives_a_plus(run_node):
    out = run_node("GrowMask", {"mask": ["m", 0], "expand": 1, "tapered_corners": True},
                   extra={"m": const("Mask", single_pixel())})
    expected = torch.zeros(1, 5, 5)
    expected[0, 2, 1:4] = 1
    expected[0, 1:4, 2] = 1
    assert torch.equal(out, expected)


def test_grow_mask_by_one_square_gives_a_square(run_node):
    out = run_node("GrowMask", {"mask": ["m", 0], "expand": 1, "tapered_corners": False},
                   extra={"m": const("Mask", single_pixel())})
    expected = torch.zeros(1, 5, 5)
    expected[0, 1:4, 1:4] = 1
    assert torch.equal(out, expected)


def test_grow_mask_by_two_tapered_gives_a_diamond(run_node):
    out = run_node("GrowMask", {"mask": ["m", 0], "expand": 2, "tapered_corners": True},
                   extra={"m": const("Mask", single_pixel(7))})
    rows, cols = torch.meshgrid(torch.arange(7), torch.arange(7), indexing="ij")
    expected = ((rows - 3).abs() + (cols - 3).abs() <= 2).float().unsqueeze(0)
    assert torch.equal(out, expected)


def test_grow_mask_negative_erodes_and_keeps_edges(run_node):
    mask = torch.ones(1, 4, 5)
    mask[0, 0, 0] = 0  # a hole in the corner grows into an L under plus-shaped erosion
    out = run_node("GrowMask", {"mask": ["m", 0], "expand": -1, "tapered_corners": True},
                   extra={"m": const("Mask", mask)})
    expected = torch.ones(1, 4, 5)
    expected[0, 0, 0] = expected[0, 0, 1] = expected[0, 1, 0] = 0
    assert torch.equal(out, expected)  # image borders do not erode


def test_grow_mask_grey_values_take_neighbourhood_max(run_node):
    mask = torch.tensor([[[0.0, 0.0, 0.0], [0.0, 0.5, 0.0], [0.0, 0.0, 0.25]]])
    out = run_node("GrowMask", {"mask": ["m", 0], "expand": 1, "tapered_corners": False},
                   extra={"m": const("Mask", mask)})
    assert torch.equal(out, torch.tensor([[[0.5, 0.5, 0.5], [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]]]))


def test_feather_mask_linear_ramps(run_node):
    out = run_node("FeatherMask", {"mask": ["m", 0], "left": 4, "top": 0, "right": 2, "bottom": 0},
                   extra={"m": const("Mask", torch.ones(1, 2, 8))})
    expected_row = torch.tensor([0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 1.0, 0.5])  # right: 2/2 then 1/2
    assert torch.allclose(out, expected_row.expand(1, 2, 8))


def test_feather_mask_top_and_bottom(run_node):
    out = run_node("FeatherMask", {"mask": ["m", 0], "left": 0, "top": 2, "right": 0, "bottom": 3},
                   extra={"m": const("Mask", torch.ones(1, 6, 1))})
    assert torch.allclose(out[0, :, 0], torch.tensor([0.5, 1.0, 1.0, 1.0, 2 / 3, 1 / 3]))


def test_mask_to_image_and_back(run_node):
    mask = torch.tensor([[[0.0, 0.5], [1.0, 0.25]]])
    extra = {"m": const("Mask", mask), "i": {"class_type": "MaskToImage", "inputs": {"mask": ["m", 0]}}}
    image = run_node("MaskToImage", {"mask": ["m", 0]}, extra=extra)
    assert image.shape == (1, 2, 2, 3)
    assert all(torch.equal(image[..., c], mask) for c in range(3))
    back = run_node("ImageToMask", {"image": ["i", 0], "channel": "green"}, extra=extra)
    assert torch.equal(back, mask)


def test_image_to_mask_channels(run_node):
    image = torch.tensor([[[[0.1, 0.2, 0.3, 0.4]]]])
    for index, channel in enumerate(["red", "green", "blue", "alpha"]):
        out = run_node("ImageToMask", {"image": ["i", 0], "channel": channel}, extra={"i": const("Image", image)})
        assert torch.equal(out, image[..., index])


def test_image_to_mask_alpha_of_rgb_is_a_clear_error(executor):
    prompt = {"i": const("Image", torch.zeros(1, 2, 2, 3)),
              "n": {"class_type": "ImageToMask", "inputs": {"image": ["i", 0], "channel": "alpha"}},
              "out": {"class_type": "Capture", "inputs": {"value": ["n", 0]}}}
    result = executor.execute(prompt)
    assert not result.ok and "alpha" in result.error["exception_message"]


DEST = [[0.0, 0.25, 0.5], [0.75, 1.0, 0.6]]
SRC = [[1.0, 0.5], [0.3, 0.0]]


def reference_composite(operation: str, x: int, y: int) -> torch.Tensor:
    """Element-by-element expectation written out per pixel."""
    dest = torch.tensor(DEST)
    out = dest.clone()
    for sy, row in enumerate(SRC):
        for sx, s in enumerate(row):
            dy, dx = y + sy, x + sx
            if dy >= dest.shape[0] or dx >= dest.shape[1]:
                continue
            d = float(dest[dy, dx])
            value = {"multiply": d * s, "add": d + s, "subtract": d - s,
                     "and": float(round(d) and round(s)), "or": float(round(d) or round(s)),
                     "xor": float(bool(round(d)) != bool(round(s)))}[operation]
            out[dy, dx] = min(1.0, max(0.0, value))
    return out.unsqueeze(0)


@pytest.mark.parametrize("operation", ["multiply", "add", "subtract", "and", "or", "xor"])
@pytest.mark.parametrize(("x", "y"), [(0, 0), (1, 0), (2, 1), (5, 5)])
def test_mask_composite_operations(run_node, operation, x, y):
    extra = {"d": const("Mask", [DEST]), "s": const("Mask", [SRC])}
    out = run_node("MaskComposite", {"destination": ["d", 0], "source": ["s", 0], "x": x, "y": y,
                                     "operation": operation}, extra=extra)
    assert torch.allclose(out, reference_composite(operation, x, y))


def test_mask_composite_add_clamps_to_one(run_node):
    extra = {"d": const("Mask", [[[0.75]]]), "s": const("Mask", [[[0.75]]])}
    out = run_node("MaskComposite", {"destination": ["d", 0], "source": ["s", 0], "x": 0, "y": 0,
                                     "operation": "add"}, extra=extra)
    assert torch.equal(out, torch.ones(1, 1, 1))


def test_threshold_mask(run_node):
    mask = torch.tensor([[[0.2, 0.5, 0.51, 1.0]]])
    out = run_node("ThresholdMask", {"mask": ["m", 0], "value": 0.5}, extra={"m": const("Mask", mask)})
    assert torch.equal(out, torch.tensor([[[0.0, 0.0, 1.0, 1.0]]]))
