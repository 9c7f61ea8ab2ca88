"""Convert the editor's UI workflow format (nodes / links / widgets_values) into an API-format prompt.

Rules, as the official frontend applies them: frontend-only nodes (Note, MarkdownNote, Reroute, PrimitiveNode) are
resolved away; muted nodes (mode 2) are dropped; bypassed nodes (mode 4) pass each output through from an input of the
same type; subgraphs (`definitions.subgraphs`) and legacy group nodes (`extra.groupNodes`) are expanded with path ids
(`"<instance>:<inner>"`); `widgets_values` are assigned to the node's widget inputs in schema order, skipping the extra
`control_after_generate` slot after seed-like INTs and the upload slot of image-upload combos."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from .missing_nodes import MissingNode
from .registry import NodeRegistry
from .spec import ComboInput, IntInput

MODE_MUTED, MODE_BYPASS = 2, 4
SUBGRAPH_INPUT_NODE, SUBGRAPH_OUTPUT_NODE = -10, -20
VIRTUAL_NODES = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
CONTROL_VALUES = ("fixed", "increment", "decrement", "randomize")


class UIConversionError(ValueError):
    """A UI workflow that cannot be converted; the message names the node and its title (every missing node type,
    also listed in `missing`)."""

    def __init__(self, message: str, missing: list[MissingNode] | None = None) -> None:
        super().__init__(message)
        self.missing = missing or []


@dataclass
class UILink:
    origin: str
    origin_slot: int
    target: str
    target_slot: int
    type: str = "*"


@dataclass
class UINode:
    id: str
    type: str
    mode: int = 0
    title: str | None = None
    widgets_values: Any = None
    inputs: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)

    def label(self) -> str:
        return f"node {self.id} ({self.type}" + (f', titled "{self.title}")' if self.title else ")")


def _parse_links(raw_links: Any) -> dict[str, UILink]:
    links: dict[str, UILink] = {}
    for item in raw_links or []:
        if isinstance(item, list) and len(item) >= 5:
            link_id, origin, origin_slot, target, target_slot = item[:5]
            kind = item[5] if len(item) > 5 else "*"
        elif isinstance(item, dict):
            link_id, origin, origin_slot = item.get("id"), item.get("origin_id"), item.get("origin_slot")
            target, target_slot, kind = item.get("target_id"), item.get("target_slot"), item.get("type", "*")
        else:
            raise UIConversionError(f"malformed link {item!r}")
        if link_id is None or origin is None or target is None:
            raise UIConversionError(f"malformed link {item!r}")
        links[str(link_id)] = UILink(str(origin), int(origin_slot or 0), str(target), int(target_slot or 0),
                                     str(kind))
    return links


def _parse_nodes(raw_nodes: Any, prefix: str = "") -> dict[str, UINode]:
    nodes: dict[str, UINode] = {}
    for raw in raw_nodes or []:
        if not isinstance(raw, dict) or "id" not in raw or not isinstance(raw.get("type"), str):
            raise UIConversionError(f"malformed node {str(raw)[:80]!r}: needs an id and a type")
        node_id = prefix + str(raw["id"])
        nodes[node_id] = UINode(node_id, raw["type"], int(raw.get("mode") or 0), raw.get("title"),
                                raw.get("widgets_values"), [dict(i) for i in raw.get("inputs") or []],
                                [dict(o) for o in raw.get("outputs") or []])
    return nodes


class _Graph:
    """A mutable flat graph: nodes by id and links by id (each input's `link` holds a link id)."""

    def __init__(self, nodes: dict[str, UINode], links: dict[str, UILink]) -> None:
        self.nodes = nodes
        self.links = links
        self._counter = 0

    def new_link(self, link: UILink) -> str:
        self._counter += 1
        link_id = f"~{self._counter}"
        self.links[link_id] = link
        return link_id

    def input_link(self, node: UINode, slot: int) -> UILink | None:
        if slot >= len(node.inputs):
            return None
        link_id = node.inputs[slot].get("link")
        return self.links.get(str(link_id)) if link_id is not None else None

    def consumers(self, node_id: str, slot: int | None = None) -> list[tuple[str, UILink]]:
        return [(lid, l) for lid, l in self.links.items()
                if l.origin == node_id and (slot is None or l.origin_slot == slot)]

    def retarget_consumers(self, node_id: str, slot: int, source: UILink | None) -> None:
        """Make every consumer of (node_id, slot) read from `source`'s origin instead (or drop the link)."""
        for link_id, link in self.consumers(node_id, slot):
            target = self.nodes.get(link.target)
            if source is None:
                del self.links[link_id]
                if target is not None and link.target_slot < len(target.inputs):
                    target.inputs[link.target_slot]["link"] = None
                continue
            link.origin, link.origin_slot = source.origin, source.origin_slot

    def remove(self, node_id: str) -> None:
        self.nodes.pop(node_id, None)
        for link_id, link in list(self.links.items()):
            if link.target == node_id:
                del self.links[link_id]
            elif link.origin == node_id:
                del self.links[link_id]
                target = self.nodes.get(link.target)
                if target is not None and link.target_slot < len(target.inputs):
                    target.inputs[link.target_slot]["link"] = None


def _expand_subgraphs(graph: _Graph, definitions: dict[str, dict[str, Any]], depth: int = 0) -> None:
    instances = [n for n in graph.nodes.values() if n.type in definitions]
    if not instances:
        return
    if depth > 32:
        raise UIConversionError("subgraphs nested more than 32 deep (a subgraph that contains itself?)")
    for inst in instances:
        definition = definitions[inst.type]
        prefix = f"{inst.id}:"
        inner_nodes = _parse_nodes(definition.get("nodes"), prefix)
        inner_links = _parse_links(definition.get("links"))
        outer_inputs = [graph.input_link(inst, i) for i in range(len(inst.inputs))]
        graph.nodes.update(inner_nodes)
        boundary_outputs: dict[int, UILink] = {}
        for link_id, link in inner_links.items():
            origin = prefix + link.origin if link.origin != str(SUBGRAPH_INPUT_NODE) else None
            target = prefix + link.target if link.target != str(SUBGRAPH_OUTPUT_NODE) else None
            if origin is None:  # fed by the subgraph's input slot
                outer = outer_inputs[link.origin_slot] if link.origin_slot < len(outer_inputs) else None
                if outer is None or target is None:
                    if target in graph.nodes and link.target_slot < len(graph.nodes[target].inputs):
                        graph.nodes[target].inputs[link.target_slot]["link"] = None
                    continue
                origin, origin_slot = outer.origin, outer.origin_slot
            else:
                origin_slot = link.origin_slot
            if target is None:  # feeds the subgraph's output slot
                boundary_outputs[link.target_slot] = UILink(origin, origin_slot, "", 0, link.type)
                continue
            new_id = graph.new_link(UILink(origin, origin_slot, target, link.target_slot, link.type))
            if link.target_slot < len(graph.nodes[target].inputs):
                graph.nodes[target].inputs[link.target_slot]["link"] = new_id
        for slot in range(len(inst.outputs) or (max(boundary_outputs, default=-1) + 1)):
            graph.retarget_consumers(inst.id, slot, boundary_outputs.get(slot))
        graph.remove(inst.id)
    _expand_subgraphs(graph, definitions, depth + 1)


def _expand_group_nodes(graph: _Graph, groups: dict[str, Any]) -> None:
    """Legacy group nodes (`workflow>Name`): inner nodes by index, links `[from, slot, to, slot, …]`; the
    instance's inputs are the inner nodes' unlinked sockets and its outputs all inner outputs, in order."""
    for inst in [n for n in graph.nodes.values() if n.type.startswith(("workflow>", "workflow/"))]:
        definition = groups.get(inst.type.split(">", 1)[-1].split("/", 1)[-1]) if groups else None
        if not isinstance(definition, dict):
            raise UIConversionError(f"{inst.label()}: unknown group node")
        inner = {}
        for index, raw in enumerate(definition.get("nodes") or []):
            node_id = f"{inst.id}:{raw.get('index', index)}"
            inner[node_id] = UINode(node_id, raw["type"], int(raw.get("mode") or 0), raw.get("title"),
                                    list(raw.get("widgets_values") or []), [dict(i) for i in raw.get("inputs") or []],
                                    [dict(o) for o in raw.get("outputs") or []])
        graph.nodes.update(inner)
        internal = set()
        for item in definition.get("links") or []:
            src, src_slot, dst, dst_slot = item[:4]
            target = inner[f"{inst.id}:{dst}"]
            link_id = graph.new_link(UILink(f"{inst.id}:{src}", int(src_slot), target.id, int(dst_slot)))
            target.inputs[int(dst_slot)]["link"] = link_id
            internal.add((target.id, int(dst_slot)))
        open_inputs = [(n, i) for n in inner.values() for i, inp in enumerate(n.inputs)
                       if (n.id, i) not in internal and "widget" not in inp]
        for slot, (node, index) in enumerate(open_inputs):
            outer = graph.input_link(inst, slot)
            node.inputs[index]["link"] = graph.new_link(UILink(outer.origin, outer.origin_slot, node.id, index)) \
                if outer else None
        outputs = [(n, i) for n in inner.values() for i in range(len(n.outputs))]
        for slot, (node, index) in enumerate(outputs):
            graph.retarget_consumers(inst.id, slot, UILink(node.id, index, "", 0))
        values = list(inst.widgets_values or [])
        for node in inner.values():
            count = len(node.widgets_values or [])
            if values:
                node.widgets_values, values = values[:count], values[count:]
        graph.remove(inst.id)


def _resolve_virtual(graph: _Graph) -> dict[tuple[str, str], Any]:
    """Remove Reroute/Primitive/Note nodes; returns widget values that PrimitiveNodes push into their targets."""
    pushed: dict[tuple[str, str], Any] = {}
    for node in list(graph.nodes.values()):
        if node.type in ("Note", "MarkdownNote"):
            graph.remove(node.id)
    changed = True
    while changed:  # reroutes may chain
        changed = False
        for node in [n for n in graph.nodes.values() if n.type == "Reroute"]:
            graph.retarget_consumers(node.id, 0, graph.input_link(node, 0))
            graph.remove(node.id)
            changed = True
    for node in [n for n in graph.nodes.values() if n.type == "PrimitiveNode"]:
        values = node.widgets_values if isinstance(node.widgets_values, list) else [node.widgets_values]
        for _, link in graph.consumers(node.id, 0):
            target = graph.nodes.get(link.target)
            if target is not None and link.target_slot < len(target.inputs):
                name = (target.inputs[link.target_slot].get("widget") or {}).get("name") or \
                    target.inputs[link.target_slot].get("name")
                pushed[(target.id, name)] = values[0] if values else None
        graph.remove(node.id)
    return pushed


def _drop_muted_and_bypassed(graph: _Graph) -> None:
    for node in [n for n in graph.nodes.values() if n.mode == MODE_MUTED]:
        graph.remove(node.id)
    for node in [n for n in graph.nodes.values() if n.mode == MODE_BYPASS]:
        slots = max(len(node.outputs), max((l.origin_slot + 1 for _, l in graph.consumers(node.id)), default=0))
        for slot in range(slots):
            out_type = node.outputs[slot].get("type", "*") if slot < len(node.outputs) else "*"
            source = None
            candidates = ([slot] if slot < len(node.inputs) else []) + list(range(len(node.inputs)))
            for index in candidates:
                link = graph.input_link(node, index)
                in_type = node.inputs[index].get("type", "*")
                if link is not None and (in_type == out_type or "*" in (in_type, out_type)):
                    source = link
                    break
            graph.retarget_consumers(node.id, slot, source)
        graph.remove(node.id)


def _widget_values(node: UINode, schema: Any, pushed: dict[tuple[str, str], Any], controls: str,
                   rng: random.Random) -> dict[str, Any]:
    widgets = [(name, info) for name, info in schema.inputs.items()
               if info.spec.is_widget and not info.spec.force_input]
    widgets.sort(key=lambda item: not item[1].required)  # required widgets first, as in input_order
    values: dict[str, Any] = {}
    raw = node.widgets_values
    if isinstance(raw, dict):
        values = {k: v for k, v in raw.items() if k in schema.inputs}
    else:
        queue = list(raw or [])
        for name, info in widgets:
            if not queue:
                linked = any(i.get("name") == name and i.get("link") is not None for i in node.inputs)
                if linked or (node.id, name) in pushed or not info.required:
                    continue
                raise UIConversionError(f"{node.label()}: widgets_values has too few values "
                                        f"(missing '{name}'; expected {len(widgets)} widgets)")
            value = queue.pop(0)
            control = None
            if isinstance(info.spec, IntInput) and info.spec.control_after_generate and queue and \
                    queue[0] in CONTROL_VALUES:
                control = queue.pop(0)
            if isinstance(info.spec, ComboInput) and info.spec.extra.get("image_upload") and queue and \
                    isinstance(queue[0], str) and queue[0] in ("image", "video", "audio"):
                queue.pop(0)
            values[name] = _apply_control(value, control, info.spec, rng) if controls == "apply" else value
        if queue:
            raise UIConversionError(f"{node.label()}: widgets_values has {len(queue)} more value(s) than its "
                                    f"{len(widgets)} widgets: {queue[:3]!r}")
    for (target, name), value in pushed.items():
        if target == node.id:
            values[name] = value
    return {k: ({"__value__": v} if isinstance(v, list) else v) for k, v in values.items()}


def _apply_control(value: Any, control: str | None, spec: IntInput, rng: random.Random) -> Any:
    if not isinstance(value, int) or control in (None, "fixed"):
        return value
    low = spec.min if spec.min is not None else 0
    high = spec.max if spec.max is not None else 2**64 - 1
    if control == "increment":
        return min(value + 1, high)
    if control == "decrement":
        return max(value - 1, low)
    return rng.randint(low, min(high, 2**53 - 1) if high > 2**53 else high)


def convert(workflow: dict[str, Any], registry: NodeRegistry, *, controls: str = "keep",
            seed: int | None = None) -> dict[str, Any]:
    """UI workflow → API prompt. `controls="apply"` applies each seed's increment/decrement/randomize setting."""
    if not isinstance(workflow, dict) or not isinstance(workflow.get("nodes"), list):
        raise UIConversionError("not a UI workflow: expected an object with a 'nodes' list")
    graph = _Graph(_parse_nodes(workflow["nodes"]), _parse_links(workflow.get("links")))
    subgraphs = {str(d.get("id")): d for d in (workflow.get("definitions") or {}).get("subgraphs") or []
                 if isinstance(d, dict)}
    _expand_subgraphs(graph, subgraphs)
    _expand_group_nodes(graph, (workflow.get("extra") or {}).get("groupNodes") or {})
    pushed = _resolve_virtual(graph)
    _drop_muted_and_bypassed(graph)
    missing = [MissingNode(n.id, n.type, n.title, registry.missing_node_hint(n.type))
               for n in graph.nodes.values() if registry.get(n.type) is None]
    if missing:
        lines = "\n".join(f"  {m.describe()}" for m in missing)
        raise UIConversionError(f"{len(missing)} node(s) of unknown type:\n{lines}", missing)
    rng = random.Random(seed)
    prompt: dict[str, Any] = {}
    for node in graph.nodes.values():
        schema = registry.schema(node.type)
        inputs = _widget_values(node, schema, pushed, controls, rng)
        for slot, inp in enumerate(node.inputs):
            link = graph.input_link(node, slot)
            name = (inp.get("widget") or {}).get("name") or inp.get("name")
            if link is not None and link.origin in graph.nodes and name:
                inputs[name] = [link.origin, link.origin_slot]
        prompt[node.id] = {"inputs": inputs, "class_type": node.type,
                           "_meta": {"title": node.title or schema.display_name}}
    return prompt
