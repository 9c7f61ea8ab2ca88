"""What a running node can see: its ids, the node layer's services, progress reporting and cancellation."""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .events import EventHub, Progress, ProgressPreview


# The context of the node running in this thread (set by the executor around each node call), for code that gets no
# context argument: ComfyUI-style packs reach progress, interrupt and folders through module functions.
_RUNNING: contextvars.ContextVar[ExecutionContext | None] = contextvars.ContextVar("graphengine_running_node",
                                                                                   default=None)


def current_context() -> ExecutionContext | None:
    """The context of the node running in this thread, or None outside a node call."""
    return _RUNNING.get()


class Interrupted(Exception):
    """Raised at a cancellation point when the prompt was cancelled."""


class CancelToken:
    """Cooperative cancellation, checked between nodes and at every progress tick."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._error: Exception | None = None

    def cancel(self, error: Exception | None = None) -> None:
        """Cancel; with `error` (e.g. out of memory) the prompt fails with that error instead of being interrupted."""
        if error is not None and not self._event.is_set():
            self._error = error
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            if self._error is not None:
                raise type(self._error)(*self._error.args)
            raise Interrupted("Prompt was interrupted")


@dataclass
class ExecutionContext:
    prompt_id: str
    node_id: str
    services: Any
    events: EventHub
    cancel: CancelToken
    prompt: dict[str, Any] = field(default_factory=dict)
    extra_data: dict[str, Any] = field(default_factory=dict)
    on_progress: Callable[[int, int], None] | None = None
    # Objects a node keeps between prompts, keyed by (node id, class); the executor drops those of nodes that
    # leave the prompt (ComfyUI keeps node instances this way).
    objects: dict[tuple[str, str], Any] | None = None

    def node_object(self, class_type: str, make: Callable[[], Any]) -> Any:
        """This node's kept object of `class_type`, made on first use."""
        if self.objects is None:
            return make()
        key = (self.node_id, class_type)
        if key not in self.objects:
            self.objects[key] = make()
        return self.objects[key]

    @property
    def extra_pnginfo(self) -> dict[str, Any] | None:
        return self.extra_data.get("extra_pnginfo")

    def check_cancelled(self) -> None:
        self.cancel.raise_if_cancelled()

    def progress(self, value: int, total: int, preview: Any = None) -> None:
        """Report progress (e.g. one sampler step); raises Interrupted if the prompt was cancelled."""
        self.cancel.raise_if_cancelled()
        if self.on_progress is not None:  # ComfyUI sends the node's progress_state before the progress message
            self.on_progress(int(value), int(total))
        self.events.emit(Progress(self.prompt_id, node=self.node_id, value=int(value), max=int(total)))
        if preview is not None:
            self.events.emit(ProgressPreview(self.prompt_id, node=self.node_id, image=preview))

    @contextlib.contextmanager
    def active(self) -> Iterator[ExecutionContext]:
        """Make this the `current_context()` for the block."""
        token = _RUNNING.set(self)
        try:
            yield self
        finally:
            _RUNNING.reset(token)
