"""Graph-level runs, admission of oversized image nodes, estimates against real tensors, /object_info shapes."""

import numpy as np
import pytest
import torch
from PIL import Image

from graphengine import AdmissionError, AdmissionLimits, admit, estimate_prompt, validate_prompt
from graphengine.cache import compute_signatures

from ..nodes_basic.helpers import const


def test_contact_sheet_graph_saves_an_animation(executor, config):
    """Two solid images → stitched with a gap → repeated → noised (identical frames would merge) → animated WEBP."""
    prompt = {
        "a": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 6, "batch_size": 1, "color": 0xFF0000}},
        "b": {"class_type": "EmptyImage", "inputs": {"width": 4, "height": 3, "batch_size": 1, "color": 0x0000FF}},
        "st": {"class_type": "ImageStitch", "inputs": {"image1": ["a", 0], "image2": ["b", 0], "direction": "right",
                                                       "match_image_size": True, "spacing_width": 2,
                                                       "spacing_color": "white"}},
        "rep": {"class_type": "RepeatImageBatch", "inputs": {"image": ["st", 0], "amount": 4}},
        "noise": {"class_type": "ImageAddNoise", "inputs": {"image": ["rep", 0], "seed": 1, "strength": 0.02}},
        "size": {"class_type": "GetImageSize", "inputs": {"image": ["noise", 0]}},
        "show": {"class_type": "PreviewAny", "inputs": {"source": ["size", 0]}},
        "save": {"class_type": "SaveAnimatedWEBP", "inputs": {"images": ["noise", 0], "filename_prefix": "sheet",
                                                              "fps": 10.0, "lossless": True, "quality": 80,
                                                              "method": "default"}},
    }
    result = executor.execute(prompt)
    assert result.ok, result.error
    assert result.outputs["show"] == {"text": ["18"]}  # 8 + 2 + 8 (image2 scaled to height 6)
    with Image.open(config.output_dir / "sheet_00001_.webp") as picture:
        assert picture.n_frames == 4 and picture.size == (18, 6)
        picture.seek(3)
        picture.load()  # WEBP frames carry their duration once decoded
        assert picture.info["duration"] == 100
        rgb = np.asarray(picture.convert("RGB"), dtype=np.int16)
    assert np.abs(rgb[3, [0, 8, 12]] - [[255, 0, 0], [255, 255, 255], [0, 0, 255]]).max() < 20


def test_mask_pipeline_graph(executor):
    """Colour → mask → crop → composite: paint white over the red pixels of a cropped region."""
    image = torch.zeros(1, 4, 4, 3)
    image[0, 1:3, 1:3, 0] = 1.0
    prompt = {"i": const("Image", image),
              "m": {"class_type": "ImageColorToMask", "inputs": {"image": ["i", 0], "color": 0xFF0000}},
              "c": {"class_type": "CropMask", "inputs": {"mask": ["m", 0], "x": 1, "y": 1, "width": 2, "height": 2}},
              "w": {"class_type": "EmptyImage", "inputs": {"width": 2, "height": 2, "batch_size": 1,
                                                           "color": 0xFFFFFF}},
              "p": {"class_type": "ImageCompositeMasked", "inputs": {"destination": ["i", 0], "source": ["w", 0],
                                                                     "x": 1, "y": 1, "resize_source": False,
                                                                     "mask": ["c", 0]}},
              "out": {"class_type": "Capture", "inputs": {"value": ["p", 0]}}}
    result = executor.execute(prompt)
    assert result.ok, result.error
    expected = torch.zeros(1, 4, 4, 3)
    expected[0, 1:3, 1:3] = 1.0
    assert torch.equal(result.outputs["out"]["value"][0], expected)


def refused_limit(registry, prompt: dict) -> tuple[str, str]:
    with pytest.raises(AdmissionError) as caught:
        admit(validate_prompt(prompt, registry), registry.services, AdmissionLimits())
    (node_id, entry), = caught.value.body()["node_errors"].items()
    return node_id, entry["errors"][0]["extra_info"]["limit"]


def empty(width: int, height: int, batch: int = 1) -> dict:
    return {"class_type": "EmptyImage", "inputs": {"width": width, "height": height, "batch_size": batch, "color": 0}}


def preview(node: str) -> dict:
    return {"class_type": "PreviewImage", "inputs": {"images": [node, 0]}}


