"""Build API-format graphs from Python: node factories generated from a registry's schemas.

    g = Graph(registry)
    model, clip, vae = g.CheckpointLoaderSimple(ckpt_name="graphengine-demo.safetensors")
    latent = g.EmptyLatentImage(width=64, height=64)
    sampled = g.KSampler(model=model, positive=g.CLIPTextEncode(text="a red circle", clip=clip),
                         negative=g.CLIPTextEncode(text="", clip=clip), latent_image=latent,
                         sampler_name="euler", scheduler="normal")
    g.SaveImage(images=g.VAEDecode(samples=sampled, vae=vae))
    g.to_api()        # {"1": {"class_type": "CheckpointLoaderSimple", …}, …}

Inputs are checked when a node is added (names, required inputs, link types, constants with the validator's
coercion and bounds), so a mistake fails at the line that makes it. Widget inputs left out take the schema default.
File-list combos (checkpoint names, input images) are checked only with `Graph(..., check_files=True)`: a graph is
often built on one machine and run on another."""

from __future__ import annotations

import difflib
import inspect
import json
import os
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import import_module
from importlib.metadata import entry_points
from typing import Any, Literal

from .executor import ExecutionResult, Executor
from .node import InputInfo, NodeSchema
from .registry import NodeRegistry
from .spec import ComboInput, types_match
from .validation import InputError, coerce_constant

TEMPLATE_ENTRY_POINT_GROUP = "graphengine.templates"
TEMPLATES_ENV = "GRAPHENGINE_TEMPLATES"
_WIDGET_ANNOTATIONS = {"INT": int, "FLOAT": float, "STRING": str, "BOOLEAN": bool}


@dataclass(frozen=True)
class OutputRef:
    """One output slot of a node in a graph; pass it as an input of another node to link them."""

    graph: Graph
    node_id: str
    slot: int
    type: str
    name: str

    def link(self) -> list[Any]:
        return [self.node_id, self.slot]

    def __repr__(self) -> str:
        return f"<{self.type} output {self.slot} ({self.name}) of node {self.node_id}>"


class NodeHandle:
    """A node added to a graph. Unpack it (`model, clip, vae = …`), index it (`h[0]`), or name an output (`h.LATENT`,
    `h.positive`). A node with one output may itself be passed as an input."""

    def __init__(self, graph: Graph, node_id: str, schema: NodeSchema) -> None:
        self.graph = graph
        self.id = node_id
        self.schema = schema
        self.outputs = tuple(OutputRef(graph, node_id, slot, out.type, out.display_name)
                             for slot, out in enumerate(schema.outputs))

    @property
    def class_type(self) -> str:
        return self.schema.name

    def __iter__(self) -> Iterator[OutputRef]:
        return iter(self.outputs)

    def __len__(self) -> int:
        return len(self.outputs)

    def __getitem__(self, key: int | str) -> OutputRef:
        if isinstance(key, str):
            return self.output(key)
        try:
            return self.outputs[key]
        except IndexError:
            raise IndexError(f"{self._label()} has {len(self.outputs)} outputs, no output {key}") from None

    def output(self, name: str) -> OutputRef:
        """The output with this display name, else the only output of this type, else a case-insensitive name."""
        for out in self.outputs:
            if out.name == name:
                return out
        by_type = [out for out in self.outputs if out.type == name]
        if len(by_type) == 1:
            return by_type[0]
        folded = [out for out in self.outputs if out.name.lower() == name.lower()]
        if len(folded) == 1:
            return folded[0]
        names = ", ".join(o.name for o in self.outputs) or "none"
        raise AttributeError(f"{self._label()} has no output named {name!r} (outputs: {names})")

    def __getattr__(self, name: str) -> OutputRef:
        if name.startswith("__"):
            raise AttributeError(name)
        return self.output(name)

    def _label(self) -> str:
        return f"{self.class_type} (node {self.id})"

    def __repr__(self) -> str:
        return f"<node {self.id}: {self.class_type} -> ({', '.join(o.type for o in self.outputs)})>"


def _annotation(info: InputInfo) -> Any:
    spec = info.spec
    if isinstance(spec, ComboInput):
        return Literal[tuple(spec.choices)] if not callable(spec.choices) and spec.choices else str
    if spec.is_widget:
        return _WIDGET_ANNOTATIONS.get(spec.type, Any)
    return f"{spec.type} output"


