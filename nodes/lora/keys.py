"""LoRA key names -> (slot, live module name), for every naming scheme, derived from the live modules.

Slots: ``unet``; ``te1`` (the first or only text encoder: CLIP-L of SD1/SDXL, OpenCLIP-H of SD2); ``te2``
(OpenCLIP-G of SDXL and the refiner). A file key is ``<prefix><module><separator><part>``:

- kohya / sd-scripts and LyCORIS: ``lora_unet_`` + the module path with ``.`` -> ``_``, either the original LDM
  path (``input_blocks_1_1_proj_in``, SDXL trainers) or the diffusers one (``down_blocks_0_attentions_0_proj_in``,
  SD1 trainers); ``lora_te_`` / ``lora_te1_`` / ``lora_te2_`` + the transformers CLIP path
  (``text_model_encoder_layers_0_self_attn_q_proj``); parts after a dot (``.lora_up.weight``, ``.alpha``,
  ``.hada_w1_a``, ``.lokr_w1``, ``.diff``...).
- diffusers / PEFT: ``unet.`` + diffusers path, ``text_encoder.`` / ``text_encoder_2.`` + transformers path;
  ``.lora_A.weight`` / ``.lora_B.weight`` (older files: ``.lora.down.weight``, ``.lora_linear_layer.*``,
  attention-processor ``.processor.to_q_lora.down.weight``).
- ComfyUI ``LoraSave``: ``diffusion_model.`` + LDM path; ``text_encoders.clip_l|clip_h|clip_g.transformer.`` +
  transformers path.

The LDM paths come from running the repository's diffusers -> LDM key conversion (``ldm_layout.unet_to_original``)
over the live UNet's own parameter names, so every UNet layout that converts (SD1, SD2, SDXL, custom) is covered.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from nodes.models.errors import ModelFileError
from nodes.models.ldm_layout import hf_clip_keys, unet_original_names

UNET, TE1, TE2 = "unet", "te1", "te2"

# (prefix, slot, path style) — style: "ldm" / "diffusers" / "clip"; underscore prefixes join with "_".
PREFIXES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("lora_unet_", UNET, ("ldm", "diffusers")),
    ("diffusion_model.", UNET, ("ldm",)),
    ("unet.", UNET, ("diffusers",)),
    ("lora_te_", TE1, ("clip",)),
    ("lora_te1_", TE1, ("clip",)),
    ("lora_te2_", TE2, ("clip",)),
    ("text_encoder.", TE1, ("clip",)),
    ("text_encoder_2.", TE2, ("clip",)),
    ("text_encoders.clip_l.transformer.", TE1, ("clip",)),
    ("text_encoders.clip_h.transformer.", TE1, ("clip",)),
    ("text_encoders.clip_g.transformer.", TE2, ("clip",)),
)

# Parts: file suffix -> (kind, part). "alpha" and "diff_b" belong to no single kind.
PART_SUFFIXES: dict[str, tuple[str | None, str]] = {
    "lora_up.weight": ("lora", "up"), "lora_down.weight": ("lora", "down"), "lora_mid.weight": ("lora", "mid"),
    "lora_B.weight": ("lora", "up"), "lora_A.weight": ("lora", "down"),
    "lora.up.weight": ("lora", "up"), "lora.down.weight": ("lora", "down"),
    "hada_w1_a": ("loha", "w1a"), "hada_w1_b": ("loha", "w1b"), "hada_w2_a": ("loha", "w2a"),
    "hada_w2_b": ("loha", "w2b"), "hada_t1": ("loha", "t1"), "hada_t2": ("loha", "t2"),
    "lokr_w1": ("lokr", "w1"), "lokr_w1_a": ("lokr", "w1a"), "lokr_w1_b": ("lokr", "w1b"),
    "lokr_w2": ("lokr", "w2"), "lokr_w2_a": ("lokr", "w2a"), "lokr_w2_b": ("lokr", "w2b"), "lokr_t2": ("lokr", "t2"),
    "diff": ("diff", "diff"), "diff_b": (None, "diff_b"), "set_weight": ("set", "set"), "alpha": (None, "alpha"),
    "dora_scale": ("dora", "dora_scale"),  # recognised so that a DoRA module is reported whole, not half-applied
}
_PART = re.compile(r"^(?P<module>.+?)\.(?P<part>" + "|".join(re.escape(s) for s in sorted(PART_SUFFIXES, key=len,
                                                                                     reverse=True)) + r")$")
_PROCESSOR = re.compile(r"\.processor\.(to_q|to_k|to_v|to_out)_lora\.")


def normalize_key(key: str) -> str:
    """Older diffusers spellings -> the ``.lora.up/down.weight`` form."""
    key = _PROCESSOR.sub(lambda m: f".{m.group(1)}{'.0' if m.group(1) == 'to_out' else ''}.lora.", key)
    return key.replace(".lora_linear_layer.", ".lora.")


def split_key(key: str) -> tuple[str, str] | None:
    """``(module alias, part suffix)`` of a file key, or None when no known part ends it."""
    m = _PART.match(normalize_key(key))
    return (m.group("module"), m.group("part")) if m else None


def slot_of(alias: str) -> str | None:
    return next((slot for prefix, slot, _ in PREFIXES if alias.startswith(prefix)), None)


def _module_names(params: list[str]) -> list[str]:
    return sorted({name.rpartition(".")[0] for name in params if name.endswith((".weight", ".bias"))})


def _unet_paths(unet: torch.nn.Module) -> dict[str, dict[str, str]]:
    """live module name -> {"diffusers": same, "ldm": original path} (LDM only where the conversion applies)."""
    params = [name for name, _ in unet.named_parameters()]
    paths = {module: {"diffusers": module} for module in _module_names(params)}
    try:
        original = unet_original_names(params)
    except ModelFileError:
        return paths  # a UNet structure the LDM layout cannot express: diffusers names only
    for diffusers_key, ldm_key in original.items():
        paths[diffusers_key.rpartition(".")[0]]["ldm"] = ldm_key.rpartition(".")[0]
    return paths


def _clip_paths(model: torch.nn.Module) -> dict[str, dict[str, str]]:
    """live module name -> {"clip": nested ``text_model.*`` path} (transformers may flatten CLIPTextModel)."""
    params = [name for name, _ in model.named_parameters()]
    nested = list(hf_clip_keys(dict.fromkeys(params)))
    return {live.rpartition(".")[0]: {"clip": path.rpartition(".")[0]} for live, path in zip(params, nested)}


def module_aliases(targets: Mapping[str, torch.nn.Module]) -> dict[str, tuple[str, str]]:
    """Every file-side module alias of the given live modules -> ``(slot, live module name)``."""
    aliases: dict[str, tuple[str, str]] = {}
    for slot, module in targets.items():
        paths = _unet_paths(module) if slot == UNET else _clip_paths(module)
        for prefix, prefix_slot, styles in PREFIXES:
            if prefix_slot != slot:
                continue
            for live, by_style in paths.items():
                for style in styles:
                    if style in by_style:
                        path = by_style[style].replace(".", "_") if prefix.endswith("_") else by_style[style]
                        aliases[prefix + path] = (slot, live)
    return aliases
