"""Matching a LoRA state dict against live modules: normalized patch records, unmatched keys, family mismatches."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from nodes.models.families import FAMILIES, Family

from .files import LoraError, LoraFormat, LoraMismatchError, detect_format, load_lora_file
from .keys import PART_SUFFIXES, TE1, TE2, UNET, module_aliases, slot_of, split_key
from .patch import KIND_PARTS, LoraPatch

# Cross-attention (context) widths of the real families, to name the family a mismatching LoRA was made for.
_FAMILY_BY_CONTEXT = {768: "SD1.x", 1024: "SD2.x", 2048: "SDXL", 1280: "the SDXL refiner"}

Patches = dict[str, dict[str, LoraPatch]]  # slot -> live module name -> patch


@dataclass
class LoraMatch:
    """What a LoRA file does to a model: ``patches[slot][module]``; ``unmatched``: keys that fit no module (to be
    reported by name) and ``why`` each was not used; ``skipped``: keys for slots not given (e.g. text encoder keys
    in a model-only load)."""

    source: str
    format: LoraFormat
    patches: Patches = field(default_factory=dict)
    unmatched: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    why: dict[str, str] = field(default_factory=dict)

    def _unmatched(self, keys: list[str], reason: str) -> None:
        self.unmatched.extend(keys)
        self.why.update(dict.fromkeys(keys, reason))

    @property
    def patch_count(self) -> int:
        return sum(len(p) for p in self.patches.values())

    def keys_used(self) -> list[str]:
        """The file's keys that went into patches."""
        return sorted(k for by_module in self.patches.values() for p in by_module.values() for k in p.keys)


def family_slots(family: Family | str | None) -> tuple[str, ...] | None:
    """Text-encoder slots a family has (None when not a known family, e.g. custom)."""
    if isinstance(family, str):
        family = FAMILIES.get(family) or next((f for f in FAMILIES.values() if f.base == family), None)
    if family is None:
        return None
    return tuple(TE2 if spec.kind == "open_clip_g" else TE1 for spec in family.text_encoders)


def _family_name(family: Family | str | None) -> str:
    return family.name if isinstance(family, Family) else (family or "this")


def _group(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict[str, dict[str, tuple[str, torch.Tensor]]], list]:
    groups: dict[str, dict[str, tuple[str, torch.Tensor]]] = defaultdict(dict)
    unparsed = []
    for key, value in state_dict.items():
        split = split_key(key)
        if split is None:
            unparsed.append(key)
        else:
            groups[split[0]][split[1]] = (key, value)
    return groups, unparsed


def build_patch(parts: Mapping[str, tuple[str, torch.Tensor]]) -> LoraPatch | str:
    """A patch record from one module's parts (suffix -> (key, tensor)), or why it cannot be one."""
    kinds = {PART_SUFFIXES[p][0] for p in parts} - {None}
    if "dora" in kinds:
        return "DoRA (dora_scale) is not supported"
    if len(kinds) > 1:
        return f"mixes adapter kinds {sorted(kinds)}"
    kind = kinds.pop() if kinds else "diff"
    tensors = {PART_SUFFIXES[p][1]: t for p, (_, t) in parts.items() if p != "alpha"}
    alpha = float(parts["alpha"][1].float().reshape(-1)[0]) if "alpha" in parts else None
    patch = LoraPatch(kind, tensors, alpha, tuple(sorted(k for k, _ in parts.values())))
    if kind not in KIND_PARTS:
        return f"unsupported kind {kind}"
    missing = patch.missing_parts()
    return f"incomplete {kind} adapter (missing {', '.join(missing)})" if missing else patch


