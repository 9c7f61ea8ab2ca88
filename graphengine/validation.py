"""Validation of ComfyUI API-format prompts with ComfyUI's error types and shapes.

Every malformed input yields a structured error (`PromptValidationError.body()`); nothing escapes as a raw exception.
"""

from __future__ import annotations

import math
import traceback
from dataclasses import dataclass, field
from typing import Any

import networkx as nx

from .limits import MAX_JSON_DEPTH, json_depth_exceeds
from .missing_nodes import MissingNode, missing_node_error
from .node import InputInfo, NodeSchema
from .registry import NodeRegistry
from .spec import ANY_TYPE, FLOAT_LIMIT, INT_LIMIT, ComboInput, types_match

_TRUE_STRINGS = {"true", "1", "yes", "on"}
_FALSE_STRINGS = {"false", "0", "no", "off"}
_MAX_LISTED_OPTIONS = 20
_MAX_CYCLE_SHOWN = 12


@dataclass(frozen=True)
class Link:
    """A reference to output `slot` of node `node_id`."""

    node_id: str
    slot: int


@dataclass
class NodeCall:
    node_id: str
    class_type: str
    schema: NodeSchema
    inputs: dict[str, Any]  # input name -> Link or coerced constant (declared inputs only)
    title: str | None = None

    def links(self) -> dict[str, Link]:
        return {k: v for k, v in self.inputs.items() if isinstance(v, Link)}


@dataclass
class ValidatedPrompt:
    """A prompt that passed validation: the nodes, the output nodes to run, and errors of dropped outputs."""

    nodes: dict[str, NodeCall]  # in topological order: every node after the nodes it links to
    outputs: list[str]
    node_errors: dict[str, Any] = field(default_factory=dict)

    def api_prompt(self) -> dict[str, Any]:
        """The prompt in API format with coerced values (what SaveImage embeds as the `prompt` chunk)."""
        out: dict[str, Any] = {}
        for node_id, call in self.nodes.items():
            inputs = {k: ([v.node_id, v.slot] if isinstance(v, Link) else v) for k, v in call.inputs.items()}
            out[node_id] = {"inputs": inputs, "class_type": call.class_type,
                            "_meta": {"title": call.title or call.schema.display_name}}
        return out


class PromptValidationError(Exception):
    def __init__(self, error: dict[str, Any], node_errors: dict[str, Any] | None = None) -> None:
        super().__init__(f"{error['message']}: {error['details']}" if error.get("details") else error["message"])
        self.error = error
        self.node_errors = node_errors or {}

    def body(self) -> dict[str, Any]:
        return {"error": self.error, "node_errors": self.node_errors}


class InputError(Exception):
    """One input's validation error (`.error` is ComfyUI's error object)."""

    def __init__(self, type_: str, message: str, details: str, **extra: Any) -> None:
        super().__init__(message)
        self.error = error_dict(type_, message, details, **extra)


def error_dict(type_: str, message: str, details: str = "", **extra_info: Any) -> dict[str, Any]:
    return {"type": type_, "message": message, "details": details, "extra_info": extra_info}


def _short(value: Any, limit: int = 200) -> Any:
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


# -- constant coercion ---------------------------------------------------------------------------------------------

def _conversion_error(name: str, kind: str, value: Any, why: str = "") -> InputError:
    details = f"{name}, {_short(value)!r}" + (f" ({why})" if why else "")
    return InputError("invalid_input_type", f"Failed to convert an input value to a {kind} value", details,
                       input_name=name, received_value=_short(value), received_type=type(value).__name__)


