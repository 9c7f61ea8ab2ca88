"""Input and output specifications of a node, and how they render in ComfyUI's `/object_info`.

A node declares each input as a pydantic field annotated with one of these specs::

    width: Annotated[int, Int(min=16, max=16384, step=8)] = 512
    model: Annotated[Any, Socket("MODEL")]

Widget kinds are INT, FLOAT, STRING, BOOLEAN and COMBO; everything else is a socket that must be linked.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
ANY_TYPE = "*"

# ComfyUI's bounds: seeds are unsigned 64-bit; other unbounded INTs stay within that range too.
INT_LIMIT = 0xFFFFFFFFFFFFFFFF
FLOAT_LIMIT = 1.0e300


@dataclass(frozen=True)
class InputSpec:
    """Common options of every input."""

    type: str
    optional: bool = False
    tooltip: str | None = None
    lazy: bool = False
    force_input: bool = False
    advanced: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_widget(self) -> bool:
        return self.type in WIDGET_TYPES

    def options(self, default: Any, services: Any) -> dict[str, Any]:
        """The option dict shown in `/object_info` (second element of the input entry)."""
        opts: dict[str, Any] = {}
        if self.is_widget and default is not None:
            opts["default"] = default
        opts.update(self._own_options())
        if self.tooltip:
            opts["tooltip"] = self.tooltip
        if self.lazy:
            opts["lazy"] = True
        if self.force_input:
            opts["forceInput"] = True
        if self.advanced:
            opts["advanced"] = True
        opts.update(self.extra)
        return opts

    def _own_options(self) -> dict[str, Any]:
        return {}

    def object_info(self, default: Any, services: Any) -> list[Any]:
        opts = self.options(default, services)
        return [self.type, opts] if opts else [self.type]


@dataclass(frozen=True)
class IntInput(InputSpec):
    type: str = "INT"
    min: int | None = None
    max: int | None = None
    step: int | None = None  # sent only when declared, as ComfyUI does
    control_after_generate: bool = False
    display: str | None = None

    def _own_options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {}
        if self.min is not None:
            opts["min"] = self.min
        if self.max is not None:
            opts["max"] = self.max
        if self.step is not None:
            opts["step"] = self.step
        if self.control_after_generate:
            opts["control_after_generate"] = True
        if self.display:
            opts["display"] = self.display
        return opts


@dataclass(frozen=True)
class FloatInput(InputSpec):
    type: str = "FLOAT"
    min: float | None = None
    max: float | None = None
    step: float = 0.01
    round: float | bool | None = None
    display: str | None = None

    def _own_options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {}
        if self.min is not None:
            opts["min"] = self.min
        if self.max is not None:
            opts["max"] = self.max
        opts["step"] = self.step
        if self.round is not None:
            opts["round"] = self.round
        if self.display:
            opts["display"] = self.display
        return opts


@dataclass(frozen=True)
class StringInput(InputSpec):
    type: str = "STRING"
    multiline: bool = False
    placeholder: str | None = None
    dynamic_prompts: bool | None = None

    def _own_options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {}
        if self.multiline:
            opts["multiline"] = True
        if self.placeholder:
            opts["placeholder"] = self.placeholder
        if self.dynamic_prompts is not None:
            opts["dynamicPrompts"] = self.dynamic_prompts
        return opts


@dataclass(frozen=True)
class BooleanInput(InputSpec):
    type: str = "BOOLEAN"
    label_on: str | None = None
    label_off: str | None = None

    def _own_options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {}
        if self.label_on:
            opts["label_on"] = self.label_on
        if self.label_off:
            opts["label_off"] = self.label_off
        return opts


OptionSource = Sequence[str] | Callable[[Any], Sequence[str]]


@dataclass(frozen=True)
class ComboInput(InputSpec):
    """A choice among strings: a static list, or a function of the node layer's services (e.g. a folder listing)."""

    type: str = "COMBO"
    choices: OptionSource = ()

    def option_list(self, services: Any) -> list[str]:
        source = self.choices
        return list(source(services) if callable(source) else source)

    def object_info(self, default: Any, services: Any) -> list[Any]:
        # ComfyUI's V1 shape: the option list itself stands where the type name would be.
        opts = self.options(default, services)
        options = self.option_list(services)
        return [options, opts] if opts else [options]


@dataclass(frozen=True)
class SocketInput(InputSpec):
    """A typed link from another node's output (MODEL, LATENT, IMAGE, a custom type, or `*`).

    A socket of a widget type (e.g. `Socket("INT")`) is ComfyUI's `forceInput`: linked in the editor, though API
    prompts may still give it a constant."""

    @property
    def is_widget(self) -> bool:
        return False

    def _own_options(self) -> dict[str, Any]:
        return {"forceInput": True} if self.type in WIDGET_TYPES and not self.force_input else {}


def Int(min: int | None = None, max: int | None = None, step: int | None = None, *,
        control_after_generate: bool = False, **common: Any) -> IntInput:
    return IntInput(min=min, max=max, step=step, control_after_generate=control_after_generate, **common)


def Float(min: float | None = None, max: float | None = None, step: float = 0.01, *,
          round: float | bool | None = None, **common: Any) -> FloatInput:
    return FloatInput(min=min, max=max, step=step, round=round, **common)


def String(*, multiline: bool = False, placeholder: str | None = None,
           dynamic_prompts: bool | None = None, **common: Any) -> StringInput:
    return StringInput(multiline=multiline, placeholder=placeholder, dynamic_prompts=dynamic_prompts, **common)


def Boolean(*, label_on: str | None = None, label_off: str | None = None, **common: Any) -> BooleanInput:
    return BooleanInput(label_on=label_on, label_off=label_off, **common)


def Combo(choices: OptionSource, **common: Any) -> ComboInput:
    return ComboInput(choices=choices, **common)


def Socket(type: str, **common: Any) -> SocketInput:
    return SocketInput(type=type, **common)


@dataclass(frozen=True)
class Output:
    """One output slot: its type, display name, whether each call yields a list, and a tooltip."""

    type: str
    name: str | None = None
    is_list: bool = False
    tooltip: str | None = None

    @property
    def display_name(self) -> str:
        return self.name or self.type


def types_match(output_type: str, input_type: str) -> bool:
    """ComfyUI's link type rule: `*` matches anything; comma-separated unions match on any overlap."""
    if output_type == ANY_TYPE or input_type == ANY_TYPE:
        return True
    if output_type == input_type:
        return True
    out_set = {t.strip() for t in output_type.split(",")}
    in_set = {t.strip() for t in input_type.split(",")}
    return bool(out_set & in_set)
