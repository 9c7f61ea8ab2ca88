"""ComfyUI's V1 node protocol (INPUT_TYPES, RETURN_TYPES, FUNCTION, …) adapted onto the engine's node contract."""

from __future__ import annotations

from typing import Any

from ..node import NodeDefinitionError, NodeSchema
from .adapter import (ComfyAdapter, accepted, build_inputs, build_outputs, json_ready, named_inputs, settle, takes,
                      verdict)


class V1Node(ComfyAdapter):
    """Runs a ComfyUI V1 node class: one instance per node, kept across prompts while the node stays in them (as
    ComfyUI does), its FUNCTION given the inputs by name."""

    def execute(self, ctx: Any) -> Any:
        instance = ctx.node_object(self.NAME, self.COMFY_CLASS)
        function = getattr(instance, self.COMFY_CLASS.FUNCTION)
        result = settle(function(**self.comfy_inputs(ctx)))
        if isinstance(result, dict):
            return self.node_output(result.get("result"), result.get("ui"), result.get("expand"))
        return self.node_output(result)

    def check_lazy_status(self, ctx: Any) -> list[str]:
        instance = ctx.node_object(self.NAME, self.COMFY_CLASS)
        hook = getattr(instance, "check_lazy_status", None)
        if hook is None:
            return []
        return list(settle(hook(**self.comfy_inputs(ctx))) or [])

    @classmethod
    def fingerprint(cls, inputs: dict[str, Any], services: Any = None) -> Any:
        hook = cls.COMFY_CLASS.IS_CHANGED
        return settle(hook(**accepted(hook, inputs)))

    @classmethod
    def validate_inputs(cls, inputs: dict[str, Any], services: Any = None,
                        input_types: dict[str, str] | None = None) -> bool | str:
        hook = cls.COMFY_CLASS.VALIDATE_INPUTS
        arguments = accepted(hook, inputs)
        if cls.CHECKS_LINK_TYPES:
            arguments["input_types"] = input_types or {}
        return verdict(settle(hook(**arguments)))

    @classmethod
    def render_object_info(cls, info: dict[str, Any], services: Any = None) -> dict[str, Any]:
        """ComfyUI shows a V1 node's INPUT_TYPES verbatim (combo lists re-read, as it does on every request)."""
        comfy = cls.COMFY_CLASS
        try:
            definition = json_ready(comfy.INPUT_TYPES())
        except Exception:  # noqa: BLE001 - the entry built at registration still describes the node
            return info
        info["input"] = definition
        info["input_order"] = {section: list(values) for section, values in definition.items()
                               if isinstance(values, dict)}
        info["output"] = json_ready(list(comfy.RETURN_TYPES))
        info["search_aliases"] = list(getattr(comfy, "SEARCH_ALIASES", None) or [])
        for attribute, key in (("DEV_ONLY", "dev_only"), ("API_NODE", "api_node")):
            if getattr(comfy, attribute, False):
                info[key] = True
        return info


def adapt_v1(name: str, comfy: type, display_name: str | None = None) -> tuple[type[V1Node], NodeSchema]:
    """An engine node class and schema standing for the V1 class `comfy`, registered as `name`."""
    for attribute in ("INPUT_TYPES", "RETURN_TYPES", "FUNCTION"):
        if not hasattr(comfy, attribute):
            raise NodeDefinitionError(f"{name}: a ComfyUI node class needs {attribute}")
    if not callable(getattr(comfy, comfy.FUNCTION, None)):
        raise NodeDefinitionError(f"{name}: FUNCTION names {comfy.FUNCTION!r}, which the class does not have")
    definition = comfy.INPUT_TYPES()

    def live(section: str, input_name: str):
        def options(services: Any) -> list[str]:
            entry = comfy.INPUT_TYPES()[section][input_name]
            kind = entry[0]
            return list(kind) if isinstance(kind, (list, tuple)) else list(entry[1].get("options") or [])
        return options

    inputs = build_inputs(definition, live)
    outputs = build_outputs(comfy.RETURN_TYPES, getattr(comfy, "RETURN_NAMES", None),
                            getattr(comfy, "OUTPUT_IS_LIST", None), getattr(comfy, "OUTPUT_TOOLTIPS", None))
    hidden = {str(k): str(v) for k, v in (definition.get("hidden") or {}).items()}
    validate = getattr(comfy, "VALIDATE_INPUTS", None)
    attributes = {
        "__module__": __name__, "__doc__": f"ComfyUI node {name}.",
        "COMFY_CLASS": comfy, "NAME": name, "RETURNS": outputs, "HIDDEN": hidden,
        "CATEGORY": getattr(comfy, "CATEGORY", None) or "sd",
        "DESCRIPTION": getattr(comfy, "DESCRIPTION", None) or "",
        "OUTPUT_NODE": bool(getattr(comfy, "OUTPUT_NODE", False)),
        "INPUT_IS_LIST": bool(getattr(comfy, "INPUT_IS_LIST", False)),
        "NOT_IDEMPOTENT": bool(getattr(comfy, "NOT_IDEMPOTENT", False)),
        "DEPRECATED": bool(getattr(comfy, "DEPRECATED", False)),
        "EXPERIMENTAL": bool(getattr(comfy, "EXPERIMENTAL", False)),
        "CHECKS_LINK_TYPES": validate is not None and takes(validate, "input_types"),
        "CUSTOM_VALIDATED": named_inputs(validate, inputs) if validate is not None else frozenset(),
        "ACCEPTS_EXTRA_LINKS": True,  # ComfyUI passes undeclared linked inputs to V1 functions
    }
    adapted = type(f"ComfyV1_{comfy.__name__}", (V1Node,), attributes)
    schema = NodeSchema(
        name=name, cls=adapted, inputs=inputs, outputs=outputs, display_name=display_name or name,
        category=attributes["CATEGORY"], description=attributes["DESCRIPTION"],
        output_node=attributes["OUTPUT_NODE"], input_is_list=attributes["INPUT_IS_LIST"],
        # ComfyUI keys the cache on the node id for nodes that ask for it (hidden UNIQUE_ID)
        not_idempotent=attributes["NOT_IDEMPOTENT"] or "UNIQUE_ID" in hidden.values(), hidden=hidden,
        custom_validated=attributes["CUSTOM_VALIDATED"],
        has_fingerprint=hasattr(comfy, "IS_CHANGED"), has_validation=validate is not None,
        lazy_inputs=frozenset(n for n, i in inputs.items() if i.spec.lazy))
    return adapted, schema
