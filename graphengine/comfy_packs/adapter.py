"""What ComfyUI's V1 and V3 node protocols share once adapted: inputs as `(type, options)` entries, hidden values,
calling pack code with the arguments it accepts, and turning its returns into a NodeOutput."""

from __future__ import annotations

import asyncio
import inspect
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from pydantic import ConfigDict

from ..node import ExecutionBlocker, InputInfo, Node, NodeOutput
from ..spec import (ANY_TYPE, BooleanInput, ComboInput, FloatInput, InputSpec, IntInput, Output, SocketInput,
                    StringInput, WIDGET_TYPES)

SECTIONS = ("required", "optional")


class DynamicPrompt:
    """The prompt a node runs in, as ComfyUI hands it to nodes asking for the hidden DYNPROMPT input."""

    def __init__(self, prompt: Mapping[str, Any]) -> None:
        self._prompt = dict(prompt)

    def get_node(self, node_id: str) -> dict[str, Any]:
        if node_id not in self._prompt:
            raise KeyError(f"Node {node_id} not found")
        return self._prompt[node_id]

    def has_node(self, node_id: str) -> bool:
        return node_id in self._prompt

    def all_node_ids(self) -> set[str]:
        return set(self._prompt)

    def get_original_prompt(self) -> dict[str, Any]:
        return self._prompt

    def get_real_node_id(self, node_id: str) -> str:
        return node_id


def hidden_value(kind: str, ctx: Any) -> Any:
    """The value of a hidden input (PROMPT, EXTRA_PNGINFO, UNIQUE_ID, DYNPROMPT) for the running node."""
    if kind == "PROMPT":
        return ctx.prompt
    if kind == "EXTRA_PNGINFO":
        return ctx.extra_pnginfo
    if kind == "UNIQUE_ID":
        return ctx.node_id
    if kind == "DYNPROMPT":
        return DynamicPrompt(ctx.prompt)
    return None  # account tokens and the like: this engine has none


def json_ready(value: Any) -> Any:
    """INPUT_TYPES as JSON: tuples become lists, Enum members their values; anything else is left alone."""
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    return getattr(value, "value", value) if type(value).__module__ != "builtins" else value


def type_name(kind: Any) -> str:
    """A socket's type as a string: a list (a combo) is COMBO."""
    return "COMBO" if isinstance(kind, (list, tuple)) else str(kind)


_COMMON = {"tooltip": "tooltip", "lazy": "lazy", "advanced": "advanced"}


# The editor adds a "control after generate" widget to INTs that ask for it, and to these by name.
_SEED_NAMES = ("seed", "noise_seed")


def input_spec(name: str, kind: Any, options: Mapping[str, Any], optional: bool,
               live_options: Callable[[Any], list[str]] | None = None) -> InputSpec:
    """The engine's spec for one `(type, options)` entry; `live_options` re-reads a combo's list on each use."""
    common: dict[str, Any] = {k: options[o] for o, k in _COMMON.items() if options.get(o) is not None}
    common["optional"] = optional
    if isinstance(kind, (list, tuple)) or (kind == "COMBO" and "options" in options):
        static = list(kind) if isinstance(kind, (list, tuple)) else list(options.get("options") or [])
        extra = {k: True for k in ("multi_select", "image_upload") if options.get(k)}
        return ComboInput(choices=live_options or tuple(static), extra=extra, **common)
    kind = str(kind)
    if kind in WIDGET_TYPES and options.get("forceInput"):
        return SocketInput(type=kind, **common)
    if kind == "INT":
        control = bool(options.get("control_after_generate")) or name in _SEED_NAMES
        return IntInput(min=options.get("min"), max=options.get("max"), step=options.get("step"),
                        control_after_generate=control, **common)
    if kind == "FLOAT":
        return FloatInput(min=options.get("min"), max=options.get("max"), step=options.get("step", 0.01), **common)
    if kind == "STRING":
        return StringInput(**common)
    if kind == "BOOLEAN":
        return BooleanInput(**common)
    return SocketInput(type=kind or ANY_TYPE, **common)


