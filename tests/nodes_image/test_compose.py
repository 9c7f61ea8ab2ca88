import pytest
import torch

from nodes.image_compose import PORTER_DUFF_MODES, porter_duff

from ..nodes_basic.helpers import const


def test_image_composite_masked_pastes_through_the_mask(run_node):
    destination = torch.zeros(1, 4, 5, 3)
    source = torch.ones(1, 2, 2, 3)
    mask = torch.tensor([[[1.0, 0.5], [0.0, 1.0]]])
    out = run_node("ImageCompositeMasked", {"destination": ["d", 0], "source": ["s", 0], "x": 3, "y": 1,
                                            "resize_source": False, "mask": ["m", 0]},
                   extra={"d": const("Image", destination), "s": const("Image", source), "m": const("Mask", mask)})
    expected = torch.zeros(4, 5)
    expected[1:3, 3:5] = mask[0]
    assert torch.allclose(out[0, ..., 0], expected)


def test_image_composite_masked_clips_at_the_edge_and_resizes(run_node):
    destination = torch.zeros(2, 3, 3, 3)
    extra = {"d": const("Image", destination), "s": const("Image", torch.ones(1, 2, 2, 3))}
    out = run_node("ImageCompositeMasked", {"destination": ["d", 0], "source": ["s", 0], "x": 2, "y": 2,
                                            "resize_source": False}, extra=extra)
    expected = torch.zeros(2, 3, 3, 3)
    expected[:, 2, 2] = 1.0
    assert torch.equal(out, expected)
    out = run_node("ImageCompositeMasked", {"destination": ["d", 0], "source": ["s", 0], "x": 0, "y": 0,
                                            "resize_source": True}, extra=extra)
    assert torch.equal(out, torch.ones(2, 3, 3, 3))


def test_image_color_to_mask(run_node):
    image = torch.zeros(1, 2, 2, 3)
    image[0, 0, 1] = torch.tensor([0x12, 0x34, 0x56]) / 255
    image[0, 1, 0] = torch.tensor([0x12, 0x34, 0x57]) / 255
    out = run_node("ImageColorToMask", {"image": ["i", 0], "color": 0x123456}, extra={"i": const("Image", image)})
    assert out.tolist() == [[[0.0, 1.0], [0.0, 0.0]]]


def test_crop_mask(run_node, run_error):
    mask = torch.arange(2 * 4 * 5, dtype=torch.float32).reshape(2, 4, 5) / 40
    out = run_node("CropMask", {"mask": ["m", 0], "x": 1, "y": 2, "width": 3, "height": 9},
                   extra={"m": const("Mask", mask)})
    assert torch.equal(out, mask[:, 2:, 1:4])
    message = run_error("CropMask", {"mask": ["m", 0], "x": 5, "y": 0, "width": 3, "height": 3},
                        extra={"m": const("Mask", mask)})
    assert "outside" in message


def test_join_and_split_alpha_round_trip(executor):
    image = torch.rand(2, 3, 4, 3, generator=torch.Generator().manual_seed(1))
    mask = torch.rand(2, 3, 4, generator=torch.Generator().manual_seed(2))
    prompt = {"i": const("Image", image), "m": const("Mask", mask),
              "j": {"class_type": "JoinImageWithAlpha", "inputs": {"image": ["i", 0], "alpha": ["m", 0]}},
              "s": {"class_type": "SplitImageWithAlpha", "inputs": {"image": ["j", 0]}},
              "rgba": {"class_type": "Capture", "inputs": {"value": ["j", 0]}},
              "rgb": {"class_type": "Capture", "inputs": {"value": ["s", 0]}},
              "mask": {"class_type": "Capture", "inputs": {"value": ["s", 1]}}}
    result = executor.execute(prompt)
    assert result.ok, result.error
    rgba, rgb, back = (result.outputs[k]["value"][0] for k in ("rgba", "rgb", "mask"))
    assert torch.allclose(rgba[..., 3], 1 - mask) and torch.equal(rgb, image)
    assert torch.allclose(back, mask, atol=1e-6)


def test_split_image_without_alpha_gives_an_empty_mask(run_node):
    out = run_node("SplitImageWithAlpha", {"image": ["i", 0]}, slot=1,
                   extra={"i": const("Image", torch.rand(1, 2, 3, 3))})
    assert torch.equal(out, torch.zeros(1, 2, 3))


