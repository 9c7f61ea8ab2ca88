"""Per-instance forward hooks held for a block: everything registered is removed on exit (also on errors)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch

InputMap = Callable[[torch.Tensor], torch.Tensor]


class HookSet:
    """Hooks registered on submodules of one module instance, removed together."""

    def __init__(self) -> None:
        self._handles: list[Any] = []

    def before(self, module: torch.nn.Module, fn: Callable[[torch.nn.Module, tuple, dict], Any]) -> None:
        """fn(module, args, kwargs) -> None or (args, kwargs), run before module.forward."""
        self._handles.append(module.register_forward_pre_hook(fn, with_kwargs=True))

    def after(self, module: torch.nn.Module, fn: Callable[[torch.nn.Module, tuple, Any], Any]) -> None:
        """fn(module, args, output) -> None or a replacement output."""
        self._handles.append(module.register_forward_hook(fn))

    def after_call(self, module: torch.nn.Module, fn: Callable[[torch.nn.Module, tuple, dict, Any], Any]) -> None:
        """fn(module, args, kwargs, output) -> None or a replacement output (sees the keyword arguments too)."""
        self._handles.append(module.register_forward_hook(fn, with_kwargs=True))

    def map_input(self, module: torch.nn.Module, fn: InputMap) -> None:
        """Replace the module's hidden-state input (keyword `hidden_states`, else the first argument) by fn(x)."""
        self.before(module, lambda _m, args, kwargs: replaced_input(args, kwargs, fn))

    def map_output(self, module: torch.nn.Module, fn: InputMap) -> None:
        """Replace the module's output (or the first item of a tuple output) by fn(output)."""
        self.after(module, lambda _m, _args, output: replaced_output(output, fn))

    def remove(self) -> None:
        while self._handles:
            self._handles.pop().remove()


def replaced_input(args: tuple, kwargs: dict, fn: InputMap) -> tuple[tuple, dict] | None:
    if "hidden_states" in kwargs:
        return args, {**kwargs, "hidden_states": fn(kwargs["hidden_states"])}
    if args:
        return (fn(args[0]), *args[1:]), kwargs
    return None


def replaced_output(output: Any, fn: InputMap) -> Any:
    if isinstance(output, tuple):
        return (fn(output[0]), *output[1:])
    return fn(output)


@contextlib.contextmanager
def hook_set() -> Iterator[HookSet]:
    """A HookSet whose hooks are all removed when the block ends."""
    hooks = HookSet()
    try:
        yield hooks
    finally:
        hooks.remove()
