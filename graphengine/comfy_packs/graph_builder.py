"""The graph builder packs use to expand a node into a sub-graph (ComfyUI's `comfy_execution.graph_utils`)."""

from __future__ import annotations

from typing import Any


class GraphNode:
    """One node of a graph under construction; `out(slot)` is a link to one of its outputs."""

    def __init__(self, node_id: str, class_type: str, inputs: dict[str, Any]) -> None:
        self.id = node_id
        self.class_type = class_type
        self.inputs = dict(inputs)
        self.override_display_id: str | None = None

    def out(self, index: int) -> list[Any]:
        return [self.id, index]

    def set_input(self, key: str, value: Any) -> None:
        if value is None:
            self.inputs.pop(key, None)
        else:
            self.inputs[key] = value

    def get_input(self, key: str) -> Any:
        return self.inputs.get(key)

    def set_override_display_id(self, override_display_id: str) -> None:
        self.override_display_id = override_display_id

    def serialize(self) -> dict[str, Any]:
        serialized: dict[str, Any] = {"class_type": self.class_type,
                                      "inputs": {k: _link_or_value(v) for k, v in self.inputs.items()}}
        if self.override_display_id is not None:
            serialized["override_display_id"] = self.override_display_id
        return serialized


def _link_or_value(value: Any) -> Any:
    return value.out(0) if isinstance(value, GraphNode) else value


class GraphBuilder:
    """Builds an API-format graph: `node(class_type, id=None, **inputs)`, then `finalize()`.

    Ids are `<prefix><n>`; the executor places each expansion under the expanding node's id, so a builder
    without a prefix never collides with other expansions."""

    def __init__(self, prefix: str | None = None) -> None:
        self.prefix = prefix or ""
        self.nodes: dict[str, GraphNode] = {}
        self._next_id = 1

    def node(self, class_type: str, id: str | None = None, **inputs: Any) -> GraphNode:
        if id is None:
            id = str(self._next_id)
            self._next_id += 1
        node_id = self.prefix + str(id)
        if node_id in self.nodes:
            return self.nodes[node_id]
        node = GraphNode(node_id, class_type, inputs)
        self.nodes[node_id] = node
        return node

    def lookup_node(self, id: str) -> GraphNode | None:
        return self.nodes.get(self.prefix + str(id))

    def remove_node(self, id: str) -> None:
        self.nodes.pop(self.prefix + str(id), None)

    def finalize(self) -> dict[str, Any]:
        return {node_id: node.serialize() for node_id, node in self.nodes.items()}