def build_inputs(definition: Mapping[str, Any], live: Callable[[str, str], Callable[[Any], list[str]]] | None = None
                 ) -> dict[str, InputInfo]:
    """InputInfos from an INPUT_TYPES-shaped dict; `live(section, name)` gives a combo its live option source."""
    inputs: dict[str, InputInfo] = {}
    for section in SECTIONS:
        for name, entry in (definition.get(section) or {}).items():
            entry = entry if isinstance(entry, (list, tuple)) else (entry,)
            kind = entry[0] if entry else ANY_TYPE
            options = entry[1] if len(entry) > 1 and isinstance(entry[1], Mapping) else {}
            is_combo = isinstance(kind, (list, tuple)) or kind == "COMBO"
            source = live(section, name) if (live is not None and is_combo) else None
            spec = input_spec(str(name), kind, options, section == "optional", source)
            default = options.get("default")
            if default is None and isinstance(kind, (list, tuple)) and kind:
                default = kind[0]
            inputs[str(name)] = InputInfo(str(name), spec, default, required=section == "required")
    return inputs


def build_outputs(types: Any, names: Any, is_list: Any, tooltips: Any) -> tuple[Output, ...]:
    types = tuple(types or ())
    names = tuple(names or ())
    is_list = tuple(is_list or ())
    tooltips = tuple(tooltips or ())
    return tuple(Output(type_name(kind), str(names[i]) if i < len(names) else None,
                        bool(is_list[i]) if i < len(is_list) else False,
                        tooltips[i] if i < len(tooltips) else None) for i, kind in enumerate(types))


def accepted(function: Callable[..., Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """The subset of `values` that `function` takes by name (all of them when it takes **kwargs)."""
    try:
        params = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return dict(values)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(values)
    return {k: v for k, v in values.items() if k in params}


def takes(function: Callable[..., Any], name: str) -> bool:
    try:
        return name in inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False


def named_inputs(function: Callable[..., Any], inputs: Mapping[str, Any]) -> frozenset[str]:
    """The inputs a VALIDATE_INPUTS hook names (all when it takes **kwargs): their built-in checks are skipped."""
    try:
        params = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return frozenset()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return frozenset(inputs)
    return frozenset(n for n in inputs if n in params)


def settle(result: Any) -> Any:
    """Await what an `async` pack function returned: here when this thread has no event loop running (a node on
    a worker thread), else on a thread of its own (a registry built inside a running server)."""
    if not inspect.isawaitable(result):
        return result

    async def wait() -> Any:
        return await result

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(wait())
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, wait()).result()


def verdict(result: Any) -> bool | str:
    return True if result is True else str(result)


class ComfyAdapter(Node):
    """Base of the engine classes standing for ComfyUI node classes; inputs arrive as extra fields."""

    model_config = ConfigDict(arbitrary_types_allowed=True, protected_namespaces=(), extra="allow")

    COMFY_CLASS: ClassVar[type] = object
    HIDDEN: ClassVar[dict[str, str]] = {}

    def comfy_inputs(self, ctx: Any) -> dict[str, Any]:
        """The keyword arguments ComfyUI would pass: the given inputs plus the hidden ones."""
        values = dict(self.model_extra or {})
        for name, kind in self.HIDDEN.items():
            value = hidden_value(kind, ctx)
            values[name] = [value] if self.INPUT_IS_LIST else value
        return values

    def node_output(self, result: Any, ui: Any = None, expand: Any = None, services: Any = None) -> NodeOutput:
        """A NodeOutput from what the pack returned: a tuple, a list, None, or an ExecutionBlocker; `ui` a dict or
        a V3 UI object (rendered with the node layer's `services` when it saves files)."""
        count = len(self.RETURNS)
        if isinstance(result, ExecutionBlocker):
            values: tuple[Any, ...] = (result,) * count
        elif result is None:
            values = ()
        else:
            values = tuple(result)
        if not values and count:
            values = (None,) * count
        if callable(getattr(ui, "render", None)):
            ui = ui.render(services)
        elif ui is not None and not isinstance(ui, dict):
            ui = ui.as_dict() if callable(getattr(ui, "as_dict", None)) else dict(ui)
        ui = {k: list(v) if isinstance(v, tuple) else v for k, v in ui.items()} if ui else None
        return NodeOutput(values, ui, expand)
