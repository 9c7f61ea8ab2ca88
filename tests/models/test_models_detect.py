"""Family / prediction-type detection on original-layout state dicts built from tiny models."""

from __future__ import annotations

import pytest
import torch

from nodes.models import FAMILIES, UnknownModelError, detect_checkpoint
from nodes.models.export import original_state_dict

from .tiny import tiny_family_models


def _original(family: str) -> dict[str, torch.Tensor]:
    unet, vae, encoders = tiny_family_models(family)
    return original_state_dict(unet, vae, encoders, FAMILIES[family].text_encoders)


@pytest.fixture(scope="module")
def sd2_weights():
    return _original("sd2")


def _with_spread_norm_bias(sd, std: float):
    """Set the last attention output block's norm bias (the tensor ComfyUI's SD2 v-heuristic reads)."""
    key = "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.norm1.bias"
    assert key in sd
    out = dict(sd)
    g = torch.Generator().manual_seed(0)
    out[key] = torch.randn(sd[key].shape, generator=g) * std
    return out


def test_sd2_prediction_heuristic(sd2_weights):
    assert detect_checkpoint(_with_spread_norm_bias(sd2_weights, 0.02)).family.name == "sd2"
    detection = detect_checkpoint(_with_spread_norm_bias(sd2_weights, 0.5))
    assert (detection.family.name, detection.prediction_type) == ("sd2_v", "v_prediction")
    assert "heuristic" in detection.prediction_source


def test_explicit_markers_beat_the_heuristic(sd2_weights):
    spread = _with_spread_norm_bias(sd2_weights, 0.5)
    assert detect_checkpoint(spread, {"modelspec.prediction_type": "epsilon"}).family.name == "sd2"
    assert detect_checkpoint(spread, prediction_hint="eps").family.name == "sd2"
    spec_768_v = {"modelspec.architecture": "stable-diffusion-v2-768-v"}
    assert detect_checkpoint(sd2_weights, spec_768_v).family.name == "sd2_v"
    marked = dict(sd2_weights, v_pred=torch.tensor([]))
    assert detect_checkpoint(marked).prediction_type == "v_prediction"
    assert detect_checkpoint(sd2_weights, family_hint="sd2_v").family.name == "sd2_v"


def test_sdxl_v_pred_marker_keeps_family():
    detection = detect_checkpoint(dict(_original("sdxl"), v_pred=torch.tensor([])))
    found = (detection.family.name, detection.prediction_type, detection.prediction_source)
    assert found == ("sdxl", "v_prediction", "v_pred key")


def test_depth_model_weights_are_ignored_by_detection():
    sd = _original("sd2_depth")
    sd["depth_model.model.pretrained.layer1.0.weight"] = torch.zeros(2)
    assert detect_checkpoint(sd).family.name == "sd2_depth"


def test_unet_only_structure_without_text_encoders():
    sd = {k: v for k, v in _original("sdxl_refiner").items() if k.startswith("model.diffusion_model.")}
    assert detect_checkpoint(sd).family.name == "sdxl_refiner"


def test_unknown_layouts_list_what_was_found(sd2_weights):
    with pytest.raises(UnknownModelError, match=r"no diffusion model weights.*keys: foo\.bar"):
        detect_checkpoint({"foo.bar.weight": torch.zeros(1)})
    pix2pix = dict(sd2_weights)
    pix2pix["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(32, 8, 3, 3)  # 8-ch: instruct-pix2pix
    with pytest.raises(UnknownModelError, match=r"in=8 out=4.*text encoders: \['open_clip_h'\]"):
        detect_checkpoint(pix2pix)


def test_mismatched_text_encoders_are_reported(sd2_weights):
    sd1_text = {k: v for k, v in _original("sd15").items() if k.startswith("cond_stage_model.")}
    mixed = {k: v for k, v in sd2_weights.items() if not k.startswith("cond_stage_model.")} | sd1_text
    with pytest.raises(UnknownModelError, match="looks like sd2 but the text encoders like sd1"):
        detect_checkpoint(mixed)
    with pytest.raises(UnknownModelError, match="does not match"):
        detect_checkpoint(sd2_weights, family_hint="sdxl")
