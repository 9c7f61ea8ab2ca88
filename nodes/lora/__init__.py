"""LoRA and LyCORIS files: reading, format detection, matching onto live diffusers/transformers modules, and
patching weights in place for the duration of a call (see ``apply.patched_weights``)."""

from .apply import patched_weights
from .deltas import diff_delta, lokr_delta, loha_delta, lora_delta
from .files import LoraError, LoraFormat, LoraMismatchError, detect_format, load_lora_file
from .keys import TE1, TE2, UNET, module_aliases
from .match import LoraMatch, family_slots, load_lora, match_lora
from .patch import LoraPatch

__all__ = [
    "TE1", "TE2", "UNET", "LoraError", "LoraFormat", "LoraMatch", "LoraMismatchError", "LoraPatch", "detect_format",
    "diff_delta", "family_slots", "load_lora", "load_lora_file", "lokr_delta", "loha_delta", "lora_delta",
    "match_lora", "module_aliases", "patched_weights",
]
