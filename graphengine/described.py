"""Node schemas as JSON, and a registry built back from them without importing the nodes' implementations.

A node pack whose modules import heavy libraries can write its schemas once (`describe_registry`) and register them
from that description (`register_descriptions`) where nothing runs: validating or converting a workflow then needs
neither the pack's imports nor its start-up time. The node classes stay the one source of truth; the description is
generated from them and a pack's tests check it is fresh. Computed combo options must come from a named function or
a dataclass instance (never a lambda), so that the description can name them and the registry call them again.

What a description cannot carry: a node's own `validate_inputs`, `estimate` and `fingerprint` hooks. Described nodes
skip them (inputs the node validates itself skip the built-in checks, as with the real class) and cannot execute."""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

from .node import InputInfo, Node, NodeDefinitionError, NodeSchema
from .registry import NodeRegistry
from .spec import ComboInput, InputSpec, Output

FORMAT = 1


class DescribedNode(Node):
    """A node registered from its description: it validates and converts, but cannot run."""

    def execute(self, ctx: Any) -> Any:
        raise RuntimeError(f"{type(self).__name__} was registered from its description only; "
                           "build the registry with the node pack itself to run it")


def _qualified_name(obj: Any) -> str:
    return f"{obj.__module__}:{obj.__qualname__}"


def _resolve(name: str) -> Any:
    module_name, _, qualname = name.partition(":")
    target: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        target = getattr(target, part)
    return target


def _describe_choices(choices: Any, where: str) -> Any:
    if not callable(choices):
        return list(choices)
    if dataclasses.is_dataclass(choices) and not isinstance(choices, type):
        return {"source": _qualified_name(type(choices)), "args": dataclasses.asdict(choices)}
    if "<" in getattr(choices, "__qualname__", "<"):
        raise NodeDefinitionError(f"{where}: computed combo options need a named function or a dataclass instance "
                                  "(a lambda cannot be described)")
    return {"source": _qualified_name(choices)}


def _choices(described: Any) -> Any:
    if isinstance(described, list):
        return described
    source = _resolve(described["source"])
    return source(**described["args"]) if "args" in described else source


def describe_spec(spec: InputSpec, where: str) -> dict[str, Any]:
    out: dict[str, Any] = {"spec": _qualified_name(type(spec))}
    for f in dataclasses.fields(spec):
        value = getattr(spec, f.name)
        if f.default is not dataclasses.MISSING and value == f.default and f.name != "type":
            continue  # a field left at its default is left out
        if f.default_factory is not dataclasses.MISSING and value == f.default_factory():
            continue
        out[f.name] = _describe_choices(value, where) if isinstance(spec, ComboInput) and f.name == "choices" \
            else value
    return out


def spec_from(described: dict[str, Any]) -> InputSpec:
    fields = dict(described)
    spec_class = _resolve(fields.pop("spec"))
    if "choices" in fields:
        fields["choices"] = _choices(fields["choices"])
    return spec_class(**fields)


def describe_schema(schema: NodeSchema, python_module: str) -> dict[str, Any]:
    """One node's schema as JSON-ready data."""
    return {
        "name": schema.name, "display_name": schema.display_name, "category": schema.category,
        "description": schema.description, "python_module": python_module,
        "inputs": [{"name": i.name, "default": i.default, "required": i.required,
                    **describe_spec(i.spec, f"{schema.name}.{i.name}")} for i in schema.inputs.values()],
        "outputs": [dataclasses.asdict(o) for o in schema.outputs],
        "output_node": schema.output_node, "input_is_list": schema.input_is_list,
        "not_idempotent": schema.not_idempotent, "hidden": schema.hidden,
        "custom_validated": sorted(schema.custom_validated),
        "deprecated": schema.cls.DEPRECATED, "experimental": schema.cls.EXPERIMENTAL,
    }


def describe_registry(registry: NodeRegistry) -> dict[str, Any]:
    """Every registered node's schema, in registration order."""
    return {"format": FORMAT, "nodes": [describe_schema(registry.schema(name), registry.python_module(name))
                                        for name in registry.names()]}


def schema_from(described: dict[str, Any]) -> NodeSchema:
    name = described["name"]
    cls = type(name, (DescribedNode,), {"__module__": __name__, "__doc__": DescribedNode.__doc__, "NAME": name,
                                         "DEPRECATED": described["deprecated"],
                                         "EXPERIMENTAL": described["experimental"]})
    inputs = {}
    for entry in described["inputs"]:
        fields = {k: v for k, v in entry.items() if k not in ("name", "default", "required")}
        inputs[entry["name"]] = InputInfo(entry["name"], spec_from(fields), entry["default"], entry["required"])
    return NodeSchema(
        name=name, cls=cls, inputs=inputs, outputs=tuple(Output(**o) for o in described["outputs"]),
        display_name=described["display_name"], category=described["category"],
        description=described["description"], output_node=described["output_node"],
        input_is_list=described["input_is_list"], not_idempotent=described["not_idempotent"],
        hidden=dict(described["hidden"]), custom_validated=frozenset(described["custom_validated"]),
        has_fingerprint=False, has_validation=False, has_estimate=False,
        lazy_inputs=frozenset(n for n, i in inputs.items() if i.spec.lazy),
    )


def register_descriptions(registry: NodeRegistry, description: dict[str, Any]) -> None:
    """Register every node of a `describe_registry` description."""
    if description.get("format") != FORMAT:
        raise NodeDefinitionError(f"node description format {description.get('format')!r}, expected {FORMAT}")
    for described in description["nodes"]:
        registry.register_schema(schema_from(described), python_module=described["python_module"])
