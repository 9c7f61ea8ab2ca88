"""Patching live weights in place for the duration of a call, and restoring their exact bits afterwards.

A weight patch says, per parameter, how to update it: ``W <- keep·W + alpha·addend(W_original)`` (a LoRA: keep 1,
``alpha`` its strength, the addend its ΔW; a merge: keep/alpha the merge ratios, the addend the other model's
same-named parameter). Updates of one parameter run in the patches' order. Only the parameters a patch touches are
backed up (by default to CPU memory, so a GPU-resident model costs no extra VRAM); addends are computed when
patching (float32, on the parameter's device, one parameter at a time) and not kept. Cost while patched: one copy
of the patched parameters in their own dtype, plus the transient float32 buffers of the parameter being patched.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

import torch

from .patch import LoraPatch

PatchSet = Mapping[str, Mapping[str, LoraPatch]]  # slot -> live module name -> patch
ParamKey = tuple[str, str]  # (slot, parameter name in that slot's module)


class ParamUpdate(NamedTuple):
    """``W <- keep·W + alpha·addend(original W)``; the addend must not alias the parameter."""

    keep: float
    alpha: float
    addend: Callable[[torch.Tensor], torch.Tensor]


class WeightPatch(Protocol):
    def param_updates(self, modules: Mapping[str, torch.nn.Module],
                      stack: contextlib.ExitStack) -> Iterable[tuple[ParamKey, ParamUpdate]]:
        """The updates this patch makes to ``modules`` (slot -> live module); contexts entered on ``stack`` (e.g.
        placing another model on the compute device) last while the weights are being patched."""


class LoraUpdates:
    """A matched LoRA (``LoraMatch.patches``) at one strength, as a weight patch."""

    def __init__(self, patches: PatchSet, strength: float) -> None:
        self.patches, self.strength = patches, strength

    def param_updates(self, modules, stack=None) -> Iterator[tuple[ParamKey, ParamUpdate]]:
        if self.strength == 0:
            return
        for slot, by_module in self.patches.items():
            if slot not in modules:
                continue
            for module_name, patch in by_module.items():
                if patch.patches_weight:
                    yield (slot, f"{module_name}.weight"), ParamUpdate(1.0, self.strength, patch.weight_delta)
                if "diff_b" in patch.tensors:
                    yield (slot, f"{module_name}.bias"), ParamUpdate(1.0, self.strength, patch.bias_delta)


def plan_updates(modules: Mapping[str, torch.nn.Module], patches: Sequence[WeightPatch],
                 stack: contextlib.ExitStack) -> dict[ParamKey, tuple[torch.nn.Parameter, list[ParamUpdate]]]:
    """(parameter, its updates in patch order) by (slot, name), in a stable order."""
    plan: dict[ParamKey, tuple[torch.nn.Parameter, list[ParamUpdate]]] = {}
    for patch in patches:
        for (slot, name), update in patch.param_updates(modules, stack):
            if (slot, name) not in plan:
                plan[(slot, name)] = (modules[slot].get_parameter(name), [])
            plan[(slot, name)][1].append(update)
    return plan


def updated_value(original: torch.Tensor, updates: Sequence[ParamUpdate], *, in_place: bool = False) -> torch.Tensor:
    """The parameter after its updates, in float32 (summed in float32; in place on ``original`` when allowed and
    it is float32: no extra copy)."""
    addends = [(u, u.addend(original) if u.alpha else None) for u in updates]  # before ``total`` may alias it
    if in_place and original.dtype == torch.float32:
        total = original
    else:
        total = original.to(torch.float32, copy=True)
    for update, addend in addends:
        if update.keep != 1:
            total.mul_(update.keep)
        if addend is not None:
            total.add_(addend.to(total.device), alpha=update.alpha)
    return total


def _as_patch(patch: Any) -> WeightPatch:
    return LoraUpdates(*patch) if isinstance(patch, tuple) else patch


@contextlib.contextmanager
def patched_weights(modules: Mapping[str, torch.nn.Module], patch_sets: Sequence[WeightPatch | tuple[PatchSet, float]],
                    backup_device: torch.device | str | None = "cpu") -> Iterator[None]:
    """Within the block, every patched parameter holds its updated value (stacked LoRAs add up, merges combine
    with the weight so far); on exit, also on exceptions and KeyboardInterrupt, the original tensors are copied
    back bit for bit.

    ``modules``: slot -> live module ("unet", "te1", "te2"); ``patch_sets``: weight patches, or
    ``(LoraMatch.patches, strength)`` pairs, in application order. Strength 0 leaves a LoRA out entirely.
    ``backup_device=None`` keeps the backups on each parameter's own device."""
    backups: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
    try:
        with torch.no_grad(), contextlib.ExitStack() as sources:
            for param, updates in plan_updates(modules, [_as_patch(p) for p in patch_sets], sources).values():
                backups.append((param, param.data.to(backup_device or param.device, copy=True)))
                total = updated_value(param.data, updates, in_place=True)
                if total is not param.data:
                    param.data.copy_(total)
        yield
    finally:
        with torch.no_grad():
            for param, backup in reversed(backups):
                param.data.copy_(backup)