def _coerce_int(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise _conversion_error(name, "INT", value, "booleans are not numbers")
    if isinstance(value, int):
        result = value
    elif isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            raise _conversion_error(name, "INT", value, "not a whole finite number")
        result = int(value)
    elif isinstance(value, str):
        try:
            result = int(value.strip())
        except ValueError:
            raise _conversion_error(name, "INT", value) from None
    else:
        raise _conversion_error(name, "INT", value)
    if abs(result) > INT_LIMIT:
        raise _conversion_error(name, "INT", value, "out of the 64-bit range")
    return result


def _coerce_float(name: str, value: Any) -> float:
    if isinstance(value, bool):
        raise _conversion_error(name, "FLOAT", value, "booleans are not numbers")
    if isinstance(value, (int, float)):
        try:
            result = float(value)
        except OverflowError:
            raise _conversion_error(name, "FLOAT", value, "too large") from None
    elif isinstance(value, str):
        try:
            result = float(value.strip())
        except ValueError:
            raise _conversion_error(name, "FLOAT", value) from None
    else:
        raise _conversion_error(name, "FLOAT", value)
    if not math.isfinite(result) or abs(result) > FLOAT_LIMIT:
        raise _conversion_error(name, "FLOAT", value, "NaN and infinite values are not allowed")
    return result


def _coerce_string(name: str, value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise _conversion_error(name, "STRING", value)


def _coerce_boolean(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in _TRUE_STRINGS:
            return True
        if lowered in _FALSE_STRINGS:
            return False
    raise _conversion_error(name, "BOOLEAN", value)


def _check_combo(info: InputInfo, value: Any, services: Any) -> Any:
    assert isinstance(info.spec, ComboInput)
    options = info.spec.option_list(services)
    multi = bool(info.spec.extra.get("multi_select"))
    values = value if (multi and isinstance(value, list)) else [value]
    for item in values:
        if isinstance(item, (dict, list)) or item is None:
            raise _conversion_error(info.name, "COMBO", item)
        if item not in options:
            short = len(options) <= _MAX_LISTED_OPTIONS
            listed = options if short else f"(list of length {len(options)})"
            raise InputError("value_not_in_list", "Value not in list",
                              f"{info.name}: '{_short(item)}' not in {listed}{_option_source(info, services)}",
                              input_name=info.name,
                              input_config=info.spec.object_info(info.default, services) if short else None,
                              received_value=_short(item))
    return value


def _option_source(info: InputInfo, services: Any) -> str:
    """Where a computed option list comes from, when its source says (e.g. the folders a file list scans)."""
    describe = getattr(info.spec.choices, "describe", None)
    if not callable(describe):
        return ""
    try:
        return f" ({describe(services)})"
    except Exception:  # noqa: BLE001 - the error being reported matters more than this note
        return ""


_COERCERS = {"INT": _coerce_int, "FLOAT": _coerce_float, "STRING": _coerce_string, "BOOLEAN": _coerce_boolean}


def _check_bounds(info: InputInfo, value: Any, services: Any) -> None:
    spec_min = getattr(info.spec, "min", None)
    spec_max = getattr(info.spec, "max", None)
    if spec_min is not None and value < spec_min:
        raise InputError("value_smaller_than_min", f"Value {value} smaller than min of {spec_min}",
                          f"{info.name}", input_name=info.name,
                          input_config=info.spec.object_info(info.default, services), received_value=value)
    if spec_max is not None and value > spec_max:
        raise InputError("value_bigger_than_max", f"Value {value} bigger than max of {spec_max}",
                          f"{info.name}", input_name=info.name,
                          input_config=info.spec.object_info(info.default, services), received_value=value)


def coerce_constant(info: InputInfo, raw: Any, services: Any, check_values: bool = True) -> Any:
    """Unwrap `{"__value__": …}`, convert to the input's kind and check bounds / combo membership."""
    value = raw["__value__"] if isinstance(raw, dict) and "__value__" in raw else raw
    kind = info.spec.type
    if kind == "COMBO":
        return _check_combo(info, value, services) if check_values else value
    coercer = _COERCERS.get(kind)
    if coercer is None:
        if kind == ANY_TYPE:
            return value
        raise InputError("invalid_input_type", f"Input '{info.name}' must be linked to a {kind} output",
                          f"{info.name}: got a constant {type(value).__name__}", input_name=info.name,
                          received_type=type(value).__name__)
    result = coercer(info.name, value)
    if check_values and kind in ("INT", "FLOAT"):
        _check_bounds(info, result, services)
    return result


# -- the validator -------------------------------------------------------------------------------------------------

def _parse_link(name: str, value: list[Any], nodes: dict[str, Any]) -> Link:
    if len(value) != 2 or not isinstance(value[0], str) or isinstance(value[1], bool) or not isinstance(value[1], int):
        raise InputError("bad_linked_input", "Bad linked input, must be a length-2 list of [string, int]",
                          f"{name}, {_short(value)}", input_name=name, received_value=_short(value))
    if value[0] not in nodes:
        raise InputError("bad_linked_input", "Linked node does not exist",
                          f"{name}: node '{_short(value[0])}' is not in the prompt", input_name=name,
                          linked_node=value)
    return Link(value[0], value[1])


class _Validator:
    def __init__(self, prompt: Any, registry: NodeRegistry, raw_constants: bool = False) -> None:
        self.registry = registry
        self.raw_constants = raw_constants
        self.services = registry.services
        self.raw = prompt
        self.calls: dict[str, NodeCall] = {}
        self.errors: dict[str, list[dict[str, Any]]] = {}

    def structure(self) -> None:
        if not isinstance(self.raw, dict):
            raise PromptValidationError(error_dict("invalid_prompt", "Prompt must be a JSON object",
                                                   f"got {type(self.raw).__name__}"))
        if json_depth_exceeds(self.raw, MAX_JSON_DEPTH):  # what walks it later (repr, json, cache keys) recurses
            raise PromptValidationError(error_dict("invalid_prompt", "Prompt nested too deeply",
                                                   f"more than {MAX_JSON_DEPTH} levels of lists/objects"))
        missing: list[MissingNode] = []
        for node_id, node in self.raw.items():
            if not isinstance(node_id, str):
                raise PromptValidationError(error_dict("invalid_prompt", "Node ids must be strings",
                                                       f"got {_short(node_id)!r}", node_id=_short(node_id)))
            if not isinstance(node, dict):
                raise PromptValidationError(error_dict("invalid_prompt", f"Node {node_id} is not an object",
                                                       f"got {type(node).__name__}", node_id=node_id))
            meta = node.get("_meta")
            title = meta.get("title") if isinstance(meta, dict) and isinstance(meta.get("title"), str) else None
            class_type = node.get("class_type")
            if not isinstance(class_type, str) or not class_type:
                missing.append(MissingNode(node_id, None, title))
                continue
            schema = self.registry.get(class_type)
            if schema is None:
                missing.append(MissingNode(node_id, class_type, title, self.registry.missing_node_hint(class_type)))
                continue
            inputs = node.get("inputs", {})
            if not isinstance(inputs, dict):
                raise PromptValidationError(error_dict("invalid_prompt", f"Node {node_id} inputs must be an object",
                                                       f"got {type(inputs).__name__}", node_id=node_id))
            self.calls[node_id] = NodeCall(node_id, class_type, schema, dict(inputs), title)
        if missing:  # every missing type in one answer, not only the first
            raise PromptValidationError(missing_node_error(missing))

    def select_outputs(self, targets: Any) -> list[str]:
        outputs = [nid for nid, call in self.calls.items() if call.schema.output_node]
        if targets is not None:
            if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
                raise PromptValidationError(error_dict("invalid_prompt",
                                                       "partial_execution_targets must be a list of node ids", ""))
            wanted = set(targets)
            outputs = [o for o in outputs if o in wanted]
        if not outputs:
            raise PromptValidationError(error_dict("prompt_no_outputs", "Prompt has no outputs", ""))
        return outputs

    def _link(self, name: str, raw: list[Any]) -> tuple[Link, str]:
        """A link input checked against the prompt, and the type of the output it names."""
        link = _parse_link(name, raw, self.calls)
        source = self.calls[link.node_id].schema
        if not 0 <= link.slot < len(source.outputs):
            raise InputError("bad_linked_input", "Linked output slot does not exist",
                              f"{name}: node '{link.node_id}' ({source.name}) has "
                              f"{len(source.outputs)} outputs, got index {link.slot}",
                              input_name=name, linked_node=raw)
        return link, source.outputs[link.slot].type

    def check_node(self, call: NodeCall) -> list[str]:
        """Coerce and check one node's inputs in place; returns the ids of nodes it links to."""
        errors: list[dict[str, Any]] = []
        raw_inputs, checked = call.inputs, {}
        parents: list[str] = []
        link_types: dict[str, str] = {}
        schema = call.schema
        for name, info in schema.inputs.items():
            if name not in raw_inputs:
                if info.required:
                    errors.append(error_dict("required_input_missing", "Required input is missing", name,
                                             input_name=name))
                continue
            raw = raw_inputs[name]
            try:
                if isinstance(raw, list):
                    link, out_type = self._link(name, raw)
                    link_types[name] = out_type
                    if not schema.cls.CHECKS_LINK_TYPES and not types_match(out_type, info.spec.type):
                        raise InputError("return_type_mismatch", "Return type mismatch between linked nodes",
                                          f"{name}, received_type({out_type}) mismatch input_type({info.spec.type})",
                                          input_name=name,
                                          input_config=info.spec.object_info(info.default, self.services),
                                          received_type=out_type, linked_node=raw)
                    checked[name] = link
                    parents.append(link.node_id)
                elif self.raw_constants and not info.spec.is_widget and info.spec.type not in _COERCERS:
                    checked[name] = raw  # an expanded graph may hand any value to a socket
                else:
                    checked[name] = coerce_constant(info, raw, self.services,
                                                    check_values=name not in schema.custom_validated)
            except InputError as exc:
                errors.append(exc.error)
        if schema.cls.ACCEPTS_EXTRA_LINKS:  # undeclared linked inputs reach the node (dynamic inputs)
            for name, raw in raw_inputs.items():
                if name in schema.inputs or not isinstance(raw, list):
                    continue
                try:
                    checked[name], _ = self._link(name, raw)
                    parents.append(checked[name].node_id)
                except InputError as exc:
                    errors.append(exc.error)
        call.inputs = checked
        if not errors and schema.has_validation:
            constants = {k: v for k, v in checked.items() if not isinstance(v, Link)}
            try:
                verdict = (schema.cls.validate_inputs(constants, self.services, input_types=link_types)
                           if schema.cls.CHECKS_LINK_TYPES else schema.cls.validate_inputs(constants, self.services))
            except Exception as exc:  # noqa: BLE001 - a node's hook must not take validation down
                errors.append(error_dict("exception_during_validation", f"{type(exc).__name__}: {exc}", "",
                                         exception_type=type(exc).__name__, traceback=traceback.format_exc()))
            else:
                if verdict is not True:
                    errors.append(error_dict("custom_validation_failed", "Custom validation failed for node",
                                             str(verdict)))
        if errors:
            self.errors[call.node_id] = errors
        return parents

    def run(self, targets: Any) -> ValidatedPrompt:
        self.structure()
        outputs = self.select_outputs(targets)
        parents: dict[str, list[str]] = {}
        pending = list(outputs)
        while pending:
            node_id = pending.pop()
            if node_id in parents:
                continue
            parents[node_id] = self.check_node(self.calls[node_id])
            pending.extend(p for p in parents[node_id] if p not in parents)
        order = _topological_order(parents)
        graph = None
        if len(order) < len(parents) or self.errors:
            graph = nx.DiGraph()
            graph.add_nodes_from(parents)
            graph.add_edges_from((p, c) for c, ps in parents.items() for p in ps)
            self._mark_cycles(graph)
        invalid = self._propagate_invalid(graph) if graph is not None else set()
        node_errors = {}
        if self.errors:
            upstream = {o: _ancestors_and_self(o, parents) for o in outputs}
            for node_id, errs in self.errors.items():
                node_errors[node_id] = {"errors": errs,
                                        "dependent_outputs": [o for o in outputs if node_id in upstream[o]],
                                        "class_type": self.calls[node_id].class_type}
        valid = [o for o in outputs if o not in invalid]
        if not valid:
            # ComfyUI lists only the output nodes' own errors here: "" when the faults lie upstream (see node_errors)
            details = "\n".join(f"{e['message']}: {e['details']}" for o in outputs for e in self.errors.get(o, []))
            raise PromptValidationError(error_dict("prompt_outputs_failed_validation",
                                                   "Prompt outputs failed validation", details), node_errors)
        needed = set().union(*(_ancestors_and_self(o, parents) for o in valid))
        nodes = {nid: self.calls[nid] for nid in order if nid in needed}
        return ValidatedPrompt(nodes, valid, node_errors)

    def _mark_cycles(self, graph: nx.DiGraph) -> None:
        for component in nx.strongly_connected_components(graph):
            start = next(iter(component))
            if len(component) == 1 and not graph.has_edge(start, start):
                continue
            cycle = [edge[0] for edge in nx.find_cycle(graph.subgraph(component), source=start)]
            shown = [f"{n} ({self.calls[n].class_type})" for n in cycle[:_MAX_CYCLE_SHOWN]]
            if len(cycle) > _MAX_CYCLE_SHOWN:
                shown.append(f"… {len(cycle) - _MAX_CYCLE_SHOWN} more")
            path = " -> ".join([*shown, f"{cycle[0]} ({self.calls[cycle[0]].class_type})"])
            cycle_nodes = sorted(component)[:_MAX_CYCLE_SHOWN]
            for node_id in component:
                self.errors.setdefault(node_id, []).append(error_dict(
                    "dependency_cycle", "Dependency cycle detected", path, node_id=node_id,
                    cycle_nodes=cycle_nodes, cycle_length=len(component)))

    def _propagate_invalid(self, graph: nx.DiGraph) -> set[str]:
        condensed = nx.condensation(graph)
        members = condensed.graph["mapping"]
        bad_components = {members[n] for n in self.errors if n in members}
        for comp in nx.topological_sort(condensed):
            if any(p in bad_components for p in condensed.predecessors(comp)):
                bad_components.add(comp)
        return {n for n, comp in members.items() if comp in bad_components}


def _ancestors_and_self(node_id: str, parents: dict[str, list[str]]) -> set[str]:
    seen: set[str] = set()
    pending = [node_id]
    while pending:
        current = pending.pop()
        if current not in seen:
            seen.add(current)
            pending.extend(parents[current])
    return seen


def _topological_order(parents: dict[str, list[str]]) -> list[str]:
    """Kahn's algorithm (ancestors first); nodes on or behind a cycle are left out."""
    children: dict[str, list[str]] = {n: [] for n in parents}
    remaining = {n: len(set(ps)) for n, ps in parents.items()}
    for child, ps in parents.items():
        for p in set(ps):
            children[p].append(child)
    ready = [n for n, count in remaining.items() if count == 0]
    order: list[str] = []
    while ready:
        node = ready.pop()
        order.append(node)
        for child in children[node]:
            remaining[child] -= 1
            if remaining[child] == 0:
                ready.append(child)
    return order


def validate_prompt(prompt: Any, registry: NodeRegistry, partial_execution_targets: Any = None) -> ValidatedPrompt:
    """Validate an API-format prompt; raises PromptValidationError with ComfyUI's error body."""
    try:
        return _Validator(prompt, registry).run(partial_execution_targets)
    except PromptValidationError:
        raise
    except Exception as exc:  # noqa: BLE001 - last line of defence: never let a raw exception escape
        raise PromptValidationError(error_dict("exception_during_validation", f"{type(exc).__name__}: {exc}", "",
                                               exception_type=type(exc).__name__,
                                               traceback=traceback.format_exc())) from exc


def validate_expansion(graph: Any, registry: NodeRegistry, known: dict[str, NodeCall]) -> list[NodeCall]:
    """Check the nodes of an expanded graph (ComfyUI's node expansion); links may also point at `known` nodes.

    Returns the new calls in dependency order; raises PromptValidationError with the node errors."""
    validator = _Validator(graph, registry, raw_constants=True)
    validator.structure()
    new_ids = list(validator.calls)
    duplicates = [n for n in new_ids if n in known]
    if duplicates:
        raise PromptValidationError(error_dict("invalid_prompt", "Expanded graph reuses existing node ids",
                                               ", ".join(duplicates[:_MAX_CYCLE_SHOWN])))
    validator.calls = {**known, **validator.calls}
    parents = {n: [p for p in validator.check_node(validator.calls[n]) if p in graph] for n in new_ids}
    order = _topological_order(parents)
    if len(order) < len(parents):
        validator.errors.setdefault(new_ids[0], []).append(
            error_dict("dependency_cycle", "Dependency cycle detected", "in an expanded graph"))
    if validator.errors:
        node_errors = {n: {"errors": e, "dependent_outputs": [], "class_type": validator.calls[n].class_type}
                       for n, e in validator.errors.items()}
        details = "; ".join(f"{n}: {e[0]['message']}: {e[0]['details']}" for n, e in validator.errors.items())
        raise PromptValidationError(error_dict("invalid_prompt", "Expanded graph failed validation", details),
                                    node_errors)
    return [validator.calls[n] for n in order]
