"""LoRA and LyCORIS files: reading, format detection, matching onto live diffusers/transformers modules, patching
weights in place for the duration of a call (``apply.patched_weights``), the patches carried by the MODEL/CLIP
handles (``applied``; merges of two models: ``merge``), LoRA extraction (``extract``) and the LoRA nodes (``nodes``).

Names are imported on first use, so registering the nodes does not import the model machinery (diffusers)."""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "patched_weights": "apply", "AppliedLora": "applied", "weights_patched": "applied", "AppliedMerge": "merge",
    "diff_delta": "deltas", "lokr_delta": "deltas", "loha_delta": "deltas", "lora_delta": "deltas",
    "LoraError": "files", "LoraFormat": "files", "LoraMismatchError": "files", "detect_format": "files",
    "load_lora_file": "files", "TE1": "keys", "TE2": "keys", "UNET": "keys", "module_aliases": "keys",
    "LoraMatch": "match", "family_slots": "match", "load_lora": "match", "match_lora": "match",
    "LoraPatch": "patch",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
