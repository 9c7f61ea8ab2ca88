"""Reading LoRA files and telling their format from the keys."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from nodes.models.errors import ModelFileError
from nodes.models.state_dict import read_state_dict

from .keys import PART_SUFFIXES, split_key


class LoraError(ModelFileError):
    """A LoRA file is unreadable, of no known format, or does not fit the model it is applied to."""


class LoraMismatchError(LoraError):
    """The LoRA was made for another model family (its modules do not exist or have other shapes)."""


def load_lora_file(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a LoRA file: safetensors, or ``.pt/.ckpt/.pth/.bin`` through weights-only unpickling.

    Raises ``ModelFileError`` naming the file when it is missing, truncated, corrupt, holds pickled objects other
    than tensors, or holds no tensor whose key ends in a known LoRA part."""
    path = Path(path)
    tensors, _ = read_state_dict(path)
    if not any(split_key(k) for k in tensors):
        example = next(iter(tensors), "")
        raise LoraError(f"{path.name}: not a LoRA file: no key ends in a known LoRA part "
                        f"(e.g. {example!r}; expected .lora_up.weight, .lora_A.weight, .hada_w1_a, .lokr_w1, .diff...)")
    return tensors


@dataclass(frozen=True)
class LoraFormat:
    """``naming``: "kohya" (lora_unet_/lora_te*_, also LyCORIS) | "diffusers" (unet./text_encoder.*) | "comfyui"
    (diffusion_model./text_encoders.*) | "mixed" | "unknown"; ``kinds``: adapter kinds present (see patch.KIND_PARTS,
    "locon" for LoRA factors on conv kernels or with a Tucker core, "dora" when DoRA magnitudes are present — those
    modules are reported, not applied); ``peft``: lora_A/lora_B spelling."""

    naming: str
    kinds: frozenset[str]
    peft: bool = False


_NAMING = (("lora_unet_", "kohya"), ("lora_te", "kohya"), ("unet.", "diffusers"), ("text_encoder.", "diffusers"),
           ("text_encoder_2.", "diffusers"),
           ("diffusion_model.", "comfyui"), ("text_encoders.", "comfyui"))


def detect_format(state_dict: Mapping[str, torch.Tensor]) -> LoraFormat:
    namings, kinds, peft = set(), set(), False
    for key, value in state_dict.items():
        split = split_key(key)
        if split is None:
            continue
        alias, part = split
        namings.update(name for prefix, name in _NAMING if alias.startswith(prefix))
        kind = PART_SUFFIXES[part][0]
        if kind == "lora" and (part == "lora_mid.weight" or (part.startswith("lora_down") and value.ndim == 4
                                                             and value.shape[2:] != (1, 1))):
            kind = "locon"
        if kind:
            kinds.add(kind)
        peft = peft or part in ("lora_A.weight", "lora_B.weight")
    if "locon" in kinds:
        kinds.discard("lora")
    naming = namings.pop() if len(namings) == 1 else ("mixed" if namings else "unknown")
    return LoraFormat(naming, frozenset(kinds), peft)