class NodeFactory:
    """Calling it adds one node of `class_type` to the graph; its signature and docstring come from the schema."""

    def __init__(self, graph: Graph, schema: NodeSchema) -> None:
        self.graph = graph
        self.schema = schema
        self.__name__ = self.__qualname__ = schema.name
        params = []
        for name, info in schema.inputs.items():
            default = info.default if (info.default is not None and info.spec.is_widget) or not info.required \
                else inspect.Parameter.empty
            params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                            annotation=_annotation(info)))
        returns = ", ".join(o.display_name for o in schema.outputs)
        self.__signature__ = inspect.Signature(params, return_annotation=f"NodeHandle[{returns}]")
        self.__doc__ = _describe(schema)

    def __call__(self, *, _title: str | None = None, _id: str | None = None, **inputs: Any) -> NodeHandle:
        return self.graph.add(self.schema.name, inputs, title=_title, node_id=_id)

    def __repr__(self) -> str:
        return f"<node factory {self.schema.name}{self.__signature__}>"


def _describe(schema: NodeSchema) -> str:
    lines = [schema.description or schema.display_name, "", "Inputs:"]
    for name, info in schema.inputs.items():
        extra = "" if info.required else " (optional)"
        default = f" = {info.default!r}" if info.default is not None and info.spec.is_widget else ""
        lines.append(f"  {name}: {info.spec.type}{default}{extra}")
    lines.append("Outputs: " + (", ".join(f"{o.display_name} ({o.type})" for o in schema.outputs) or "none"))
    return "\n".join(lines)


@dataclass
class _NodeEntry:
    class_type: str
    inputs: dict[str, Any]  # constants (coerced) or OutputRef
    title: str


