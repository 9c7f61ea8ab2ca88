"""The SD pack's hints for node types it does not have: popular custom packs and other model families."""

import pytest

from graphengine import PromptValidationError, RuntimeConfig, validate_prompt
from graphengine.registry import NodeRegistry
from nodes import register


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    reg = NodeRegistry()
    register(reg, RuntimeConfig(base_dir=tmp_path_factory.mktemp("base")))
    return reg


@pytest.mark.parametrize("class_type, words", [
    ("KSampler (Efficient)", "Efficiency Nodes"),
    ("CheckpointLoader|pysssss", "ComfyUI-Custom-Scripts"),
    ("UltimateSDUpscale", "UltimateSDUpscale"),
    ("IPAdapterUnifiedLoader", "IPAdapter_plus"),
    ("AIO_Preprocessor", "controlnet_aux"),
    ("DWPreprocessor", "controlnet_aux"),
    ("FaceDetailer", "Impact Pack"),
    ("Power Lora Loader (rgthree)", "rgthree"),
    ("CLIPTextEncodeFlux", "belongs to Flux"),
    ("ModelSamplingFlux", "belongs to Flux"),
    ("EmptySD3LatentImage", "belongs to Stable Diffusion 3"),
    ("ModelSamplingSD3", "belongs to Stable Diffusion 3"),
    ("EmptyHunyuanLatentVideo", "belongs to Hunyuan"),
    ("WanImageToVideo", "belongs to Wan video"),
])
def test_foreign_nodes_get_a_hint(registry, class_type, words):
    hint = registry.missing_node_hint(class_type)
    assert hint is not None and words in hint


def test_own_nodes_and_unknown_names_get_none(registry):
    assert registry.missing_node_hint("KSampler") is None and registry.missing_node_hint("UNETLoader") is None
    assert registry.missing_node_hint("SomethingNobodyWrote") is None


def test_a_flux_workflow_names_every_missing_node_with_its_family(registry):
    prompt = {"1": {"class_type": "UNETLoader", "inputs": {"unet_name": "flux1-dev.safetensors",
                                                          "weight_dtype": "default"}},
              "2": {"class_type": "DualCLIPLoaderFlux", "inputs": {}},
              "3": {"class_type": "CLIPTextEncodeFlux", "inputs": {}},
              "4": {"class_type": "FluxGuidance", "inputs": {}},
              "5": {"class_type": "EmptySD3LatentImage", "inputs": {}},
              "6": {"class_type": "SaveImage", "inputs": {}}}
    with pytest.raises(PromptValidationError) as info:
        validate_prompt(prompt, registry)
    missing = info.value.error["extra_info"]["missing_nodes"]
    assert [m["class_type"] for m in missing] == ["DualCLIPLoaderFlux", "CLIPTextEncodeFlux", "FluxGuidance",
                                                  "EmptySD3LatentImage"]
    assert [m["hint"] is not None for m in missing] == [False, True, True, True]
    assert "Node ID '#4' (FluxGuidance): belongs to Flux" in info.value.error["details"]
