"""ComfyUI's V3 node classes (`io.ComfyNode` with `define_schema`) adapted onto the engine's node contract."""

from __future__ import annotations

from typing import Any, ClassVar

from ..node import ExecutionBlocker, NodeDefinitionError, NodeOutput, NodeSchema
from . import io
from .adapter import (ComfyAdapter, accepted, build_inputs, build_outputs, hidden_value, json_ready, named_inputs,
                      settle, verdict)


def _overrides(comfy: type, hook: str) -> bool:
    return getattr(comfy, hook).__func__ is not getattr(io.ComfyNode, hook).__func__


class V3Node(ComfyAdapter):
    """Runs a V3 node: its classmethods on a per-call subclass whose `hidden` holds the hidden values."""

    V3_SCHEMA: ClassVar[io.Schema]

    def _bound(self, ctx: Any) -> type:
        values = {h.name: hidden_value(h.value, ctx) for h in self.V3_SCHEMA.hidden}
        return type(self.COMFY_CLASS.__name__, (self.COMFY_CLASS,), {"hidden": io.HiddenHolder(**values)})

    def execute(self, ctx: Any) -> NodeOutput:
        result = settle(self._bound(ctx).execute(**(self.model_extra or {})))
        if isinstance(result, io.NodeOutput):
            if result.block_execution is not None:
                return self.node_output(ExecutionBlocker(result.block_execution), result.ui, None, ctx.services)
            return self.node_output(result.args, result.ui, result.expand, ctx.services)
        if isinstance(result, dict):
            return self.node_output(result.get("result"), result.get("ui"), result.get("expand"), ctx.services)
        return self.node_output(result)

    def check_lazy_status(self, ctx: Any) -> list[str]:
        hook = self._bound(ctx).check_lazy_status
        return list(settle(hook(**accepted(hook, self.model_extra or {}))) or [])

    @classmethod
    def fingerprint(cls, inputs: dict[str, Any], services: Any = None) -> Any:
        hook = cls.COMFY_CLASS.fingerprint_inputs
        return settle(hook(**accepted(hook, inputs)))

    @classmethod
    def validate_inputs(cls, inputs: dict[str, Any], services: Any = None) -> bool | str:
        hook = cls.COMFY_CLASS.validate_inputs
        return verdict(settle(hook(**accepted(hook, inputs))))

    @classmethod
    def render_object_info(cls, info: dict[str, Any], services: Any = None) -> dict[str, Any]:
        """V3 entries: combos as `["COMBO", {"options": […]}]`, hidden as lists, and every key present."""
        schema = cls.V3_SCHEMA
        sections: dict[str, dict[str, Any]] = {"required": {}, "optional": {}}
        for item in schema.inputs:
            kind, options = item.as_entry()
            sections["optional" if item.optional else "required"][item.id] = json_ready([kind, options])
        inputs: dict[str, Any] = {k: v for k, v in sections.items() if v or k == "required"}
        if schema.hidden:
            inputs["hidden"] = {h.name: [h.value] for h in schema.hidden}
        info["input"] = inputs
        info["input_order"] = {k: list(v) for k, v in inputs.items()}
        info["output_tooltips"] = [o.tooltip for o in schema.outputs]
        info.update(deprecated=schema.is_deprecated, experimental=schema.is_experimental,
                    dev_only=schema.is_dev_only, api_node=schema.is_api_node,
                    search_aliases=list(schema.search_aliases), essentials_category=schema.essentials_category,
                    output_matchtypes=None, price_badge=schema.price_badge)
        return info


def adapt_v3(comfy: type) -> tuple[type[V3Node], NodeSchema]:
    """An engine node class and schema standing for the V3 class `comfy`, registered under its schema's node_id."""
    if not (isinstance(comfy, type) and issubclass(comfy, io.ComfyNode)):
        raise NodeDefinitionError(f"{comfy!r} is not an io.ComfyNode subclass")
    schema = comfy.define_schema()
    if not isinstance(schema, io.Schema) or not schema.node_id:
        raise NodeDefinitionError(f"{comfy.__name__}.define_schema() must return an io.Schema with a node_id")
    definition: dict[str, dict[str, Any]] = {"required": {}, "optional": {}}
    for item in schema.inputs:
        definition["optional" if item.optional else "required"][item.id] = item.as_entry()
    inputs = build_inputs(definition)
    outputs = build_outputs([o.io_type for o in schema.outputs], [o.name for o in schema.outputs],
                            [o.is_output_list for o in schema.outputs], [o.tooltip for o in schema.outputs])
    hidden = {h.name: h.value for h in schema.hidden}
    custom_validated = named_inputs(comfy.validate_inputs, inputs) if _overrides(comfy, "validate_inputs") \
        else frozenset()
    attributes = {
        "__module__": __name__, "__doc__": f"ComfyUI node {schema.node_id}.",
        "COMFY_CLASS": comfy, "V3_SCHEMA": schema, "NAME": schema.node_id, "RETURNS": outputs, "HIDDEN": hidden,
        "CATEGORY": schema.category or "sd", "DESCRIPTION": schema.description or "",
        "OUTPUT_NODE": schema.is_output_node, "INPUT_IS_LIST": schema.is_input_list,
        "NOT_IDEMPOTENT": schema.not_idempotent, "DEPRECATED": schema.is_deprecated,
        "EXPERIMENTAL": schema.is_experimental, "CUSTOM_VALIDATED": custom_validated,
        "ACCEPTS_EXTRA_LINKS": schema.accept_all_inputs,
    }
    adapted = type(f"ComfyV3_{comfy.__name__}", (V3Node,), attributes)
    node_schema = NodeSchema(
        name=schema.node_id, cls=adapted, inputs=inputs, outputs=outputs,
        display_name=schema.display_name or schema.node_id, category=attributes["CATEGORY"],
        description=attributes["DESCRIPTION"], output_node=schema.is_output_node,
        input_is_list=schema.is_input_list,
        not_idempotent=schema.not_idempotent or io.Hidden.unique_id in schema.hidden, hidden=hidden,
        custom_validated=custom_validated, has_fingerprint=_overrides(comfy, "fingerprint_inputs"),
        has_validation=_overrides(comfy, "validate_inputs"),
        lazy_inputs=frozenset(n for n, i in inputs.items() if i.spec.lazy))
    return adapted, node_schema
