"""Typed execution events with ComfyUI's websocket names and fields, and a small subscriber hub."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class Event:
    """Base of all events; `type` is the websocket message type, `data()` its payload."""

    type: ClassVar[str] = ""
    prompt_id: str

    def data(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def message(self) -> dict[str, Any]:
        return {"type": self.type, "data": self.data()}


@dataclass(frozen=True)
class ExecutionStart(Event):
    type: ClassVar[str] = "execution_start"
    timestamp: int = field(default_factory=now_ms)


@dataclass(frozen=True)
class ExecutionCached(Event):
    type: ClassVar[str] = "execution_cached"
    nodes: list[str] = field(default_factory=list)
    timestamp: int = field(default_factory=now_ms)


@dataclass(frozen=True)
class Executing(Event):
    """Before a node runs; `node=None` marks the end of the prompt."""

    type: ClassVar[str] = "executing"
    node: str | None = None
    display_node: str | None = None

    def data(self) -> dict[str, Any]:
        if self.node is None:
            return {"node": None, "prompt_id": self.prompt_id}
        return {"node": self.node, "display_node": self.display_node or self.node, "prompt_id": self.prompt_id}


@dataclass(frozen=True)
class Progress(Event):
    type: ClassVar[str] = "progress"
    node: str | None = None
    value: int = 0
    max: int = 0

    def data(self) -> dict[str, Any]:
        return {"value": self.value, "max": self.max, "prompt_id": self.prompt_id, "node": self.node}


@dataclass(frozen=True)
class ProgressState(Event):
    """Every node of the prompt that has started (`running` or `finished`), sent whenever one of them changes."""

    type: ClassVar[str] = "progress_state"
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)

    def data(self) -> dict[str, Any]:
        return {"prompt_id": self.prompt_id, "nodes": self.nodes}


@dataclass(frozen=True)
class ProgressPreview(Event):
    """A preview image (any object the node layer understands, e.g. a PIL image) sent as a binary frame."""

    type: ClassVar[str] = "progress_preview"
    node: str | None = None
    image: Any = None

    def data(self) -> dict[str, Any]:
        return {"prompt_id": self.prompt_id, "node": self.node}


@dataclass(frozen=True)
class Executed(Event):
    type: ClassVar[str] = "executed"
    node: str = ""
    output: dict[str, Any] = field(default_factory=dict)
    display_node: str | None = None

    def data(self) -> dict[str, Any]:
        return {"node": self.node, "display_node": self.display_node or self.node,
                "output": self.output, "prompt_id": self.prompt_id}


@dataclass(frozen=True)
class ExecutionSuccess(Event):
    type: ClassVar[str] = "execution_success"
    timestamp: int = field(default_factory=now_ms)


@dataclass(frozen=True)
class ExecutionError(Event):
    type: ClassVar[str] = "execution_error"
    node_id: str = ""
    node_type: str = ""
    executed: list[str] = field(default_factory=list)
    exception_message: str = ""
    exception_type: str = ""
    traceback: list[str] = field(default_factory=list)
    current_inputs: dict[str, Any] = field(default_factory=dict)
    current_outputs: list[str] = field(default_factory=list)
    timestamp: int = field(default_factory=now_ms)


@dataclass(frozen=True)
class ExecutionInterrupted(Event):
    type: ClassVar[str] = "execution_interrupted"
    node_id: str | None = None
    node_type: str | None = None
    executed: list[str] = field(default_factory=list)
    timestamp: int = field(default_factory=now_ms)


Listener = Callable[[Event], None]


class EventHub:
    """Fan-out of events to subscribers; a failing subscriber never breaks execution or the others."""

    def __init__(self) -> None:
        self._listeners: list[Listener] = []
        self.errors: list[BaseException] = []

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def emit(self, event: Event) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception as exc:  # noqa: BLE001 - a listener's bug must not abort the prompt
                self.errors.append(exc)
