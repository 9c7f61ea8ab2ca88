"""Which model family a state dict belongs to, from key structure (not absolute sizes).

Rules (all structural, so shrunken test models of a family are detected like the real ones):
- base, from the UNet: ``label_emb`` (ADM input) present -> SDXL; then 3 resolution levels with attention on
  levels (-, x, x) -> SDXL base, 4 levels (-, x, x, -) -> SDXL refiner, (x, x, x, -) with a linear ``proj_in``
  -> SD2.1 unCLIP (variant "unclip"). Without ``label_emb``: 4 levels with attention (x, x, x, -) and a linear
  ``proj_in`` -> SD2, a 1x1-conv ``proj_in`` -> SD1.
- the text-encoder key layout must agree when present (SD1 ``cond_stage_model.transformer``, SD2
  ``cond_stage_model.model``, SDXL ``conditioner.embedders.0.transformer`` + ``.1.model``, refiner
  ``conditioner.embedders.0.model``).
- variant, from UNet in/out channels: in == out -> normal, in == 2*out+1 -> inpaint (latent + mask + masked
  latent), in == out+1 -> depth (SD2 only; MiDaS ``depth_model.*`` weights are ignored if present), in == 2*out
  -> InstructPix2Pix (latent + the edited image's latent; SD1 and SDXL); in == out+3 is the SD x4 upscaler,
  refused by name.
- prediction type (first that applies): the caller's hint; a ``v_pred`` marker key; safetensors metadata
  (``graphengine.prediction_type``, ``modelspec.prediction_type``, ``ss_v_parameterization``,
  ``modelspec.architecture`` ending in ``-v``); for 4-channel SD2 only, ComfyUI's heuristic: population std
  of the last attention output block's ``transformer_blocks.0.norm1.bias`` > 0.09 means v-prediction
  (trained SD2-768-v weights have large values there; an untrained/random model reads as epsilon);
  else the family default.
- a ``graphengine.config`` metadata entry (JSON of diffusers configs) makes it the ``custom`` family.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, replace

import torch

from .errors import ModelFileError, UnknownModelError
from .families import (CUSTOM_CONFIG_KEY, ENCODER_LAYOUTS, FAMILIES, UNET_PREFIX, VAE_PREFIX, X4_UPSCALER_UNSUPPORTED,
                       Family, get_family)

V_PRED_STD_THRESHOLD = 0.09

_ATTENTION_PATTERNS = {
    "sd1": (True, True, True, False),
    "sd2": (True, True, True, False),
    "sdxl": (False, True, True),
    "sdxl_refiner": (False, True, True, False),
}
_FAMILY_BY_BASE_VARIANT = {
    ("sd1", "normal"): "sd15",
    ("sd1", "inpaint"): "sd15_inpaint",
    ("sd2", "normal"): "sd2",
    ("sd2", "inpaint"): "sd2_inpaint",
    ("sd2", "depth"): "sd2_depth",
    ("sd2", "unclip"): "sd2_unclip",
    ("sdxl", "normal"): "sdxl",
    ("sdxl", "inpaint"): "sdxl_inpaint",
    ("sd1", "ip2p"): "sd15_ip2p",
    ("sdxl", "ip2p"): "sdxl_ip2p",
    ("sdxl_refiner", "normal"): "sdxl_refiner",
}
_ENCODER_BASES = {
    ("clip_l",): "sd1",
    ("open_clip_h",): "sd2",
    ("clip_l", "open_clip_g"): "sdxl",
    ("open_clip_g",): "sdxl_refiner",
}
_PREDICTION_ALIASES = {
    "eps": "epsilon",
    "epsilon": "epsilon",
    "v": "v_prediction",
    "v_prediction": "v_prediction",
    "v-prediction": "v_prediction",
}


@dataclass(frozen=True)
class UnetStructure:
    """Shape facts read from LDM-layout UNet keys (prefix removed)."""

    in_channels: int
    out_channels: int
    level_channels: tuple[int, ...]
    layers_per_block: int
    attention_levels: tuple[bool, ...]
    transformer_depths: tuple[int, ...]  # per level, 0 where there is no attention
    mid_transformer_depth: int
    context_dim: int | None
    linear_projection: bool | None
    adm_in_channels: int | None

    def describe(self) -> str:
        return (
            f"in={self.in_channels} out={self.out_channels} levels={list(self.level_channels)} "
            f"layers_per_block={self.layers_per_block} attention={[int(a) for a in self.attention_levels]} "
            f"context_dim={self.context_dim} linear_proj_in={self.linear_projection} adm_in={self.adm_in_channels}"
        )


@dataclass(frozen=True)
class Detection:
    family: Family
    prediction_type: str
    prediction_source: str
    unet: UnetStructure | None
    text_encoder_kinds: tuple[str, ...]
    has_vae: bool
    custom_config: dict | None = None
    zsnr: bool = False  # a ``ztsnr`` marker key: the schedule is rescaled to zero terminal SNR


def normalize_prediction_type(value: str) -> str:
    key = str(value).strip().lower()
    if key not in _PREDICTION_ALIASES:
        raise ValueError(f"unknown prediction type {value!r}; expected 'epsilon' or 'v_prediction'")
    return _PREDICTION_ALIASES[key]


def strip_prefix(sd: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def _block_indices(sd: Mapping[str, torch.Tensor], name: str) -> list[int]:
    pattern = re.compile(rf"^{name}\.(\d+)\.")
    return sorted({int(m.group(1)) for k in sd if (m := pattern.match(k))})


def _depth(sd: Mapping[str, torch.Tensor], block_prefix: str) -> int:
    return len(_block_indices(sd, re.escape(block_prefix + "transformer_blocks")))


def unet_structure(sd: Mapping[str, torch.Tensor], encoder_only: bool = False) -> UnetStructure:
    """Read an LDM UNet's structure; raises ModelFileError when the key layout is not an LDM UNet.

    `encoder_only`: the weights have only the input and middle blocks (a ControlNet); out_channels = in_channels."""
    try:
        conv_in = sd["input_blocks.0.0.weight"]
        out_channels = int(conv_in.shape[1]) if encoder_only else int(sd["out.2.weight"].shape[0])
    except KeyError as e:
        raise ModelFileError(f"not an LDM UNet: missing {e.args[0]!r}") from None
    inputs = [i for i in _block_indices(sd, "input_blocks") if i > 0]
    downsamplers = [i for i in inputs if f"input_blocks.{i}.0.op.weight" in sd]
    levels = len(downsamplers) + 1
    if (len(inputs) + 1) % levels:
        raise ModelFileError(f"not an LDM UNet: {len(inputs)} input blocks do not split into {levels} levels")
    per_level = (len(inputs) + 1) // levels
    firsts = [1 + level * per_level for level in range(levels)]
    channels = tuple(int(sd[f"input_blocks.{i}.0.out_layers.3.weight"].shape[0]) for i in firsts)
    attention = tuple(any(k.startswith(f"input_blocks.{i}.1.") for k in sd) for i in firsts)
    depths = tuple(_depth(sd, f"input_blocks.{i}.1.") for i in firsts)
    to_k = next((v for k, v in sd.items() if k.endswith("attn2.to_k.weight")), None)
    proj_in = next((v for k, v in sd.items() if k.endswith(".proj_in.weight")), None)
    adm = sd.get("label_emb.0.0.weight")
    return UnetStructure(
        in_channels=int(conv_in.shape[1]),
        out_channels=out_channels,
        level_channels=channels,
        layers_per_block=per_level - 1,
        attention_levels=attention,
        transformer_depths=depths,
        mid_transformer_depth=_depth(sd, "middle_block.1."),
        context_dim=int(to_k.shape[1]) if to_k is not None else None,
        linear_projection=(proj_in.ndim == 2) if proj_in is not None else None,
        adm_in_channels=int(adm.shape[1]) if adm is not None else None,
    )


def base_from_unet(s: UnetStructure) -> str | None:
    if s.adm_in_channels is not None:
        candidates = ("sdxl", "sdxl_refiner", "sd2") if s.linear_projection else ("sdxl", "sdxl_refiner")
    elif s.linear_projection is True:
        candidates = ("sd2",)
    elif s.linear_projection is False:
        candidates = ("sd1",)
    else:
        return None
    return next((b for b in candidates if _ATTENTION_PATTERNS[b] == s.attention_levels), None)


def variant_from_channels(s: UnetStructure) -> str | None:
    if s.adm_in_channels is not None and s.attention_levels == _ATTENTION_PATTERNS["sd2"]:
        return "unclip" if s.in_channels == s.out_channels else None
    if s.in_channels == s.out_channels:
        return "normal"
    if s.in_channels == 2 * s.out_channels + 1:
        return "inpaint"
    if s.in_channels == s.out_channels + 1:
        return "depth"
    if s.in_channels == 2 * s.out_channels:
        return "ip2p"
    return None


def encoder_kinds_in(sd: Mapping[str, torch.Tensor]) -> tuple[str, ...]:
    """Kinds of the text encoders present, matched against the original-layout prefixes of each family."""
    for kinds, specs in sorted(ENCODER_LAYOUTS.items(), key=lambda item: -len(item[0])):
        if all(any(k.startswith(spec.prefix) for k in sd) for spec in specs):
            return kinds
    return ()


def _key_summary(sd: Mapping[str, torch.Tensor]) -> str:
    prefixes = Counter(".".join(k.split(".")[:2]) for k in sd)
    return ", ".join(f"{p}.* ({n})" for p, n in prefixes.most_common(8))


def _unknown(
    what: str, sd: Mapping[str, torch.Tensor], s: UnetStructure | None, kinds: tuple[str, ...]
) -> UnknownModelError:
    found = [f"unet: {s.describe()}" if s else "unet: none", f"text encoders: {list(kinds) or 'none'}",
             f"vae: {'yes' if any(k.startswith(VAE_PREFIX) for k in sd) else 'no'}", f"keys: {_key_summary(sd)}"]
    return UnknownModelError(f"{what}; found {'; '.join(found)}")


V_PRED_MARKER, ZSNR_MARKER = "v_pred", "ztsnr"  # empty tensors that ComfyUI's CheckpointSave writes


def prediction_from_markers(sd: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> tuple[str, str] | None:
    """(prediction_type, source) from explicit markers in the file, or None."""
    if V_PRED_MARKER in sd:
        return "v_prediction", "v_pred key"
    for key in ("graphengine.prediction_type", "modelspec.prediction_type"):
        if key in metadata:
            try:
                return normalize_prediction_type(metadata[key]), f"metadata {key}"
            except ValueError:
                pass
    if str(metadata.get("ss_v_parameterization", "")).lower() == "true":
        return "v_prediction", "metadata ss_v_parameterization"
    if str(metadata.get("modelspec.architecture", "")).endswith("-v"):
        return "v_prediction", "metadata modelspec.architecture"
    return None


def sd2_v_heuristic(unet_sd: Mapping[str, torch.Tensor], s: UnetStructure) -> bool:
    """ComfyUI's guess for SD2: a trained v-model has a widely spread norm bias in its last attention block."""
    outputs = _block_indices(unet_sd, "output_blocks")
    with_attention = [i for i in outputs if f"output_blocks.{i}.1.transformer_blocks.0.norm1.bias" in unet_sd]
    if not with_attention or s.in_channels != s.out_channels:
        return False
    bias = unet_sd[f"output_blocks.{with_attention[-1]}.1.transformer_blocks.0.norm1.bias"]
    if bias.is_meta:
        return False
    bias = bias.float()
    return bool(torch.std(bias, unbiased=False) > V_PRED_STD_THRESHOLD)


