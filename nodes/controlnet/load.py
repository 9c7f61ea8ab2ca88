"""Loading ControlNet / T2I-Adapter files into diffusers `ControlNetModel` / `T2IAdapter`, offline.

Original-layout ControlNets are converted with diffusers' own `convert_controlnet_checkpoint`, with a config built
like the single-file UNet's: the family's shipped UNet config (`nodes/configs/<family>/unet`) with every size read
from the weights (`derive_unet_config`), plus the hint encoder's widths. A diffusers-layout single file gets its
config the same way (its keys are mapped to the original layout to read the structure); a diffusers folder
(config.json + weights) loads with `from_pretrained(local_files_only=True)`. A structure that is no standard family
loads from the diffusers config in the file's `graphengine.config` metadata ({"controlnet": {...}}).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Mapping
from pathlib import Path

import torch
from diffusers import ControlNetModel, T2IAdapter
from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING, convert_controlnet_checkpoint

from ..models.build import instantiate
from ..models.derive import derive_unet_config
from ..models.detect import base_from_unet, unet_structure
from ..models.diffusers_folder import structure_from_config
from ..models.errors import ModelFileError
from ..models.families import CUSTOM_CONFIG_KEY, FAMILIES, read_config
from ..models.ldm_layout import unet_original_names
from ..models.state_dict import read_state_dict
from .layout import ControlLayout, adapter_from_diffusers, adapter_from_original, classify, controlnet_to_original, \
    hint_encoder_channels

FAMILY_OF_BASE = {"sd1": "sd15", "sd2": "sd2", "sdxl": "sdxl"}
BASE_NAMES = {"sd1": "SD1.x", "sd2": "SD2.x", "sdxl": "SDXL", "sdxl_refiner": "SDXL refiner"}
_CONTROLNET_PARAMS = set(inspect.signature(ControlNetModel.__init__).parameters) - {"self"}
_FOLDER_CLASSES = {"ControlNetModel": ControlNetModel, "T2IAdapter": T2IAdapter}



def base_of_config(config: Mapping) -> str | None:
    """sd1 / sd2 / sdxl / sdxl_refiner from a diffusers UNet or ControlNet config's structure; None if no family's."""
    return base_from_unet(structure_from_config(dict(config)))


def controlnet_config(ldm: Mapping[str, torch.Tensor]) -> dict:
    """A ControlNetModel config from original-layout weights (prefix removed): family defaults, sizes from weights."""
    structure = unet_structure(ldm, encoder_only=True)
    base = base_from_unet(structure)
    if base not in FAMILY_OF_BASE:
        raise ModelFileError(f"ControlNet of no known family ({structure.describe()}); a ControlNet for another "
                             f"model structure needs its diffusers config in the {CUSTOM_CONFIG_KEY!r} metadata")
    family = FAMILIES[FAMILY_OF_BASE[base]]
    unet = derive_unet_config(read_config(family.config_dir, "unet"), structure, family.head_rule)
    hint_channels, embedding = hint_encoder_channels(ldm)
    config = {k: v for k, v in unet.items() if k in _CONTROLNET_PARAMS}
    config.update(conditioning_channels=hint_channels, conditioning_embedding_out_channels=list(embedding))
    return config


def _embedded_config(metadata: Mapping[str, str]) -> dict | None:
    if CUSTOM_CONFIG_KEY not in metadata:
        return None
    try:
        config = json.loads(metadata[CUSTOM_CONFIG_KEY])["controlnet"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ModelFileError(f"metadata {CUSTOM_CONFIG_KEY} holds no ControlNet config: {e}") from e
    return {k: v for k, v in config.items() if k in _CONTROLNET_PARAMS}


class UnetWeights:
    """A UNet's weights under their LDM names, as a diff ControlNet needs them (only the wanted keys are copied)."""

    def __init__(self, unet: torch.nn.Module) -> None:
        self.unet = unet
        self.base = base_of_config(unet.config)

    def __call__(self, wanted: set[str]) -> dict[str, torch.Tensor]:
        state = self.unet.state_dict()
        names = unet_original_names(state)
        return {names[k]: v.detach().to("cpu", torch.float32) for k, v in state.items() if names[k] in wanted}


