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


def attention_input(args: tuple, kwargs: dict) -> torch.Tensor | None:
    """The [B, N, C] hidden states an attention module is called with, when it is called with its own tokens only
    (no context: self-attention not already redirected by another patch)."""
    if kwargs.get("encoder_hidden_states") is not None or len(args) > 1:
        return None
    x = kwargs.get("hidden_states", args[0] if args else None)
    return x if isinstance(x, torch.Tensor) and x.ndim == 3 else None


def attention_call(args: tuple, kwargs: dict, queries: torch.Tensor, context: torch.Tensor) -> tuple[tuple, dict]:
    """The (args, kwargs) of an attention call with `queries` as its hidden states and keys/values from `context`."""
    return (), {**kwargs, "hidden_states": queries, "encoder_hidden_states": context}


def around_self_attention(hooks: HookSet, unet: torch.nn.Module,
                          enter: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, Any] | None],
                          leave: Callable[[torch.Tensor, Any], torch.Tensor]) -> None:
    """On every self-attention (attn1) of `unet`: `enter(x)` gives (queries, keys/values input, state) for the
    call, or None to leave it as it is; `leave(output, state)` gives the output the block sees."""
    pending: dict[int, Any] = {}

    def before(module, args, kwargs):
        x = attention_input(args, kwargs)
        entered = None if x is None else enter(x)
        if entered is None:
            return None
        queries, context, pending[id(module)] = entered
        return attention_call(args, kwargs, queries, context)

    def after(module, _args, output):
        return leave(output, pending.pop(id(module))) if id(module) in pending else None

    for name, module in unet.named_modules():
        if name.endswith(".attn1"):
            hooks.before(module, before)
            hooks.after(module, after)


def track_sample_size(hooks: HookSet, unet: torch.nn.Module) -> Callable[[], tuple[int, int]]:
    """A function giving the (height, width) of the latent the UNet was last called with."""
    size = [(0, 0)]

    def start(_m, args, kwargs):
        sample = kwargs.get("sample", args[0] if args else None)
        size[0] = (int(sample.shape[-2]), int(sample.shape[-1]))

    hooks.before(unet, start)
    return lambda: size[0]