class Graph:
    """An API-format graph under construction. Node factories are attributes named by class_type (`g.KSampler`),
    or `g["Some Node"]` for names that are not identifiers."""

    def __init__(self, registry: NodeRegistry, *, check_files: bool = False) -> None:
        self.registry = registry
        self.check_files = check_files
        self._nodes: dict[str, _NodeEntry] = {}
        self._counter = 0

    # -- factories ------------------------------------------------------------------------------------------------

    def factory(self, class_type: str) -> NodeFactory:
        schema = self.registry.get(class_type)
        if schema is None:
            close = difflib.get_close_matches(class_type, self.registry.names(), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise AttributeError(f"no node type {class_type!r} in the registry{hint}")
        return NodeFactory(self, schema)

    def __getitem__(self, class_type: str) -> NodeFactory:
        return self.factory(class_type)

    def __getattr__(self, name: str) -> NodeFactory:
        if name.startswith("_"):
            raise AttributeError(name)
        return self.factory(name)

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | {n for n in self.registry.names() if n.isidentifier()})

    def __len__(self) -> int:
        return len(self._nodes)

    # -- building -------------------------------------------------------------------------------------------------

    def add(self, class_type: str, inputs: dict[str, Any], *, title: str | None = None,
            node_id: str | None = None) -> NodeHandle:
        """Add a node (what the factories call). Raises TypeError / ValueError naming the node and input."""
        schema = self.factory(class_type).schema
        node_id = self._new_id(node_id)
        label = f"{class_type} (node {node_id})"
        unknown = [name for name in inputs if name not in schema.inputs]
        if unknown:
            raise TypeError(f"{label}: unknown input {_with_hint(unknown[0], list(schema.inputs))}")
        checked: dict[str, Any] = {}
        for name, info in schema.inputs.items():
            if name in inputs:
                checked[name] = self._check_input(label, schema, info, inputs[name])
            elif info.required and info.spec.is_widget and info.default is not None:
                checked[name] = info.default
            elif info.required:
                raise TypeError(f"{label}: missing required input '{name}' ({info.spec.type})")
        self._nodes[node_id] = _NodeEntry(class_type, checked, title or schema.display_name)
        if node_id.isdigit():
            self._counter = max(self._counter, int(node_id))
        return NodeHandle(self, node_id, schema)

    def _new_id(self, wanted: str | None) -> str:
        if wanted is not None:
            if not isinstance(wanted, str) or not wanted:
                raise ValueError(f"node ids are non-empty strings, got {wanted!r}")
            if wanted in self._nodes:
                raise ValueError(f"node id {wanted!r} is already used")
            return wanted
        number = self._counter + 1
        while str(number) in self._nodes:
            number += 1
        return str(number)

    def _check_input(self, label: str, schema: NodeSchema, info: InputInfo, value: Any) -> Any:
        if isinstance(value, NodeHandle):
            value = self._pick_output(label, info, value)
        if isinstance(value, OutputRef):
            if value.graph is not self:
                raise ValueError(f"{label}: input '{info.name}' links to a node of another graph")
            if not types_match(value.type, info.spec.type):
                raise TypeError(f"{label}: input '{info.name}' takes {info.spec.type}, got {value!r}")
            return value
        computed_combo = isinstance(info.spec, ComboInput) and callable(info.spec.choices)
        check_values = (not computed_combo or self.check_files) and info.name not in schema.custom_validated
        try:
            return coerce_constant(info, value, self.registry.services, check_values=check_values)
        except InputError as exc:
            error = exc.error
            kind = TypeError if error["type"] == "invalid_input_type" else ValueError
            raise kind(f"{label}: input '{info.name}': {error['message']} ({error['details']})") from None

    @staticmethod
    def _pick_output(label: str, info: InputInfo, handle: NodeHandle) -> OutputRef:
        if len(handle.outputs) == 1:
            return handle.outputs[0]
        matching = [o for o in handle.outputs if types_match(o.type, info.spec.type)]
        if len(matching) == 1:
            return matching[0]
        what = "no output" if not matching else f"{len(matching)} outputs"
        raise TypeError(f"{label}: input '{info.name}' ({info.spec.type}): {handle._label()} has {what} of that "
                        f"type; pick one, e.g. handle[0] or handle.{handle.outputs[0].name if handle.outputs else 'X'}")

    # -- export and running ---------------------------------------------------------------------------------------

    def to_api(self) -> dict[str, Any]:
        """The graph as an API-format prompt (node ids in creation order)."""
        prompt: dict[str, Any] = {}
        for node_id, entry in self._nodes.items():
            inputs = {name: _api_value(value) for name, value in entry.inputs.items()}
            prompt[node_id] = {"inputs": inputs, "class_type": entry.class_type, "_meta": {"title": entry.title}}
        return prompt

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_api(), indent=indent)

    def run(self, executor: Executor | None = None, *, extra_data: dict[str, Any] | None = None,
            prompt_id: str | None = None) -> ExecutionResult:
        """Execute in this process (raises PromptValidationError if the graph does not validate)."""
        executor = executor or Executor(self.registry)
        return executor.execute(self.to_api(), extra_data=extra_data, prompt_id=prompt_id)

    def submit(self, url: str, client_id: str | None = None, timeout: float = 600.0, *,
               poll_interval: float = 0.5, extra_data: dict[str, Any] | None = None) -> dict[str, Any]:
        """Queue the graph on a ComfyUI-compatible server and wait for it; returns its /history entry."""
        return submit_prompt(url, self.to_api(), client_id=client_id, timeout=timeout,
                             poll_interval=poll_interval, extra_data=extra_data)


def _api_value(value: Any) -> Any:
    if isinstance(value, OutputRef):
        return value.link()
    return {"__value__": value} if isinstance(value, list) else value


