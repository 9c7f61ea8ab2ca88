"""Weight patches as data on the MODEL/CLIP handles, and the one place they are applied to live modules.

A handle carries an ordered tuple of weight patches: `AppliedLora` (a matched file plus a strength) and
`nodes.lora.merge.AppliedMerge` (another model's weights, combined with ratios). The shared, cached base module
is never changed outside `weights_patched`: the patches are added when a run starts (sampling, text encoding) and
the exact original bits are restored when it ends, so the base handle and every patched handle give their own
results on the same warm cache, in any order."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .apply import LoraUpdates, patched_weights

if TYPE_CHECKING:
    from .match import LoraMatch

# Set on a module instance while patches are applied to it: the signature of what is applied.
ACTIVE_ATTR = "_graphengine_weight_patches"


@dataclass(frozen=True, eq=False)
class AppliedLora:
    """One LoRA file, matched onto a model's modules, at one strength."""

    match: LoraMatch
    strength: float

    @property
    def nbytes(self) -> int:
        return sum(t.untyped_storage().nbytes() for by_module in self.match.patches.values()
                   for patch in by_module.values() for t in patch.tensors.values())

    @property
    def signature(self) -> tuple:
        return ("lora", id(self.match), self.strength)

    @property
    def holds(self) -> object:
        """What the patch keeps alive (shared by patches of the same file)."""
        return self.match

    def param_updates(self, modules, stack):
        return LoraUpdates(self.match.patches, self.strength).param_updates(modules, stack)


WeightPatches = tuple  # of AppliedLora / AppliedMerge


def patches_nbytes(patches: WeightPatches) -> int:
    """Bytes the patches keep alive (files shared between handles are counted by each)."""
    return sum(p.nbytes for p in {id(p.holds): p for p in patches}.values())


def _signature(patches: WeightPatches) -> tuple:
    return tuple(p.signature for p in patches)


@contextlib.contextmanager
def weights_patched(modules: Mapping[str, torch.nn.Module], patches: WeightPatches) -> Iterator[None]:
    """Within the block the live `modules` (slot -> module: "unet", "te1", "te2") hold their weights plus the
    patches; nested use with the same patches is free. A module already patched by another handle is an error
    (it would give that handle's results)."""
    signature = _signature(patches)
    active = [getattr(m, ACTIVE_ATTR, None) for m in modules.values()]
    if all(a == signature for a in active if a is not None) and any(a is not None for a in active):
        yield  # an enclosing call (the sampler's whole run) applied these patches
        return
    if any(a is not None for a in active):
        raise RuntimeError("a model is already patched by another MODEL/CLIP handle in this run")
    if not patches:
        yield
        return
    with patched_weights(modules, patches):
        for module in modules.values():
            setattr(module, ACTIVE_ATTR, signature)
        try:
            yield
        finally:
            for module in modules.values():
                with contextlib.suppress(AttributeError):
                    delattr(module, ACTIVE_ATTR)


MODULE_ATTR = "_graphengine_module_patches"


@contextlib.contextmanager
def module_patches_applied(module: torch.nn.Module, patches: tuple) -> Iterator[None]:
    """Each patch's `applied(module)` context for the block, in order (undone in reverse); nested use with the same
    patches is free, a module already carrying other module patches is an error."""
    signature = tuple(id(p) for p in patches)
    active = getattr(module, MODULE_ATTR, None)
    if active is not None:
        if active != signature:
            raise RuntimeError("a model is already patched by another MODEL handle in this run")
        yield
        return
    if not patches:
        yield
        return
    with contextlib.ExitStack() as stack:
        setattr(module, MODULE_ATTR, signature)
        stack.callback(lambda: delattr(module, MODULE_ATTR))
        for patch in patches:
            stack.enter_context(patch.applied(module))
        yield