def test_oversized_image_nodes_are_refused_up_front(registry):
    assert refused_limit(registry, {"e": empty(16384, 16384), "p": preview("e")}) == ("e", "max_batch_pixels")
    assert refused_limit(registry, {"e": empty(512, 512),
                                    "r": {"class_type": "RepeatImageBatch", "inputs": {"image": ["e", 0],
                                                                                       "amount": 4096}},
                                    "p": preview("r")}) == ("r", "max_batch_pixels")
    stitch = {"class_type": "ImageStitch", "inputs": {"image1": ["a", 0], "image2": ["b", 0], "direction": "down",
                                                      "match_image_size": False, "spacing_width": 0,
                                                      "spacing_color": "white"}}
    assert refused_limit(registry, {"a": empty(4000, 2000, 1), "b": empty(4000, 2100, 1), "s": stitch,
                                    "p": preview("s")}) == ("s", "max_batch_pixels")
    admit(validate_prompt({"a": empty(512, 512), "b": empty(512, 512), "s": stitch, "p": preview("s")}, registry),
          registry.services, AdmissionLimits())


SHAPED = {
    "e": empty(10, 6, 2),
    "crop": {"class_type": "ImageCrop", "inputs": {"image": ["e", 0], "width": 4, "height": 9, "x": 8, "y": 1}},
    "rot": {"class_type": "ImageRotate", "inputs": {"image": ["e", 0], "rotation": "90 degrees"}},
    "st": {"class_type": "ImageStitch", "inputs": {"image1": ["e", 0], "image2": ["rot", 0], "direction": "left",
                                                   "match_image_size": True, "spacing_width": 2,
                                                   "spacing_color": "black"}},
    "pad": {"class_type": "ResizeAndPadImage", "inputs": {"image": ["st", 0], "target_width": 7, "target_height": 5,
                                                          "padding_color": "black", "interpolation": "area"}},
    "bat": {"class_type": "ImageBatch", "inputs": {"image1": ["crop", 0], "image2": ["pad", 0]}},
    "from": {"class_type": "ImageFromBatch", "inputs": {"image": ["bat", 0], "batch_index": 3, "length": 5}},
    "rep": {"class_type": "RepeatImageBatch", "inputs": {"image": ["from", 0], "amount": 3}},
    "join": {"class_type": "JoinImageWithAlpha", "inputs": {"image": ["rep", 0], "alpha": ["cm", 0]}},
    "cm": {"class_type": "ImageColorToMask", "inputs": {"image": ["rep", 0], "color": 0}},
    "split": {"class_type": "SplitImageWithAlpha", "inputs": {"image": ["join", 0]}},
    "pd": {"class_type": "PorterDuffImageComposite", "inputs": {"source": ["e", 0], "source_alpha": ["cm", 0],
                                                               "destination": ["split", 0],
                                                               "destination_alpha": ["split", 1], "mode": "XOR"}},
    "p1": preview("pd"), "p2": {"class_type": "MaskPreview", "inputs": {"mask": ["pd", 1]}},
}


def test_estimates_match_the_tensors_a_real_run_makes(registry, executor):
    validated = validate_prompt(SHAPED, registry)
    estimate = estimate_prompt(validated, registry.services)
    result = executor.execute(validated)
    assert result.ok, result.error
    signatures = compute_signatures(validated.nodes, list(validated.nodes), registry.services)
    checked = 0
    for node_id in validated.nodes:
        for slot, extent in enumerate(estimate.nodes[node_id].extents):
            if extent is None:
                continue
            tensor = executor.cache.get(signatures[node_id]).outputs[slot][0]
            shape = (extent["batch"], extent["height"], extent["width"]) + \
                ((extent["channels"],) if extent["type"] == "IMAGE" else ())
            assert tuple(tensor.shape) == shape, (node_id, slot)
            checked += 1
    assert checked >= 12


def test_object_info_matches_comfyui_input_order_and_defaults(registry):
    info = registry.object_info()
    stitch = info["ImageStitch"]["input"]
    assert list(stitch["required"]) == ["image1", "direction", "match_image_size", "spacing_width", "spacing_color"]
    assert list(stitch["optional"]) == ["image2"]
    assert stitch["required"]["spacing_width"][1] == {"default": 0, "min": 0, "max": 1024, "step": 2}
    assert list(info["ImageCrop"]["input"]["required"]) == ["image", "width", "height", "x", "y"]
    assert info["EmptyImage"]["input"]["required"]["color"][1]["display"] == "color"
    assert info["RebatchImages"]["is_input_list"] and info["RebatchImages"]["output_is_list"] == [True]
    assert info["ImageRGBToYUV"]["output_name"] == ["Y", "U", "V"]
    assert info["PorterDuffImageComposite"]["input"]["required"]["mode"][1] == {"default": "DST"}
    assert info["GetImageSize"]["output_name"] == ["width", "height", "batch_size"]
    assert info["SaveAnimatedWEBP"]["output_node"] and info["PreviewAny"]["input"]["required"]["source"] == ["*"]
