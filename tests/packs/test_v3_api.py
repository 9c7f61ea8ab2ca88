"""ComfyUI V3 nodes (`comfy_api.latest`: io.ComfyNode, io.Schema, ComfyExtension) from a test pack, run through
real prompts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from graphengine import PromptValidationError
from graphengine.comfy_packs import io

from .conftest import solid


def test_v3_object_info_has_every_key_and_v3_combos(registry):
    info = registry.node_info("PosterizeV3")
    assert info["input"] == {
        "required": {"image": ["IMAGE", {"tooltip": "The image to posterize."}],
                     "levels": ["INT", {"default": 4, "min": 2, "max": 256, "display": "slider"}],
                     "mode": ["COMBO", {"default": "round", "options": ["round", "floor"]}]},
        "optional": {"strength": ["FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.1}]},
        "hidden": {"unique_id": ["UNIQUE_ID"]}}
    assert info["input_order"] == {"required": ["image", "levels", "mode"], "optional": ["strength"],
                                   "hidden": ["unique_id"]}
    assert info["output"] == ["IMAGE", "INT"] and info["output_name"] == ["posterized", "levels"]
    assert info["display_name"] == "Posterize (V3)" and info["python_module"] == "custom_nodes.v3_pack"
    assert info["category"] == "image/adjust"
    for key in ("deprecated", "experimental", "dev_only", "api_node", "output_matchtypes", "price_badge",
                "essentials_category", "search_aliases", "output_tooltips"):
        assert key in info
    assert info["deprecated"] is False and info["output_tooltips"] == [None, None]


def test_v3_node_posterizes_and_sees_its_hidden_id(executor, events):
    prompt = {"1": solid(color=0x406080), "9": {"class_type": "PosterizeV3",
                                                "inputs": {"image": ["1", 0], "levels": 2, "mode": "round"}},
              "3": {"class_type": "SaveImage", "inputs": {"images": ["9", 0], "filename_prefix": "v3"}}}
    result = executor.execute(prompt, keep_values=True)
    assert result.ok, result.error
    image = result.values["9"][0][0]
    # 0x40 and 0x60 round down to 0, 0x80 (0.502) rounds up to 1
    assert torch.equal(image[0, 0, 0], torch.tensor([0.0, 0.0, 1.0]))
    assert result.values["9"][1] == [2]
    assert ("executed", {"node": "9", "display_node": "9", "output": {"text": ["node 9: 2 levels"]},
                         "prompt_id": result.prompt_id}) in events
    assert result.outputs["3"]["images"][0]["filename"].startswith("v3")


def test_v3_optional_input_and_bounds(executor):
    prompt = {"1": solid(color=0xFFFFFF), "2": {"class_type": "PosterizeV3",
                                                "inputs": {"image": ["1", 0], "levels": 3, "mode": "floor",
                                                           "strength": 0.0}},
              "3": {"class_type": "ShowValue", "inputs": {"value": ["2", 0]}}}
    assert executor.execute(prompt).outputs["3"] == {"text": ["1.0000"]}
    prompt["2"]["inputs"]["strength"] = 2.0  # validate_inputs does not name it: the declared max holds
    with pytest.raises(PromptValidationError) as caught:
        executor.execute(prompt)
    assert caught.value.node_errors["2"]["errors"][0]["type"] == "value_bigger_than_max"


def test_v3_validate_inputs(executor):
    prompt = {"1": solid(), "2": {"class_type": "PosterizeV3",
                                  "inputs": {"image": ["1", 0], "levels": 13, "mode": "floor"}},
              "3": {"class_type": "ShowValue", "inputs": {"value": ["2", 1]}}}
    with pytest.raises(PromptValidationError) as caught:
        executor.execute(prompt)
    (error,) = caught.value.node_errors["2"]["errors"]
    assert error["type"] == "custom_validation_failed" and error["details"] == "13 levels are unlucky"


def test_v3_block_execution_and_lazy_inputs(executor, events):
    prompt = {"1": solid(color=0xFFFFFF), "2": solid(color=0x000000),
              "3": {"class_type": "MaybeBlockV3", "inputs": {"image": ["1", 0], "block": True}},
              "4": {"class_type": "ShowValue", "inputs": {"value": ["3", 0]}},
              "5": {"class_type": "PickLazyV3", "inputs": {"first": False, "a": ["1", 0], "b": ["2", 0]}},
              "6": {"class_type": "ShowValue", "inputs": {"value": ["5", 0]}}}
    result = executor.execute(prompt)
    assert result.ok and "4" not in result.outputs and result.outputs["6"] == {"text": ["0.0000"]}
    assert "1" in result.executed  # MaybeBlockV3 needs it; the lazy pick did not
    blocked = [d for kind, d in events if kind == "execution_error"]
    assert [(b["node_id"], b["exception_message"]) for b in blocked] == [
        ("4", "Execution Blocked: blocked by V3 node")]
    prompt["3"]["inputs"]["block"] = False
    assert executor.execute(prompt).outputs["4"] == {"text": ["1.0000"]}


def test_v3_ui_previews_are_saved_by_the_node_layer(executor, registry):
    prompt = {"1": solid(width=3, height=2, color=0x204060),
              "2": {"class_type": "PreviewBothV3", "inputs": {"image": ["1", 0]}}}
    result = executor.execute(prompt)
    assert result.ok, result.error
    (entry,) = result.outputs["2"]["images"]
    assert entry["type"] == "temp" and entry["filename"].startswith("ComfyUI_temp_")
    assert result.outputs["2"]["animated"] == [False]
    pixels = np.asarray(Image.open(registry.services.temp_dir / entry["subfolder"] / entry["filename"]))
    assert pixels.shape == (2, 3, 3) and (pixels == np.array([0x20, 0x40, 0x60], dtype=np.uint8)).all()
    (mask_entry,) = io.PreviewMask(torch.full((1, 2, 3), 0.5)).render(registry.services)["images"]
    grey = np.asarray(Image.open(registry.services.temp_dir / mask_entry["filename"]))
    assert grey.shape == (2, 3, 3) and (grey == 127).all()  # 127.5 truncated, as ComfyUI saves