def detect_unet(unet_sd: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None,
                family_hint: str | None = None, prediction_hint: str | None = None,
                encoder_kinds: tuple[str, ...] = (), full_sd: Mapping[str, torch.Tensor] | None = None) -> Detection:
    """Detect a family from LDM UNet keys (prefix removed), optionally cross-checked with the encoder layout."""
    metadata = metadata or {}
    full_sd = unet_sd if full_sd is None else full_sd
    s = unet_structure(unet_sd)
    if s.in_channels == s.out_channels + 3:
        raise _unknown(X4_UPSCALER_UNSUPPORTED, full_sd, s, encoder_kinds)
    base, variant = base_from_unet(s), variant_from_channels(s)
    if family_hint is not None:
        family = get_family(family_hint)
        if base is not None and base != family.base:
            raise UnknownModelError(f"family hint {family_hint!r} does not match the weights ({base}: {s.describe()})")
    else:
        if base is None or variant is None or (base, variant) not in _FAMILY_BY_BASE_VARIANT:
            raise _unknown("unsupported or unknown model layout", full_sd, s, encoder_kinds)
        encoder_base = _ENCODER_BASES.get(encoder_kinds)
        if encoder_kinds and encoder_base != base:
            what = f"UNet looks like {base} but the text encoders like {encoder_base}"
            raise _unknown(what, full_sd, s, encoder_kinds)
        family = FAMILIES[_FAMILY_BY_BASE_VARIANT[(base, variant)]]
    prediction, source = _decide_prediction(family, unet_sd, s, full_sd, metadata, prediction_hint, family_hint)
    if family.name == "sd2" and prediction == "v_prediction":
        family = FAMILIES["sd2_v"]
    return Detection(family, prediction, source, s, encoder_kinds, any(k.startswith(VAE_PREFIX) for k in full_sd),
                     zsnr=ZSNR_MARKER in full_sd)


