"""Writing diffusers/transformers modules back into the original single-file layout (LDM/SGM keys).

Standard families record ``graphengine.family`` and ``graphengine.prediction_type`` in the safetensors metadata.
The custom family (any UNet2DConditionModel / AutoencoderKL / CLIP text model sizes, e.g. the bundled demo model)
also stores ``graphengine.config``, a JSON object that makes the single file self-describing::

    {"format": "graphengine.custom/1", "prediction_type": "epsilon", "image_size": 64,
     "unet": {UNet2DConditionModel config}, "vae": {AutoencoderKL config, scaling_factor = latent scale},
     "text_encoders": [{"kind": "clip_l", "layer": -1, "final_norm": true, "config": {CLIPTextConfig}}],
     "scheduler": {scheduler config}}

Weights use the same original-layout keys as the standard families (text encoder slots chosen by kinds, see
``families.ENCODER_LAYOUTS``).
"""

from __future__ import annotations

import json
from dataclasses import replace
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from .build import TextEncoder, TextModel
from .detect import V_PRED_MARKER, ZSNR_MARKER, normalize_prediction_type
from .errors import ModelFileError
from .families import (
    CUSTOM_CONFIG_KEY, ENCODER_LAYOUTS, FAMILIES, UNET_PREFIX, VAE_PREFIX, Family, TextEncoderSpec, get_family,
    read_config,
)
from .ldm_layout import clip_to_open_clip, hf_clip_keys, unet_to_original, vae_to_original
from .state_dict import PICKLE_EXTENSIONS, SAFETENSORS_EXTENSIONS, write_safetensors

CUSTOM_FORMAT = "graphengine.custom/1"


def _plain_config(config: Mapping) -> dict:
    return {k: v for k, v in dict(config).items() if not k.startswith("_") or k == "_class_name"}


def _text_config(model: TextModel) -> dict:
    config = model.config.to_dict()
    skip = ("transformers_version", "dtype", "torch_dtype")
    return {k: v for k, v in config.items() if not k.startswith("_") and k not in skip}


def _default_kinds(models: Sequence[TextModel]) -> tuple[str, ...]:
    if len(models) == 2:
        return ("clip_l", "open_clip_g")
    if len(models) == 1:
        return ("open_clip_g",) if hasattr(models[0], "text_projection") else ("clip_l",)
    raise ModelFileError(f"custom family needs 1 or 2 text encoders, got {len(models)}")


def _custom_specs(
    text_encoders: Sequence[TextEncoder | TextModel], models: Sequence[TextModel]
) -> list[TextEncoderSpec]:
    """Original-layout slots for the custom family's encoders; how each is read (layer, final norm) is kept
    from TextEncoder objects, else the slot default."""
    given = [te.spec for te in text_encoders if isinstance(te, TextEncoder)]
    kinds = tuple(s.kind for s in given) if len(given) == len(models) else _default_kinds(models)
    if kinds not in ENCODER_LAYOUTS:
        raise ModelFileError(f"custom family: text encoder kinds {list(kinds)} fit no layout {list(ENCODER_LAYOUTS)}")
    slots = list(ENCODER_LAYOUTS[kinds])
    if len(given) != len(models):
        return slots
    return [replace(slot, layer=g.layer, final_norm=g.final_norm) for slot, g in zip(slots, given)]


def custom_config_json(unet: UNet2DConditionModel, vae: AutoencoderKL, models: Sequence[TextModel],
                       specs: Sequence[TextEncoderSpec], prediction_type: str, scheduler: Mapping | None = None,
                       image_size: int | None = None) -> str:
    """The ``graphengine.config`` JSON: every diffusers/transformers config needed to rebuild the modules."""
    scheduler = dict(scheduler or read_config(FAMILIES["sd15"].config_dir, "scheduler"))
    scheduler["prediction_type"] = prediction_type
    config = {
        "format": CUSTOM_FORMAT,
        "prediction_type": prediction_type,
        "image_size": int(image_size or vae.config.sample_size),
        "unet": _plain_config(unet.config),
        "vae": _plain_config(vae.config),
        "text_encoders": [{"kind": s.kind, "layer": s.layer, "final_norm": s.final_norm, "config": _text_config(m)}
                          for s, m in zip(specs, models)],
        "scheduler": scheduler,
    }
    return json.dumps(config, sort_keys=True, default=str)


