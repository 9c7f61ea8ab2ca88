"""Runs a validated prompt: only what the selected outputs need, in dependency order, reusing cached results."""

from __future__ import annotations

import gc
import traceback
import uuid
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from .cache import CacheEntry, ResultCache, compute_signatures, default_sizeof
from .context import CancelToken, ExecutionContext, Interrupted
from .events import (Event, EventHub, Executed, ExecutionCached, ExecutionError, ExecutionInterrupted, Executing,
                     ExecutionStart, ExecutionSuccess, ProgressState)
from .memory import is_out_of_memory
from .node import ExecutionBlocker, NodeOutput
from .registry import NodeRegistry
from .validation import Link, NodeCall, ValidatedPrompt, validate_expansion, validate_prompt


@dataclass
class ExecutionResult:
    prompt_id: str
    status: str  # "success" | "error" | "interrupted"
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)  # node id -> UI output
    executed: list[str] = field(default_factory=list)  # node ids that ran (not from cache)
    cached: list[str] = field(default_factory=list)
    error: dict[str, Any] | None = None
    messages: list[list[Any]] = field(default_factory=list)  # [[event type, data], …] as ComfyUI's history
    node_errors: dict[str, Any] = field(default_factory=dict)
    # node id -> its output values (one list per output slot), only with execute(..., keep_values=True)
    values: dict[str, list[list[Any]]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "success"


class NodeExecutionError(Exception):
    """A node raised; carries ComfyUI's `execution_error` payload."""

    def __init__(self, event: ExecutionError, out_of_memory: bool = False) -> None:
        super().__init__(f"{event.node_type} ({event.node_id}): {event.exception_message}")
        self.event = event
        self.out_of_memory = out_of_memory


def _merge_ui(into: dict[str, Any], ui: dict[str, Any]) -> None:
    for key, value in ui.items():
        into.setdefault(key, []).extend(value if isinstance(value, list) else [value])


def _is_link(value: Any) -> bool:
    return (isinstance(value, list) and len(value) == 2 and isinstance(value[0], (str, int))
            and isinstance(value[1], int) and not isinstance(value[1], bool))


def _describe_inputs(inputs: dict[str, list[Any]]) -> dict[str, list[str]]:
    return {k: [str(v)[:500] for v in values[:8]] for k, values in inputs.items()}


class _Run:
    """State of one prompt's execution."""

    def __init__(self, executor: Executor, prompt: ValidatedPrompt, prompt_id: str, extra_data: dict[str, Any],
                 cancel: CancelToken) -> None:
        self.ex = executor
        self.prompt = prompt
        self.prompt_id = prompt_id
        self.extra_data = extra_data
        self.cancel = cancel
        self.signatures = compute_signatures(prompt.nodes, list(prompt.nodes), executor.registry.services)
        self.values: dict[str, list[list[Any]]] = {}
        self.result = ExecutionResult(prompt_id, "success", node_errors=prompt.node_errors)
        # Entries are replaced, never mutated, so a shallow copy is a safe snapshot for each event.
        self.node_states: dict[str, dict[str, Any]] = {}
        # Nodes of expanded graphs: id -> the expanding node, and the node the editor shows them as.
        self.parent_of: dict[str, str] = {}
        self.display_of: dict[str, str] = {}

    @cached_property
    def api_prompt(self) -> dict[str, Any]:
        """The coerced API prompt handed to nodes (SaveImage embeds it); a fully cached run never builds it."""
        return self.prompt.api_prompt()

    def emit(self, event: Event, record: bool = False) -> None:
        if record:
            self.result.messages.append([event.type, event.data()])
        self.ex.events.emit(event)

    def run(self) -> ExecutionResult:
        cache = self.ex.cache
        self.emit(ExecutionStart(self.prompt_id), record=True)
        cached = [nid for nid in self.prompt.nodes if self.signatures[nid] in cache]
        cache.touch(self.signatures[nid] for nid in cached)
        self.result.cached = cached
        self.emit(ExecutionCached(self.prompt_id, nodes=cached), record=True)
        current: str | None = None
        try:
            for output_id in self.prompt.outputs:
                self.ensure(output_id)
            self.emit(ExecutionSuccess(self.prompt_id), record=True)
        except Interrupted:
            current = self._current
            self.result.status = "interrupted"
            call = self.prompt.nodes.get(current) if current else None
            self.emit(ExecutionInterrupted(self.prompt_id, node_id=current, node_type=call.class_type if call else None,
                                           executed=list(self.result.executed)), record=True)
        except NodeExecutionError as exc:
            self.result.status = "error"
            self.result.error = exc.event.data()
            if exc.out_of_memory:
                self._free_after_out_of_memory()
            self.emit(exc.event, record=True)
        if self.ex.emit_done:
            self.emit(Executing(self.prompt_id, node=None))
        return self.result

    _current: str | None = None

    def ensure(self, target: str) -> None:
        """Make `target`'s outputs available, running missing ancestors first (explicit stack, no recursion)."""
        stack = [target]
        requested_lazy: dict[str, set[str]] = {}
        while stack:
            node_id = stack[-1]
            if node_id in self.values:
                stack.pop()
                continue
            call = self.prompt.nodes[node_id]
            entry = self.ex.cache.get(self.signatures[node_id])
            if entry is not None:
                self.values[node_id] = entry.outputs
                if entry.ui is not None and call.schema.output_node:
                    self.result.outputs[node_id] = entry.ui
                    self.emit(Executed(self.prompt_id, node=node_id, output=entry.ui,
                                       display_node=self.display_of.get(node_id)))
                if node_id in self.prompt.outputs:  # ComfyUI visits cached outputs and marks them finished
                    self._report(node_id, "finished", 1, 1)
                stack.pop()
                continue
            lazy = call.schema.lazy_inputs
            wanted = requested_lazy.setdefault(node_id, set())
            missing = [link.node_id for name, link in call.links().items()
                       if (name not in lazy or name in wanted) and link.node_id not in self.values]
            if missing:
                stack.extend(dict.fromkeys(missing))
                continue
            if lazy:
                more = set(self._check_lazy(call, wanted)) - wanted
                if more:
                    wanted |= more
                    continue
            self._execute(call, wanted)
            stack.pop()

    def _gather(self, call: NodeCall, evaluated_lazy: set[str]) -> dict[str, list[Any]]:
        inputs: dict[str, list[Any]] = {}
        for name, value in call.inputs.items():
            if isinstance(value, Link):
                if name in call.schema.lazy_inputs and name not in evaluated_lazy:
                    inputs[name] = [None]
                else:
                    inputs[name] = self.values[value.node_id][value.slot]
            else:
                inputs[name] = [value]
        return inputs

    def _context(self, node_id: str) -> ExecutionContext:
        return ExecutionContext(self.prompt_id, node_id, self.ex.registry.services, self.ex.events, self.cancel,
                                self.api_prompt, self.extra_data,
                                on_progress=lambda value, total: self._report(node_id, "running", value, total),
                                objects=self.ex.node_objects)

    def _report(self, node_id: str, state: str, value: int, maximum: int) -> None:
        """Record one node's progress and send every started node's state (ComfyUI's `progress_state`)."""
        self.node_states[node_id] = {"value": value, "max": maximum, "state": state, "node_id": node_id,
                                     "prompt_id": self.prompt_id,
                                     "display_node_id": self.display_of.get(node_id, node_id),
                                     "parent_node_id": self.parent_of.get(node_id), "real_node_id": node_id}
        self.emit(ProgressState(self.prompt_id, nodes=dict(self.node_states)))

    def _check_lazy(self, call: NodeCall, evaluated: set[str]) -> list[str]:
        inputs = self._gather(call, evaluated)
        values = inputs if call.schema.input_is_list else {k: v[0] for k, v in inputs.items()}
        instance = call.schema.cls.model_construct(**values)
        try:
            with self._context(call.node_id).active() as ctx:
                names = instance.check_lazy_status(ctx)
        except Exception as exc:  # noqa: BLE001
            raise self._failure(call, exc, inputs) from exc
        return [n for n in names if n in call.schema.lazy_inputs and isinstance(call.inputs.get(n), Link)]

    def _execute(self, call: NodeCall, evaluated_lazy: set[str]) -> None:
        node_id, schema = call.node_id, call.schema
        self._current = node_id
        try:
            self.cancel.raise_if_cancelled()
        except Interrupted:
            raise
        except Exception as exc:  # noqa: BLE001 - cancelled with an error (e.g. the memory guard's)
            raise self._failure(call, exc, {}) from exc
        self._report(node_id, "running", 0, 1)
        self.emit(Executing(self.prompt_id, node=node_id, display_node=self.display_of.get(node_id)))
        inputs = self._gather(call, evaluated_lazy)
        ctx = self._context(node_id)
        outputs: list[list[Any]] = [[] for _ in schema.outputs]
        ui: dict[str, Any] = {}
        try:
            with ctx.active():
                for index, kwargs in enumerate(self._calls(schema.input_is_list, inputs)):
                    blocker = next((v for v in kwargs.values() if isinstance(v, ExecutionBlocker)), None)
                    if blocker is not None:
                        self._blocked(call, blocker)
                        for slot in outputs:
                            slot.append(ExecutionBlocker(None))
                        continue
                    returned = schema.cls.model_construct(**kwargs).execute(ctx)
                    values, call_ui, expand = ((returned.values, returned.ui, returned.expand)
                                               if isinstance(returned, NodeOutput) else (returned, None, None))
                    if not isinstance(values, tuple) or len(values) != len(schema.outputs):
                        raise TypeError(f"{schema.name}.execute must return a tuple of {len(schema.outputs)} values, "
                                        f"got {type(values).__name__}")
                    expanded = self._expand(call, index, expand, values) if expand else {}
                    for slot, (out, value) in enumerate(zip(schema.outputs, values)):
                        if slot in expanded:
                            outputs[slot].extend(expanded[slot])
                        else:
                            outputs[slot].extend(value) if out.is_list else outputs[slot].append(value)
                    if call_ui:
                        _merge_ui(ui, call_ui)
        except Interrupted:
            raise
        except Exception as exc:  # noqa: BLE001 - any node failure becomes a structured execution error
            raise self._failure(call, exc, inputs) from exc
        self.values[node_id] = outputs
        self.result.executed.append(node_id)
        self.ex.cache.put(self.signatures[node_id], CacheEntry(outputs, ui or None),
                          protected=self.signatures.values())
        done = max(1, self.node_states[node_id]["max"])
        self._report(node_id, "finished", done, done)
        if ui:
            if schema.output_node:
                self.result.outputs[node_id] = ui
            self.emit(Executed(self.prompt_id, node=node_id, output=ui, display_node=self.display_of.get(node_id)))

    def _blocked(self, call: NodeCall, blocker: ExecutionBlocker) -> None:
        """ComfyUI reports a block with a message as an execution error, once, and the prompt goes on."""
        if blocker.message is not None:
            self.emit(ExecutionError(self.prompt_id, node_id=call.node_id, node_type=call.class_type,
                                     executed=list(self.result.executed),
                                     exception_message=f"Execution Blocked: {blocker.message}",
                                     exception_type="ExecutionBlocked"))

    def _expand(self, call: NodeCall, index: int, graph: Any, values: tuple[Any, ...]) -> dict[int, list[Any]]:
        """Run the graph a node expanded into; returns, per output slot that links into it, the linked values.

        The graph's ids become `<node>.<call>.0.<id>` (ComfyUI's expansion id shape), so repeated and nested
        expansions never collide."""
        if not isinstance(graph, dict):
            raise TypeError(f"{call.class_type} expanded into a {type(graph).__name__}, not an API-format graph")
        prefix = f"{call.node_id}.{index}.0."
        local = {str(k) for k in graph}

        def rename(value: Any) -> Any:
            if _is_link(value) and str(value[0]) in local:
                return [prefix + str(value[0]), value[1]]
            return value

        renamed = {prefix + str(k): {**node, "inputs": {n: rename(v) for n, v in (node.get("inputs") or {}).items()}}
                   if isinstance(node, dict) else node for k, node in graph.items()}
        new_calls = validate_expansion(renamed, self.ex.registry, self.prompt.nodes)
        shown_as = self.display_of.get(call.node_id, call.node_id)
        for new in new_calls:
            self.prompt.nodes[new.node_id] = new
            self.parent_of[new.node_id] = call.node_id
            override = renamed[new.node_id].get("override_display_id")
            self.display_of[new.node_id] = override if isinstance(override, str) else shown_as
        self.signatures.update(compute_signatures(self.prompt.nodes, [c.node_id for c in new_calls],
                                                  self.ex.registry.services, known=self.signatures))
        linked: dict[int, list[Any]] = {}
        for slot, value in enumerate(values):
            target = rename(value)
            if target is not value:
                self.ensure(target[0])
                linked[slot] = list(self.values[target[0]][target[1]])
        for new in new_calls:
            if new.schema.output_node:
                self.ensure(new.node_id)
        return linked

    @staticmethod
    def _calls(input_is_list: bool, inputs: dict[str, list[Any]]):
        if input_is_list:
            yield dict(inputs)
            return
        lengths = [len(v) for v in inputs.values()]
        if any(n == 0 for n in lengths):
            return
        for i in range(max(lengths, default=1)):
            yield {k: v[min(i, len(v) - 1)] for k, v in inputs.items()}

    def _failure(self, call: NodeCall, exc: Exception, inputs: dict[str, list[Any]]) -> NodeExecutionError:
        exc_type = type(exc)
        type_name = exc_type.__qualname__ if exc_type.__module__ == "builtins" else \
            f"{exc_type.__module__}.{exc_type.__qualname__}"
        message = str(exc) or exc_type.__name__
        out_of_memory = is_out_of_memory(exc)
        if out_of_memory and not message.lower().startswith("out of memory"):
            message = f"Out of memory in {call.class_type} (node {call.node_id}): {message}"
        return NodeExecutionError(ExecutionError(
            self.prompt_id, node_id=call.node_id, node_type=call.class_type, executed=list(self.result.executed),
            exception_message=message, exception_type=type_name,
            traceback=traceback.format_exception(exc), current_inputs=_describe_inputs(inputs),
            current_outputs=list(self.values)), out_of_memory=out_of_memory)

    def _free_after_out_of_memory(self) -> None:
        """Keep only this prompt's finished results in the cache and collect garbage, so the next prompt has room."""
        self.values.clear()
        self.ex.cache.clear_except(self.signatures[n] for n in (*self.result.executed, *self.result.cached))
        gc.collect()


class Executor:
    """Executes prompts against a registry, sharing one result cache and one event hub across prompts."""

    def __init__(self, registry: NodeRegistry, cache: ResultCache | None = None, events: EventHub | None = None,
                 *, emit_done: bool = True) -> None:
        self.registry = registry
        # A node pack's services may say how much a result really holds (tensor storages, model handles).
        sizeof = getattr(registry.services, "result_sizeof", None)
        self.cache = cache if cache is not None else ResultCache(sizeof=sizeof or default_sizeof)
        self.events = events if events is not None else EventHub()
        self.emit_done = emit_done
        self.node_objects: dict[tuple[str, str], Any] = {}  # see ExecutionContext.objects

    def execute(self, prompt: ValidatedPrompt | dict[str, Any], *, prompt_id: str | None = None,
                extra_data: dict[str, Any] | None = None, cancel: CancelToken | None = None,
                partial_execution_targets: list[str] | None = None, keep_values: bool = False) -> ExecutionResult:
        """Run a prompt (validated here if given as a dict; raises PromptValidationError if invalid).
        `keep_values` returns every evaluated node's output values in `result.values` (in-process callers)."""
        if not isinstance(prompt, ValidatedPrompt):
            prompt = validate_prompt(prompt, self.registry, partial_execution_targets)
        for key in [k for k in self.node_objects if k[0] not in prompt.nodes]:
            del self.node_objects[key]
        run = _Run(self, prompt, prompt_id or str(uuid.uuid4()), extra_data or {}, cancel or CancelToken())
        result = run.run()
        if keep_values:  # the nodes this run evaluated, and those it skipped because a cached descendant sufficed
            result.values = dict(run.values)
            for node_id in prompt.nodes:
                entry = None if node_id in result.values else self.cache.get(run.signatures[node_id])
                if entry is not None:
                    result.values[node_id] = entry.outputs
        return result
