import pytest
import torch

from nodes.image_batch import rebatch

from ..nodes_basic.helpers import const


def frames(batch: int, height: int = 2, width: int = 3, start: float = 0.0) -> torch.Tensor:
    """Images whose pixels all hold their own index / 10 (+ start)."""
    values = start + torch.arange(batch, dtype=torch.float32) / 10
    return values.reshape(batch, 1, 1, 1).expand(batch, height, width, 3).clone()


def test_image_batch_joins_and_resizes_image2(run_node):
    first, second = frames(2), torch.full((1, 4, 6, 3), 0.9)
    out = run_node("ImageBatch", {"image1": ["a", 0], "image2": ["b", 0]},
                   extra={"a": const("Image", first), "b": const("Image", second)})
    assert out.shape == (3, 2, 3, 3)
    assert torch.equal(out[:2], first) and torch.allclose(out[2], torch.full((2, 3, 3), 0.9))


def test_image_batch_gives_rgb_an_opaque_alpha_beside_rgba(run_node):
    out = run_node("ImageBatch", {"image1": ["a", 0], "image2": ["b", 0]},
                   extra={"a": const("Image", frames(1)), "b": const("Image", torch.zeros(1, 2, 3, 4))})
    assert out.shape == (2, 2, 3, 4) and torch.equal(out[0, ..., 3], torch.ones(2, 3))


@pytest.mark.parametrize(("index", "length", "rows"),
                         [(1, 2, [1, 2]), (3, 5, [3, 4]), (9, 1, [4]), (0, 4096, [0, 1, 2, 3, 4])])
def test_image_from_batch(run_node, index, length, rows):
    out = run_node("ImageFromBatch", {"image": ["i", 0], "batch_index": index, "length": length},
                   extra={"i": const("Image", frames(5))})
    assert torch.equal(out, frames(5)[rows])


def test_repeat_image_batch(run_node):
    out = run_node("RepeatImageBatch", {"image": ["i", 0], "amount": 3}, extra={"i": const("Image", frames(2))})
    assert torch.equal(out, torch.cat([frames(2)] * 3))


def test_batch_bounds(rejected):
    image = {"i": const("Image", frames(1))}
    assert rejected("ImageFromBatch", {"image": ["i", 0], "batch_index": 4096, "length": 0}, image) == \
        {"value_bigger_than_max", "value_smaller_than_min"}
    assert rejected("RepeatImageBatch", {"image": ["i", 0], "amount": 0}, image) == {"value_smaller_than_min"}


def test_rebatch_images_recuts_a_list(executor):
    # ImageBatch of 3 + 2 images → one list item of 5 → RebatchImages(2) → three calls of Capture
    prompt = {"a": const("Image", frames(3)), "b": const("Image", frames(2, start=0.5)),
              "j": {"class_type": "ImageBatch", "inputs": {"image1": ["a", 0], "image2": ["b", 0]}},
              "r": {"class_type": "RebatchImages", "inputs": {"images": ["j", 0], "batch_size": 2}},
              "out": {"class_type": "Capture", "inputs": {"value": ["r", 0]}}}
    result = executor.execute(prompt)
    assert result.ok, result.error
    batches = result.outputs["out"]["value"]
    assert [b.shape[0] for b in batches] == [2, 2, 1]
    assert torch.equal(torch.cat(batches), torch.cat([frames(3), frames(2, start=0.5)]))


def test_rebatch_images_of_different_sizes_is_a_clear_error():
    with pytest.raises(ValueError, match="different sizes"):
        rebatch([frames(1), frames(1, 4, 4)], 2)