def with_model_weights(control: Mapping[str, torch.Tensor], unet_weights: UnetWeights) -> dict[str, torch.Tensor]:
    """A diff ControlNet made whole: every weight it shares with the UNet (same LDM key) plus the model's."""
    mine = base_from_unet(unet_structure(control, encoder_only=True))
    if None not in (mine, unet_weights.base) and mine != unet_weights.base:
        raise ModelFileError(f"diff ControlNet for {BASE_NAMES[mine]} models, but the model is "
                             f"{BASE_NAMES[unet_weights.base]}: it needs the model it was made from")
    base = unet_weights(set(control))
    out = dict(control)
    for key, weight in base.items():
        if weight.shape != control[key].shape:
            raise ModelFileError(f"diff ControlNet weight {key!r} {tuple(control[key].shape)} does not fit the "
                                 f"model's {tuple(weight.shape)}: it was made for another model")
        out[key] = control[key].to(torch.float32) + weight.to(torch.float32)
    return out


def _controlnet(layout: ControlLayout, metadata: Mapping[str, str], dtype: torch.dtype | None,
                unet_weights: UnetWeights | None) -> ControlNetModel:
    weights = layout.weights
    if layout.diff:
        if unet_weights is None:
            raise ModelFileError("a diff ControlNet (weights relative to a model): load it with "
                                 "DiffControlNetLoader and the model it was made for")
        weights = with_model_weights(weights, unet_weights)
    ldm = controlnet_to_original(weights, prefix="") if layout.form == "diffusers" else weights
    config = _embedded_config(metadata) or controlnet_config(ldm)
    if layout.form == "diffusers":
        converted = weights
    else:
        converted = convert_controlnet_checkpoint(dict(ldm), config)
        for diffusers_key, ldm_key in DIFFUSERS_TO_LDM_MAPPING["controlnet"]["addition_embed_type"].items():
            if ldm_key in ldm:  # SDXL's added-conditioning embedding, which the converter leaves out
                converted[diffusers_key] = ldm[ldm_key]
    return instantiate(lambda: ControlNetModel.from_config(config), converted, "ControlNet", dtype)


def _adapter(layout: ControlLayout, dtype: torch.dtype | None) -> T2IAdapter:
    if layout.form == "original":
        spec, weights = adapter_from_original(layout.weights)
    else:
        spec, weights = adapter_from_diffusers(layout.weights), layout.weights
    return instantiate(lambda: T2IAdapter(**spec.kwargs()), weights, "T2I-Adapter", dtype)


def _folder(path: Path, dtype: torch.dtype | None) -> torch.nn.Module:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelFileError(f"{path.name}: not a diffusers ControlNet folder (no config.json)")
    class_name = json.loads(config_file.read_text(encoding="utf-8")).get("_class_name")
    if class_name == "ControlNetUnionModel":
        raise ModelFileError(f"{path.name}: union ControlNets (ControlNet++) are not supported")
    if class_name not in _FOLDER_CLASSES:
        raise ModelFileError(f"{path.name}: a {class_name} folder, not a ControlNetModel or T2IAdapter")
    try:
        return _FOLDER_CLASSES[class_name].from_pretrained(path, local_files_only=True, torch_dtype=dtype).eval()
    except (OSError, ValueError) as e:
        raise ModelFileError(f"{path.name}: cannot load the ControlNet folder: {e}") from e


def load_control_model(path: str | Path, dtype: torch.dtype | None = torch.float32,
                       unet_weights: UnetWeights | None = None) -> torch.nn.Module:
    """A ControlNetModel or T2IAdapter from a file or a diffusers folder; `unet_weights` makes a diff ControlNet
    whole (DiffControlNetLoader)."""
    path = Path(path)
    if path.is_dir():
        return _folder(path, dtype)
    sd, metadata = read_state_dict(path)
    layout = classify(sd)
    if layout.kind == "t2i_adapter":
        return _adapter(layout, dtype)
    return _controlnet(layout, metadata, dtype, unet_weights)
