"""Merges as weight patches: a parameter becomes ``keep·W + alpha·W_other``, where ``W_other`` is the same-named
parameter of another live model (with that model's own weight patches), read one parameter at a time while patching.

So a merged MODEL/CLIP is a handle like a LoRA'd one: it keeps no copy of either model, the cached base modules are
changed only for the duration of a run (see `nodes.lora.applied.weights_patched`) and restored bit for bit after.
The ratios may differ by block: ``rules`` are ``(name prefix, keep, alpha)``, the longest matching prefix wins
(ComfyUI's block-merge rule); UNet parameters are matched by their original LDM names (``input_blocks.4.1.…``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..handles import held_bytes, on_compute_device
from ..models.errors import ModelFileError
from ..models.ldm_layout import unet_original_names
from .applied import ACTIVE_ATTR, patches_nbytes
from .apply import ParamKey, ParamUpdate, plan_updates, updated_value

Rule = tuple[str, float, float]  # (name prefix, keep, alpha)


def rule_names(slot: str, param_names: list[str]) -> dict[str, str]:
    """Parameter name -> the name ratio rules match: the LDM name for the UNet (where the layout converts)."""
    if slot == "unet":
        with contextlib.suppress(ModelFileError):
            return unet_original_names(param_names)
    return {name: name for name in param_names}


def rule_for(name: str, rules: tuple[Rule, ...]) -> tuple[float, float]:
    best = max((r for r in rules if name.startswith(r[0])), key=lambda r: len(r[0]))
    return best[1], best[2]


def mismatched(mine: torch.nn.Module, other: torch.nn.Module) -> list[str]:
    """Parameters of ``mine`` that ``other`` lacks or has in another shape (a merge leaves them as they are)."""
    theirs = {name: p.shape for name, p in other.named_parameters()}
    return [name for name, p in mine.named_parameters() if theirs.get(name) != p.shape]


@dataclass(frozen=True, eq=False)
class AppliedMerge:
    """Another model's weights combined into the patched modules: ``other_sources`` (slot -> module or manager
    reference) with the other handle's ``other_patches`` applied to each value, ``rules`` giving keep/alpha per
    parameter (``""`` is the default rule); parameters whose names end with ``skip_suffixes`` are left alone."""

    other_sources: Mapping[str, Any]
    other_patches: tuple
    rules: tuple[Rule, ...]
    manager: Any = None
    skip_suffixes: tuple[str, ...] = ()

    @property
    def signature(self) -> tuple:
        return ("merge", id(self))

    @property
    def holds(self) -> object:
        return self

    @property
    def nbytes(self) -> int:
        return sum(held_bytes(s) for s in self.other_sources.values()) + patches_nbytes(self.other_patches)

    def _other_modules(self, modules: Mapping[str, torch.nn.Module],
                       stack: contextlib.ExitStack) -> dict[str, torch.nn.Module]:
        """The other model's live modules, on the compute device while the weights are patched."""
        others = {}
        for slot, source in self.other_sources.items():
            if slot not in modules:
                continue
            other = stack.enter_context(on_compute_device(self.manager, source))
            if other is not modules[slot] and getattr(other, ACTIVE_ATTR, None) is not None:
                raise RuntimeError("cannot merge with a model that is patched by another handle in this run")
            others[slot] = other
        return others

    def param_updates(self, modules: Mapping[str, torch.nn.Module],
                      stack: contextlib.ExitStack) -> Iterator[tuple[ParamKey, ParamUpdate]]:
        others = self._other_modules(modules, stack)
        other_plan = plan_updates(others, self.other_patches, stack)
        for slot, other in others.items():
            theirs = dict(other.named_parameters())
            mine = [(name, p) for name, p in modules[slot].named_parameters()
                    if not name.endswith(self.skip_suffixes) and name in theirs and theirs[name].shape == p.shape]
            names = rule_names(slot, [name for name, _ in modules[slot].named_parameters()])
            for name, _ in mine:
                keep, alpha = rule_for(names.get(name, name), self.rules)
                if keep == 1 and alpha == 0:
                    continue
                updates = other_plan[(slot, name)][1] if (slot, name) in other_plan else []
                yield (slot, name), ParamUpdate(keep, alpha, _other_value(theirs[name], updates))


def _other_value(param: torch.nn.Parameter, updates: list[ParamUpdate]):
    """The addend: the other parameter with its own updates, as a new float32 tensor on the patched one's device."""
    def addend(original: torch.Tensor) -> torch.Tensor:
        return updated_value(param.data, updates).to(original.device)
    return addend
