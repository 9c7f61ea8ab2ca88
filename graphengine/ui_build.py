"""Build the editor's UI workflow (schema 0.4: nodes / links / widgets_values) from an API-format prompt.

The reverse of `ui_convert.convert`, as the editor would save the graph: widget values in schema order (required
widgets first), a `control_after_generate` slot ("fixed") after seed-like INTs and an "image" slot after image-upload
combos; linked inputs become sockets; nodes are laid out in columns by their depth in the graph."""

from __future__ import annotations

from typing import Any

from .registry import NodeRegistry
from .spec import ComboInput, IntInput

COLUMN_WIDTH, ROW_HEIGHT, NODE_WIDTH = 380, 60, 320
WIDGET_HEIGHT, SOCKET_HEIGHT, TITLE_HEIGHT = 26, 22, 30


class UIBuildError(ValueError):
    """The prompt cannot be drawn as a UI workflow (unknown node type, link to a missing node)."""


def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def _depths(prompt: dict[str, Any]) -> dict[str, int]:
    """Each node's column: 0 for nodes without linked inputs, else one more than its deepest source."""
    depths: dict[str, int] = {}

    def depth(node_id: str, seen: frozenset[str]) -> int:
        if node_id in depths:
            return depths[node_id]
        if node_id in seen:
            raise UIBuildError(f"node {node_id}: the graph has a cycle")
        sources = [v[0] for v in prompt[node_id].get("inputs", {}).values() if _is_link(v) and v[0] in prompt]
        depths[node_id] = 1 + max((depth(s, seen | {node_id}) for s in sources), default=-1)
        return depths[node_id]

    for node_id in prompt:
        depth(node_id, frozenset())
    return depths


def _numeric_ids(prompt: dict[str, Any]) -> dict[str, int]:
    """UI node ids are integers: keep numeric API ids, number the others after them."""
    ids = {k: int(k) for k in prompt if k.isdigit()}
    next_id = max(ids.values(), default=0) + 1
    for key in prompt:
        if key not in ids:
            ids[key], next_id = next_id, next_id + 1
    return ids


def api_to_ui(prompt: dict[str, Any], registry: NodeRegistry) -> dict[str, Any]:
    """API prompt → UI workflow the editor opens (and `ui_convert.convert` turns back into the same prompt)."""
    ids = _numeric_ids(prompt)
    depths = _depths(prompt)
    rows: dict[int, float] = {}
    links: list[list[Any]] = []
    nodes: dict[str, dict[str, Any]] = {}
    for order, node_id in enumerate(sorted(prompt, key=lambda k: (depths[k], ids[k]))):
        entry = prompt[node_id]
        schema = registry.get(entry.get("class_type", ""))
        if schema is None:
            raise UIBuildError(f"node {node_id}: unknown node type {entry.get('class_type')!r}")
        values = entry.get("inputs", {})
        widgets = [(n, i) for n, i in schema.inputs.items() if i.spec.is_widget and not i.spec.force_input]
        widgets.sort(key=lambda item: not item[1].required)
        widget_values: list[Any] = []
        for name, info in widgets:
            value = values.get(name, info.default)
            widget_values.append(info.default if _is_link(value) else value)
            if isinstance(info.spec, IntInput) and info.spec.control_after_generate:
                widget_values.append("fixed")
            if isinstance(info.spec, ComboInput) and info.spec.extra.get("image_upload"):
                widget_values.append("image")
        inputs = []
        for name, info in schema.inputs.items():
            value = values.get(name)
            if info.spec.is_widget and not info.spec.force_input and not _is_link(value):
                continue
            if not _is_link(value) and not info.required:
                continue
            socket: dict[str, Any] = {"name": name, "type": info.spec.type, "link": None}
            if info.spec.is_widget and not info.spec.force_input:
                socket["widget"] = {"name": name}
            if _is_link(value):
                if value[0] not in prompt:
                    raise UIBuildError(f"node {node_id}: input {name!r} links to missing node {value[0]!r}")
                source = prompt[value[0]]["class_type"]
                kind = registry.schema(source).outputs[value[1]].type
                links.append([len(links) + 1, ids[value[0]], value[1], ids[node_id], len(inputs), kind])
                socket["link"] = len(links)
            inputs.append(socket)
        column = depths[node_id]
        height = TITLE_HEIGHT + SOCKET_HEIGHT * max(len(inputs), len(schema.outputs)) + WIDGET_HEIGHT * len(widgets)
        y = rows.get(column, 0.0)
        rows[column] = y + height + ROW_HEIGHT
        title = (entry.get("_meta") or {}).get("title")
        nodes[node_id] = {
            "id": ids[node_id], "type": schema.name, "pos": [column * COLUMN_WIDTH, y], "size": [NODE_WIDTH, height],
            "flags": {}, "order": order, "mode": 0, "inputs": inputs,
            "outputs": [{"name": o.display_name, "type": o.type, "links": [], "slot_index": slot}
                        for slot, o in enumerate(schema.outputs)],
            "properties": {"Node name for S&R": schema.name}, "widgets_values": widget_values,
            **({"title": title} if title and title != schema.display_name else {}),
        }
    by_number = {ids[k]: k for k in prompt}
    for link in links:
        nodes[by_number[link[1]]]["outputs"][link[2]]["links"].append(link[0])
    return {"last_node_id": max(ids.values(), default=0), "last_link_id": len(links),
            "nodes": list(nodes.values()), "links": links, "groups": [], "config": {},
            "extra": {"ds": {"scale": 1.0, "offset": [0, 0]}}, "version": 0.4}