def test_join_image_with_alpha_resizes_the_mask(run_node):
    out = run_node("JoinImageWithAlpha", {"image": ["i", 0], "alpha": ["m", 0]},
                   extra={"i": const("Image", torch.zeros(1, 4, 4, 3)),
                          "m": const("Mask", torch.full((1, 2, 2), 0.25))})
    assert out.shape == (1, 4, 4, 4) and torch.allclose(out[..., 3], torch.full((1, 4, 4), 0.75))


# straight colours and alphas of one pixel: (src, src_a, dst, dst_a)
SRC, SRC_A, DST, DST_A = 0.8, 0.5, 0.4, 0.75


def composite_expectation(mode: str) -> tuple[float, float]:
    """Premultiplied Porter-Duff, then un-premultiplied: the textbook formulas."""
    s, d = SRC * SRC_A, DST * DST_A
    union = SRC_A + DST_A - SRC_A * DST_A
    table = {
        "ADD": (min(1, s + d), min(1, SRC_A + DST_A)), "CLEAR": (0.0, 0.0),
        "DARKEN": ((1 - DST_A) * s + (1 - SRC_A) * d + min(s, d), union), "DST": (d, DST_A),
        "DST_ATOP": (SRC_A * d + (1 - DST_A) * s, SRC_A), "DST_IN": (d * SRC_A, SRC_A * DST_A),
        "DST_OUT": ((1 - SRC_A) * d, (1 - SRC_A) * DST_A),
        "DST_OVER": (d + (1 - DST_A) * s, DST_A + (1 - DST_A) * SRC_A),
        "LIGHTEN": ((1 - DST_A) * s + (1 - SRC_A) * d + max(s, d), union), "MULTIPLY": (s * d, SRC_A * DST_A),
        "OVERLAY": (2 * s * d if 2 * d < DST_A else SRC_A * DST_A - 2 * (DST_A - s) * (SRC_A - d), union),
        "SCREEN": (s + d - s * d, union), "SRC": (s, SRC_A), "SRC_ATOP": (DST_A * s + (1 - SRC_A) * d, DST_A),
        "SRC_IN": (s * DST_A, SRC_A * DST_A), "SRC_OUT": ((1 - DST_A) * s, (1 - DST_A) * SRC_A),
        "SRC_OVER": (s + (1 - SRC_A) * d, SRC_A + (1 - SRC_A) * DST_A),
        "XOR": ((1 - DST_A) * s + (1 - SRC_A) * d, (1 - DST_A) * SRC_A + (1 - SRC_A) * DST_A),
    }
    colour, alpha = table[mode]
    return (colour / alpha if alpha else colour), alpha


def test_porter_duff_modes():
    assert len(PORTER_DUFF_MODES) == 18
    for mode in PORTER_DUFF_MODES:
        colour, alpha = porter_duff(torch.tensor([[[SRC]]]), torch.tensor([[[SRC_A]]]), torch.tensor([[[DST]]]),
                                    torch.tensor([[[DST_A]]]), mode)
        assert (colour.item(), alpha.item()) == pytest.approx(composite_expectation(mode), abs=1e-6), mode


def test_porter_duff_node_src_over_and_resizing(run_node, executor):
    source, destination = torch.full((1, 2, 2, 3), 0.8), torch.full((1, 4, 4, 3), 0.4)
    extra = {"s": const("Image", source), "sa": const("Mask", torch.full((1, 2, 2), 0.5)),
             "d": const("Image", destination), "da": const("Mask", torch.full((1, 4, 4), 0.75))}
    inputs = {"source": ["s", 0], "source_alpha": ["sa", 0], "destination": ["d", 0], "destination_alpha": ["da", 0],
              "mode": "SRC_OVER"}
    colour = run_node("PorterDuffImageComposite", inputs, extra=extra)
    alpha = run_node("PorterDuffImageComposite", inputs, slot=1, extra=extra)
    expected_colour, expected_alpha = composite_expectation("SRC_OVER")
    assert colour.shape == (1, 4, 4, 3) and torch.allclose(colour, torch.full_like(colour, expected_colour), atol=1e-5)
    assert torch.allclose(alpha, torch.full((1, 4, 4), expected_alpha), atol=1e-5)