def original_state_dict(unet: UNet2DConditionModel | None, vae: AutoencoderKL | None, models: Sequence[TextModel],
                        specs: Sequence[TextEncoderSpec]) -> dict[str, torch.Tensor]:
    """All weights under their original single-file keys."""
    out: dict[str, torch.Tensor] = {}
    if unet is not None:
        unet_sd = unet_to_original(unet.state_dict(), unet.config.layers_per_block)
        out.update({UNET_PREFIX + k: v for k, v in unet_sd.items()})
    if vae is not None:
        out.update({VAE_PREFIX + k: v for k, v in vae_to_original(vae.state_dict()).items()})
    for spec, model in zip(specs, models):
        weights = model.state_dict()
        converted = hf_clip_keys(weights) if spec.layout == "hf" else clip_to_open_clip(weights)
        out.update({spec.prefix + k: v for k, v in converted.items()})
    return out


def save_checkpoint(path: str | Path, unet: UNet2DConditionModel | None, vae: AutoencoderKL | None,
                    text_encoders: Sequence[TextEncoder | TextModel], family: str | Family,
                    metadata: Mapping[str, str] | None = None, dtype: torch.dtype | None = None,
                    prediction_type: str | None = None, zsnr: bool = False) -> Path:
    """Write one original-layout single file (``.safetensors``/``.sft``; ``.ckpt``/``.pt``/``.pth`` as a
    ``{"state_dict": ...}`` torch archive). ``family="custom"`` embeds the configs (safetensors only).
    ``text_encoders`` are TextEncoder objects or bare CLIP models, in the family's slot order.
    A v-prediction model gets ComfyUI's empty ``v_pred`` marker tensor, a zero-terminal-SNR one ``ztsnr``."""
    path = Path(path)
    models = [te.model if isinstance(te, TextEncoder) else te for te in text_encoders]
    name = family.name if isinstance(family, Family) else family
    meta: dict[str, str] = {"graphengine.family": name}
    if name == "custom":
        if unet is None or vae is None:
            raise ModelFileError("custom family needs a UNet and a VAE (their configs go into the file)")
        specs = _custom_specs(text_encoders, models)
        prediction = normalize_prediction_type(prediction_type or "epsilon")
        meta[CUSTOM_CONFIG_KEY] = custom_config_json(unet, vae, models, specs, prediction)
    else:
        fam = family if isinstance(family, Family) else get_family(name)
        specs = list(fam.text_encoders)
        if models and len(models) != len(specs):
            kinds = list(fam.text_encoder_kinds)
            raise ModelFileError(f"family {name} has {len(specs)} text encoder(s) {kinds}, got {len(models)}")
        prediction = normalize_prediction_type(prediction_type or fam.prediction_type)
    meta["graphengine.prediction_type"] = prediction
    meta.update({str(k): str(v) for k, v in (metadata or {}).items()})
    tensors = original_state_dict(unet, vae, models, specs)
    if prediction == "v_prediction":
        tensors[V_PRED_MARKER] = torch.tensor([])
    if zsnr:
        tensors[ZSNR_MARKER] = torch.tensor([])
    if dtype is not None:
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_EXTENSIONS:
        write_safetensors(path, tensors, meta)
    elif suffix in PICKLE_EXTENSIONS and name != "custom":
        torch.save({"state_dict": {k: v.detach().cpu().contiguous() for k, v in tensors.items()}}, path)
    else:
        raise ModelFileError(
            f"{path.name}: cannot write {suffix!r}; use .safetensors (custom family) or .ckpt/.pt/.pth"
        )
    return path