def _shape_problem(patch: LoraPatch, module: torch.nn.Module) -> str | None:
    """None when the patch fits the module's parameters (checked on meta tensors: no arithmetic)."""
    weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
    try:
        if patch.patches_weight:
            if not isinstance(weight, torch.Tensor):
                return "module has no weight"
            patch.weight_delta(torch.empty(weight.shape, device="meta"))
        if "diff_b" in patch.tensors:
            if not isinstance(bias, torch.Tensor):
                return "module has no bias"
            patch.bias_delta(torch.empty(bias.shape, device="meta"))
    except (ValueError, RuntimeError) as e:
        return str(e).splitlines()[0]
    return None


def _guess_family(groups: Mapping[str, Mapping[str, tuple[str, torch.Tensor]]]) -> str:
    """The family a LoRA was made for, from a second text encoder's keys or the cross-attention key width."""
    if any(slot_of(alias) == TE2 for alias in groups):
        return "SDXL"
    for alias, parts in groups.items():
        if alias.replace("_", ".").endswith("attn2.to.k") and isinstance(patch := build_patch(parts), LoraPatch):
            if width := _context_width(patch):
                return _FAMILY_BY_CONTEXT.get(width, f"a model with cross-attention width {width}")
    return "another model family"


def _context_width(patch: LoraPatch) -> int | None:
    t = patch.tensors
    factor = t.get("down", t.get("diff", t.get("w1b")))
    return int(factor.shape[1]) if factor is not None and factor.ndim >= 2 else None


def match_lora(state_dict: Mapping[str, torch.Tensor], targets: Mapping[str, torch.nn.Module],
               family: Family | str | None = None, source: str | Path = "LoRA") -> LoraMatch:
    """Patch records for ``targets`` (slot -> live module: "unet", "te1", "te2") from a LoRA state dict.

    Raises ``LoraMismatchError`` (naming ``source`` and both families) when the LoRA has keys for a text encoder
    the family lacks or modules whose shapes differ, and ``LoraError`` when no key is recognised at all."""
    name = Path(source).name
    groups, unparsed = _group(state_dict)
    aliases = module_aliases(targets)
    slots = family_slots(family)
    result = LoraMatch(name, detect_format(state_dict))
    result._unmatched(unparsed, "not a known LoRA part")
    foreign, misfits = [], []
    for alias, parts in groups.items():
        keys = sorted(k for k, _ in parts.values())
        slot = slot_of(alias)
        if slot is not None and slot not in targets:
            if slots is not None and slot != UNET and slot not in slots:
                foreign.extend(keys)
            else:
                result.skipped.extend(keys)
            continue
        if alias not in aliases:
            result._unmatched(keys, f"no module {alias!r} in this model")
            continue
        slot, module_name = aliases[alias]
        patch = build_patch(parts)
        if isinstance(patch, str):
            result._unmatched(keys, patch)
            continue
        problem = _shape_problem(patch, targets[slot].get_submodule(module_name))
        if problem:
            misfits.append(f"{slot} {module_name}: {problem}")
            continue
        result.patches.setdefault(slot, {})[module_name] = patch
    if foreign or misfits:
        made_for = _guess_family(groups)
        family_name = _family_name(family)
        why = (f"it has keys for a text encoder {family_name} models lack (e.g. {foreign[0]})" if foreign else
               f"{len(misfits)} module(s) have other shapes, e.g. {misfits[0]}")
        raise LoraMismatchError(f"{name}: LoRA does not fit this {family_name} model; it looks made for "
                                f"{made_for}: {why}")
    if not result.patches and not result.skipped:
        example = result.unmatched[0] if result.unmatched else "(empty file)"
        raise LoraError(f"{name}: no LoRA key matches this model (e.g. {example!r})")
    result.unmatched.sort()
    result.skipped.sort()
    return result


def load_lora(path: str | Path, targets: Mapping[str, torch.nn.Module],
              family: Family | str | None = None) -> LoraMatch:
    """``load_lora_file`` + ``match_lora``: every error names the file."""
    try:
        return match_lora(load_lora_file(path), targets, family, source=path)
    except LoraError:
        raise
    except (ValueError, RuntimeError, KeyError) as e:
        raise LoraError(f"{Path(path).name}: cannot read LoRA: {e}") from e
