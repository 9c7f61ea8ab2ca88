import pytest
import torch

from ..nodes_basic.helpers import const


def ramp(batch=1, height=3, width=4, channels=3) -> torch.Tensor:
    values = torch.arange(batch * height * width * channels, dtype=torch.float32)
    return (values / values.numel()).reshape(batch, height, width, channels)


def test_image_crop_region_and_clamped_corner(run_node):
    image = ramp(2, 5, 6)
    out = run_node("ImageCrop", {"image": ["i", 0], "width": 2, "height": 3, "x": 1, "y": 2},
                   extra={"i": const("Image", image)})
    assert torch.equal(out, image[:, 2:5, 1:3])
    # a corner past the edge moves to the last pixel; the size is cut to what is left
    out = run_node("ImageCrop", {"image": ["i", 0], "width": 4, "height": 4, "x": 100, "y": 100},
                   extra={"i": const("Image", image)})
    assert torch.equal(out, image[:, 4:, 5:])


def test_transform_bounds_are_validated(rejected):
    image = {"i": const("Image", ramp())}
    assert rejected("ImageCrop", {"image": ["i", 0], "width": 0, "height": 1, "x": -1, "y": 0},
                    image) == {"value_smaller_than_min"}
    assert rejected("EmptyImage", {"width": 8, "height": 8, "batch_size": 4097, "color": 0x1000000}) == \
        {"value_bigger_than_max"}
    assert rejected("ImageStitch", {"image1": ["i", 0], "spacing_width": 1026, "direction": "diagonal",
                                   "match_image_size": True, "spacing_color": "white"},
                    image) == {"value_bigger_than_max", "value_not_in_list"}


@pytest.mark.parametrize(("method", "dim"), [("x-axis: vertically", 1), ("y-axis: horizontally", 2)])
def test_image_flip(run_node, method, dim):
    image = ramp(2)
    out = run_node("ImageFlip", {"image": ["i", 0], "flip_method": method}, extra={"i": const("Image", image)})
    assert torch.equal(out, image.flip(dim))


def test_image_rotate_is_clockwise(run_node):
    image = torch.zeros(1, 2, 3, 3)
    image[0, 0, 0] = 1.0  # top-left pixel
    expected_corner = {"none": (0, 0), "90 degrees": (0, 1), "180 degrees": (1, 2), "270 degrees": (2, 0)}
    for rotation, (row, col) in expected_corner.items():
        out = run_node("ImageRotate", {"image": ["i", 0], "rotation": rotation}, extra={"i": const("Image", image)})
        assert out.shape[1:3] == ((2, 3) if rotation in ("none", "180 degrees") else (3, 2))
        assert out[0, row, col, 0] == 1.0 and out.sum() == 3.0, rotation


def test_empty_image_colour(run_node):
    out = run_node("EmptyImage", {"width": 5, "height": 3, "batch_size": 2, "color": 0xFF8000})
    assert out.shape == (2, 3, 5, 3)
    assert torch.equal(out[1, 2, 4], torch.tensor([1.0, 128 / 255, 0.0]))
    assert torch.equal(out, out[0, 0, 0].expand_as(out))


def test_get_image_size(executor):
    prompt = {"i": const("Image", ramp(2, 3, 4)),
              "n": {"class_type": "GetImageSize", "inputs": {"image": ["i", 0]}},
              "w": {"class_type": "Capture", "inputs": {"value": ["n", 0]}},
              "h": {"class_type": "Capture", "inputs": {"value": ["n", 1]}},
              "b": {"class_type": "Capture", "inputs": {"value": ["n", 2]}}}
    result = executor.execute(prompt)
    assert [result.outputs[k]["value"][0] for k in "whb"] == [4, 3, 2]


def test_image_stitch_right_with_spacing(run_node):
    left, right = torch.full((1, 2, 2, 3), 0.2), torch.full((1, 2, 3, 3), 0.7)
    out = run_node("ImageStitch", {"image1": ["a", 0], "image2": ["b", 0], "direction": "right",
                                   "match_image_size": False, "spacing_width": 2, "spacing_color": "red"},
                   extra={"a": const("Image", left), "b": const("Image", right)})
    assert out.shape == (1, 2, 7, 3)
    assert torch.equal(out[:, :, :2], left) and torch.equal(out[:, :, 4:], right)
    assert torch.equal(out[0, 0, 2], torch.tensor([1.0, 0.0, 0.0]))


def test_image_stitch_up_matches_width_and_pads_batches(run_node):
    first = ramp(2, 2, 4)
    second = torch.full((1, 1, 2, 3), 0.5)  # resized to width 4 → height 2; its batch repeats its last image
    out = run_node("ImageStitch", {"image1": ["a", 0], "image2": ["b", 0], "direction": "up",
                                   "match_image_size": True, "spacing_width": 0, "spacing_color": "white"},
                   extra={"a": const("Image", first), "b": const("Image", second)})
    assert out.shape == (2, 4, 4, 3)
    assert torch.allclose(out[:, :2], torch.full((2, 2, 4, 3), 0.5), atol=1 / 255)
    assert torch.equal(out[:, 2:], first)


def test_image_stitch_unmatched_heights_are_centred_on_black(run_node):
    out = run_node("ImageStitch", {"image1": ["a", 0], "image2": ["b", 0], "direction": "left",
                                   "match_image_size": False, "spacing_width": 0, "spacing_color": "white"},
                   extra={"a": const("Image", torch.ones(1, 4, 1, 3)), "b": const("Image", torch.ones(1, 2, 1, 3))})
    assert out.shape == (1, 4, 2, 3)
    assert out[0, :, 0, 0].tolist() == [0.0, 1.0, 1.0, 0.0] and out[0, :, 1, 0].tolist() == [1.0] * 4


def test_image_stitch_without_image2_passes_image1(run_node):
    image = ramp()
    out = run_node("ImageStitch", {"image1": ["a", 0], "direction": "down", "match_image_size": True,
                                   "spacing_width": 4, "spacing_color": "black"}, extra={"a": const("Image", image)})
    assert torch.equal(out, image)


def test_resize_and_pad_image(run_node):
    image = torch.full((1, 2, 4, 3), 0.3)
    out = run_node("ResizeAndPadImage", {"image": ["i", 0], "target_width": 8, "target_height": 8,
                                         "padding_color": "white", "interpolation": "nearest-exact"},
                   extra={"i": const("Image", image)})
    assert out.shape == (1, 8, 8, 3)
    assert torch.allclose(out[:, 2:6], torch.full((1, 4, 8, 3), 0.3))
    assert torch.equal(out[:, :2], torch.ones(1, 2, 8, 3)) and torch.equal(out[:, 6:], torch.ones(1, 2, 8, 3))
