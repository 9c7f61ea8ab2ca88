"""Patching live weights in place for the duration of a call, and restoring their exact bits afterwards.

Only the parameters a patch touches are backed up (by default to CPU memory, so a GPU-resident model costs no
extra VRAM); deltas are computed when patching (float32, on the parameter's device, one parameter at a time) and
not kept. Cost while patched: one copy of the patched parameters in their own dtype, plus the transient float32
buffers of the parameter being patched.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence

import torch

from .patch import LoraPatch

PatchSet = Mapping[str, Mapping[str, LoraPatch]]  # slot -> live module name -> patch


def _planned(modules: Mapping[str, torch.nn.Module], patch_sets: Sequence[tuple[PatchSet, float]]):
    """(parameter, [(patch, strength, is_bias)]) in a stable order, for non-zero strengths only."""
    plan: dict[int, tuple[torch.nn.Parameter, list]] = {}
    for patches, strength in patch_sets:
        if strength == 0:
            continue
        for slot, by_module in patches.items():
            if slot not in modules:
                continue
            for module_name, patch in by_module.items():
                module = modules[slot].get_submodule(module_name)
                if patch.patches_weight:
                    plan.setdefault(id(module.weight), (module.weight, []))[1].append((patch, strength, False))
                if "diff_b" in patch.tensors:
                    plan.setdefault(id(module.bias), (module.bias, []))[1].append((patch, strength, True))
    return list(plan.values())


def _add_deltas(param: torch.Tensor, uses: list[tuple[LoraPatch, float, bool]]) -> None:
    """param += Σ strength·ΔW, summed in float32 (in place when the parameter is float32: no extra copy)."""
    original = param.data
    total = original if original.dtype == torch.float32 else original.to(torch.float32)
    deltas = [(patch.bias_delta(original) if is_bias else patch.weight_delta(original), strength)
              for patch, strength, is_bias in uses]  # all computed before ``total`` may alias the parameter
    for delta, strength in deltas:
        total.add_(delta, alpha=strength)
    if total is not original:
        original.copy_(total)


@contextlib.contextmanager
def patched_weights(modules: Mapping[str, torch.nn.Module], patch_sets: Sequence[tuple[PatchSet, float]],
                    backup_device: torch.device | str | None = "cpu") -> Iterator[None]:
    """Within the block, every patched parameter holds W + Σ strength·ΔW (stacked LoRAs add up); on exit, also on
    exceptions and KeyboardInterrupt, the original tensors are copied back bit for bit.

    ``modules``: slot -> live module ("unet", "te1", "te2"); ``patch_sets``: ``(LoraMatch.patches, strength)``
    in application order. Strength 0 leaves a LoRA out entirely. ``backup_device=None`` keeps the backups on
    each parameter's own device."""
    backups: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
    try:
        with torch.no_grad():
            for param, uses in _planned(modules, patch_sets):
                backups.append((param, param.data.to(backup_device or param.device, copy=True)))
                _add_deltas(param, uses)
        yield
    finally:
        with torch.no_grad():
            for param, backup in reversed(backups):
                param.data.copy_(backup)