def _decide_prediction(family, unet_sd, s, full_sd, metadata, prediction_hint, family_hint) -> tuple[str, str]:
    if prediction_hint is not None:
        return normalize_prediction_type(prediction_hint), "hint"
    if family_hint is not None:
        return family.prediction_type, "family hint"
    marked = prediction_from_markers(full_sd, metadata)
    if marked is not None:
        return marked
    if family.name in ("sd2", "sd2_unclip"):
        if sd2_v_heuristic(unet_sd, s):
            return "v_prediction", "heuristic (norm bias std > 0.09)"
        return "epsilon", "heuristic (norm bias std <= 0.09)"
    return family.prediction_type, "family default"


def detect_checkpoint(sd: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None,
                      family_hint: str | None = None, prediction_hint: str | None = None) -> Detection:
    """Detect the family of a full original-layout checkpoint (``model.diffusion_model.*`` + VAE + encoders)."""
    metadata = metadata or {}
    kinds = encoder_kinds_in(sd)
    if CUSTOM_CONFIG_KEY in metadata and family_hint in (None, "custom"):
        config = parse_custom_config(metadata[CUSTOM_CONFIG_KEY])
        family = custom_family(config)
        marked = prediction_from_markers(sd, metadata)
        prediction, source = (normalize_prediction_type(prediction_hint), "hint") if prediction_hint else (
            marked or (family.prediction_type, "custom config"))
        has_vae = any(k.startswith(VAE_PREFIX) for k in sd)
        return Detection(family, prediction, source, None, family.text_encoder_kinds, has_vae, config,
                         zsnr=ZSNR_MARKER in sd)
    if family_hint == "custom":
        raise ModelFileError(f"family 'custom' needs the {CUSTOM_CONFIG_KEY!r} metadata entry, which this file lacks")
    unet_sd = strip_prefix(sd, UNET_PREFIX)
    if not unet_sd:
        raise _unknown(f"no diffusion model weights (expected keys under {UNET_PREFIX!r})", sd, None, kinds)
    return detect_unet(unet_sd, metadata, family_hint, prediction_hint, kinds, full_sd=sd)