def _with_hint(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    return f"'{name}'" + (f" (did you mean '{close[0]}'?)" if close else "") + f"; inputs are: {', '.join(known)}"


# -- a ComfyUI-compatible server ---------------------------------------------------------------------------------

class SubmitError(RuntimeError):
    """The server refused the prompt (`body` holds its JSON error) or the prompt failed while running."""

    def __init__(self, message: str, body: Any = None) -> None:
        super().__init__(message)
        self.body = body


def _request(url: str, data: dict[str, Any] | None, timeout: float) -> Any:
    body = json.dumps(data).encode() if data is not None else None
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"} if body else {})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read().decode("utf-8") or "null")


def _refusal(err: urllib.error.HTTPError) -> SubmitError:
    try:
        body = json.loads(err.read().decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    message = error.get("message") if isinstance(error, dict) else str(error or err.reason)
    extra = error.get("extra_info") if isinstance(error, dict) else None
    missing = extra.get("missing_nodes") if isinstance(extra, dict) else None
    details = [f"node {m.get('node_id')} ({m.get('class_type')}): {m.get('hint') or 'unknown node type'}"
               for m in missing if isinstance(m, dict)] if isinstance(missing, list) else []
    for node_id, entry in (body.get("node_errors") or {}).items() if isinstance(body, dict) else ():
        for e in entry.get("errors", []):
            details.append(f"node {node_id} ({entry.get('class_type')}): {e.get('message')}: {e.get('details')}")
    return SubmitError(f"server refused the prompt (HTTP {err.code}): {message}"
                       + ("; " + "; ".join(details) if details else ""), body)


def submit_prompt(url: str, prompt: dict[str, Any], *, client_id: str | None = None, timeout: float = 600.0,
                  poll_interval: float = 0.5, extra_data: dict[str, Any] | None = None) -> dict[str, Any]:
    """POST /prompt, then poll GET /history/{id} until the prompt completes. Returns the history entry; raises
    SubmitError on refusal or an execution error, TimeoutError after `timeout` seconds."""
    base = url.rstrip("/")
    payload: dict[str, Any] = {"prompt": prompt, "client_id": client_id or uuid.uuid4().hex}
    if extra_data:
        payload["extra_data"] = extra_data
    deadline = time.monotonic() + timeout
    try:
        queued = _request(f"{base}/prompt", payload, timeout)
    except urllib.error.HTTPError as err:
        raise _refusal(err) from None
    prompt_id = queued["prompt_id"]
    while True:
        history = _request(f"{base}/history/{prompt_id}", None, max(1.0, deadline - time.monotonic()))
        entry = history.get(prompt_id) if isinstance(history, dict) else None
        status = (entry or {}).get("status") or {}
        if entry is not None and (status.get("completed") or status.get("status_str") in ("success", "error")):
            if status.get("status_str") == "error":
                raise SubmitError(f"prompt {prompt_id} failed: {_execution_error(status)}", entry)
            return entry
        if time.monotonic() >= deadline:
            raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout:g} s")
        time.sleep(poll_interval)


def _execution_error(status: dict[str, Any]) -> str:
    for kind, data in status.get("messages") or []:
        if kind == "execution_error" and isinstance(data, dict):
            return f"{data.get('node_type')} (node {data.get('node_id')}): {data.get('exception_message')}"
        if kind == "execution_interrupted":
            return "interrupted"
    return "execution error"


# -- templates ---------------------------------------------------------------------------------------------------

def _load_object(spec: str) -> Any:
    module_name, _, attr = spec.partition(":")
    module = import_module(module_name)
    return getattr(module, attr) if attr else module


def _as_template_table(source: Any) -> dict[str, Callable[..., Graph]]:
    if isinstance(source, dict):
        return dict(source)
    table = getattr(source, "TEMPLATES", None)
    if isinstance(table, dict):
        return dict(table)
    if inspect.ismodule(source):
        return {name: fn for name, fn in vars(source).items()
                if inspect.isfunction(fn) and not name.startswith("_") and fn.__module__ == source.__name__}
    raise TypeError(f"a template source must be a module or a dict of functions, got {type(source).__name__}")


def load_templates() -> dict[str, Callable[..., Graph]]:
    """Graph templates announced in the `graphengine.templates` entry-point group (each a module or a dict of
    functions); `GRAPHENGINE_TEMPLATES="module:attr,…"` replaces the installed ones."""
    override = os.environ.get(TEMPLATES_ENV)
    if override is not None:
        sources = [_load_object(s.strip()) for s in override.split(",") if s.strip()]
    else:
        sources = [ep.load() for ep in entry_points(group=TEMPLATE_ENTRY_POINT_GROUP)]
    templates: dict[str, Callable[..., Graph]] = {}
    for source in sources:
        templates.update(_as_template_table(source))
    return templates


__all__ = ["Graph", "NodeFactory", "NodeHandle", "OutputRef", "SubmitError", "load_templates", "submit_prompt"]
