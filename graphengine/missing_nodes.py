"""Every node type a workflow uses that the registry lacks, reported at once, with a hint where one is known.

A node pack tells the registry which foreign names it recognises (`NodeRegistry.add_missing_node_hints`): exact class
names or shell-style patterns (`IPAdapter*`, `*|pysssss`) mapped to one sentence saying where the node comes from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

_MAX_NAMED = 20  # class names spelled out in the one-line message; the list in extra_info has them all


@dataclass(frozen=True)
class MissingNode:
    node_id: str
    class_type: str | None  # None: the node has no class_type at all
    title: str | None = None
    hint: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"node_id": self.node_id, "class_type": self.class_type, "node_title": self.title, "hint": self.hint}

    def describe(self) -> str:
        """One line: `node 12 (KSampler (Efficient), titled "…"): hint`."""
        name = self.class_type if self.class_type is not None else "no class_type"
        label = f"node {self.node_id} ({name}" + (f', titled "{self.title}")' if self.title else ")")
        return f"{label}: {self.hint or 'unknown node type'}"


def missing_node_error(missing: list[MissingNode]) -> dict[str, Any]:
    """ComfyUI's `missing_node_type` error naming every missing node.

    With one missing node the message, details and extra_info keys are ComfyUI's own; more nodes add their class
    names after the first sentence and one details line each; `extra_info.missing_nodes` always lists them all."""
    first = missing[0]
    if first.class_type is None:
        message = "Cannot execute because a node is missing the class_type property."
    else:
        message = f"Cannot execute because node {first.class_type} does not exist."
    others = list(dict.fromkeys(m.class_type or "(no class_type)" for m in missing[1:]
                                if m.class_type != first.class_type))
    if others:
        named = others[:_MAX_NAMED] + ([f"… {len(others) - _MAX_NAMED} more"] if len(others) > _MAX_NAMED else [])
        message += " Also missing: " + ", ".join(named) + "."
    if len(missing) == 1 and first.hint is None:
        details = f"Node ID '#{first.node_id}'"
    else:
        details = "\n".join(f"Node ID '#{m.node_id}' ({m.class_type})" + (f": {m.hint}" if m.hint else "")
                            for m in missing)
    return {"type": "missing_node_type", "message": message, "details": details,
            "extra_info": {"node_id": first.node_id, "class_type": first.class_type, "node_title": first.title,
                           "missing_nodes": [m.as_dict() for m in missing]}}