def parse_custom_config(text: str) -> dict:
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        raise ModelFileError(f"metadata {CUSTOM_CONFIG_KEY} is not valid JSON: {e}") from e
    missing = [k for k in ("unet", "vae", "text_encoders") if k not in config]
    if not isinstance(config, dict) or missing:
        raise ModelFileError(
            f"metadata {CUSTOM_CONFIG_KEY} lacks {missing} (expected unet, vae, text_encoders configs)"
        )
    return config


def custom_family(config: dict) -> Family:
    """A Family whose facts come from the embedded config (see ``single_file.custom_config_json``)."""
    kinds = tuple(entry["kind"] for entry in config["text_encoders"])
    if kinds not in ENCODER_LAYOUTS:
        raise ModelFileError(
            f"custom config: unsupported text encoder kinds {list(kinds)}; expected one of {list(ENCODER_LAYOUTS)}"
        )
    specs = tuple(
        replace(
            spec, layer=int(entry.get("layer", spec.layer)), final_norm=bool(entry.get("final_norm", spec.final_norm))
        )
        for spec, entry in zip(ENCODER_LAYOUTS[kinds], config["text_encoders"])
    )
    unet, vae = config["unet"], config["vae"]
    return Family(
        name="custom",
        base="custom",
        variant=str(config.get("variant", "normal")),
        prediction_type=normalize_prediction_type(config.get("prediction_type", "epsilon")),
        latent_scale_factor=float(vae.get("scaling_factor", 0.18215)),
        in_channels=int(unet.get("in_channels", 4)),
        text_encoders=specs,
        pipeline_class=str(config.get("pipeline_class", "StableDiffusionPipeline")),
        image_size=int(config.get("image_size", vae.get("sample_size", 512))),
        head_rule="config",
    )
