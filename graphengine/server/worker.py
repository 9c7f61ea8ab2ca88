"""The worker thread: takes prompts from the persistent queue, runs them, writes history, and streams events."""

from __future__ import annotations

import gc
import io
import logging
import threading
import traceback
from dataclasses import dataclass, field
from typing import Any

from ..cache import ResultCache
from ..context import CancelToken
from ..events import Event, Executed, Executing, ProgressPreview, ProgressState, now_ms
from ..executor import ExecutionResult, Executor
from ..memory import MemoryGuard, process_rss
from ..queue import PromptQueue, QueueItem
from ..registry import NodeRegistry
from ..validation import PromptValidationError, validate_prompt
from .config import DEFAULT_MAX_PROMPT_ATTEMPTS
from .hub import Preview, WebSocketHub

log = logging.getLogger("graphengine.server")

# ComfyUI's rule for prompts posted without client_id: these still reach every socket, the rest is not sent.
BROADCAST_WITHOUT_CLIENT = frozenset({"progress", "progress_state", "execution_interrupted"})


@dataclass
class RunningPrompt:
    item: QueueItem
    cancel: CancelToken = field(default_factory=CancelToken)
    previews: bool = False
    previews_negotiated_only: bool = False
    node: str | None = None
    done: set[str] = field(default_factory=set)  # nodes the editor has been told are done (see _mark_done)
    stopping: bool = False


def previews_enabled(server_method: str, extra_data: dict[str, Any]) -> bool:
    requested = extra_data.get("preview_method")
    method = requested if isinstance(requested, str) and requested not in ("", "default") else server_method
    return method != "none"


def previews_negotiated_only(server_method: str, extra_data: dict[str, Any]) -> bool:
    """The server's "auto" (the default) previews only to sockets that negotiated them (the editor); a method named
    by the prompt or a specific server method previews to every socket, as ComfyUI does."""
    requested = extra_data.get("preview_method")
    return server_method == "auto" and not (isinstance(requested, str) and requested not in ("", "default"))


def encode_preview(image: Any, max_size: int) -> tuple[bytes, str] | None:
    """JPEG bytes of a PIL image (or array) shrunk to fit `max_size`; None if it is not an image."""
    from PIL import Image

    try:
        picture = image if isinstance(image, Image.Image) else Image.fromarray(image)
        picture = picture.convert("RGB")
        if max(picture.size) > max_size:
            picture.thumbnail((max_size, max_size), Image.Resampling.BILINEAR)
        buffer = io.BytesIO()
        picture.save(buffer, format="JPEG", quality=95)
    except Exception:  # noqa: BLE001 - a bad preview must never fail the prompt
        log.debug("preview not encodable", exc_info=True)
        return None
    return buffer.getvalue(), "image/jpeg"


def failure_result(prompt_id: str, exc: BaseException, *, error_type: str | None = None) -> ExecutionResult:
    """A history-ready result for a prompt that could not run at all (invalid after restart, engine bug)."""
    error = {"prompt_id": prompt_id, "node_id": None, "node_type": None, "executed": [],
             "exception_message": str(exc) or type(exc).__name__,
             "exception_type": error_type or type(exc).__name__,
             "traceback": traceback.format_exception(exc), "current_inputs": {}, "current_outputs": [],
             "timestamp": now_ms()}
    return ExecutionResult(prompt_id, "error", error=error,
                           messages=[["execution_start", {"prompt_id": prompt_id, "timestamp": now_ms()}],
                                     ["execution_error", error]])


class AbandonedPromptError(RuntimeError):
    """The server process died while this prompt ran, as many times as it may; it is not run again."""

    def __init__(self, attempts: int) -> None:
        times = {1: "once", 2: "twice"}.get(attempts, f"{attempts} times")
        super().__init__(f"the server stopped while running this prompt, {times}; it will not be run again "
                         "automatically (queue it again to retry)")
        self.attempts = attempts


def history_parts(result: ExecutionResult) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(outputs, status, meta) of a ComfyUI history entry; every output value is a list."""
    outputs = {node: {k: (v if isinstance(v, list) else [v]) for k, v in ui.items()}
               for node, ui in result.outputs.items()}
    status = {"status_str": "success" if result.ok else "error", "completed": result.ok,
              "messages": result.messages}
    meta = {node: {"node_id": node, "display_node": node, "parent_node": None, "real_node_id": node}
            for node in outputs}
    return outputs, status, meta


class PromptWorker:
    def __init__(self, queue: PromptQueue, registry: NodeRegistry, hub: WebSocketHub, *,
                 preview_method: str = "auto", preview_size: int = 512, cache: ResultCache | None = None,
                 memory_budget: int | None = None, max_attempts: int = DEFAULT_MAX_PROMPT_ATTEMPTS) -> None:
        self.queue = queue
        self.max_attempts = max_attempts
        self.registry = registry
        self.hub = hub
        self.preview_method = preview_method
        self.preview_size = preview_size
        self.memory_budget = memory_budget  # RSS over this cancels the running prompt with an out-of-memory error
        self.executor = Executor(registry, cache, emit_done=False)
        self.executor.events.subscribe(self._on_event)
        self._lock = threading.Lock()
        self._current: RunningPrompt | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._free_flags = {"unload_models": False, "free_memory": False}
        self._sensitive: dict[str, dict[str, Any]] = {}

    # -- control (any thread) --------------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="graphengine-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after cancelling the running prompt, which goes back to the queue (it runs again next start)."""
        self._stop.set()
        with self._lock:
            if self._current is not None:
                self._current.stopping = True
                self._current.cancel.cancel()
        self.queue.wake()
        if self._thread is not None:
            self._thread.join(timeout)

    def interrupt(self, prompt_id: str | None = None) -> bool:
        """Cancel the running prompt (only if it is `prompt_id`, when given)."""
        with self._lock:
            run = self._current
            if run is None or (prompt_id is not None and run.item.prompt_id != prompt_id):
                return False
            run.cancel.cancel()
            return True

    def request_free(self, unload_models: bool, free_memory: bool) -> None:
        with self._lock:
            self._free_flags["unload_models"] |= unload_models
            self._free_flags["free_memory"] |= free_memory

    def keep_sensitive(self, prompt_id: str, values: dict[str, Any]) -> None:
        """Secrets from extra_data: given to the nodes, never written to the queue database or history."""
        with self._lock:
            if values:
                self._sensitive[prompt_id] = values
            else:
                self._sensitive.pop(prompt_id, None)

    def running_prompt_id(self) -> str | None:
        with self._lock:
            return self._current.item.prompt_id if self._current else None

    def reconnect_messages(self, sid: str) -> list[dict[str, Any]]:
        """What a client that reconnects learns about its running prompt (ComfyUI: the executing node)."""
        with self._lock:
            run = self._current
            if run is None or run.item.client_id != sid or run.node is None:
                return []
            return [Executing(run.item.prompt_id, node=run.node).message()]

    # -- the thread ------------------------------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._apply_free()
            item = self.queue.get(timeout=0.5)
            if item is None:
                continue
            try:
                self._run(item)
            except Exception:  # noqa: BLE001 - the worker must survive anything
                log.exception("worker failed on prompt %s", item.prompt_id)

    def _run(self, item: QueueItem) -> None:
        run = RunningPrompt(item, previews=previews_enabled(self.preview_method, item.extra_data),
                            previews_negotiated_only=previews_negotiated_only(self.preview_method, item.extra_data))
        with self._lock:
            self._current = run
            secrets = self._sensitive.pop(item.prompt_id, {})
        self.hub.broadcast_status_threadsafe()
        if item.attempts >= self.max_attempts:
            log.error("prompt %s was running when the server died %d times: failing it", item.prompt_id,
                      item.attempts)
            result = failure_result(item.prompt_id, AbandonedPromptError(item.attempts))
            self._publish_failure(item, result)
        else:
            result = self._execute(item, run, {**item.extra_data, **secrets})
        if run.stopping and result.status == "interrupted":
            self.queue.requeue(item.prompt_id)
            with self._lock:
                self._current = None
            return
        outputs, status, meta = history_parts(result)
        try:
            self.queue.finish(item.prompt_id, outputs, status, meta)
        finally:
            with self._lock:
                self._current = None
        self.hub.broadcast_status_threadsafe()
        self.hub.send_threadsafe({"type": "executing", "data": {"node": None, "prompt_id": item.prompt_id}},
                                 item.client_id)

    def _execute(self, item: QueueItem, run: RunningPrompt, extra_data: dict[str, Any]) -> ExecutionResult:
        try:
            validated = validate_prompt(item.prompt, self.registry, item.outputs or None)
        except PromptValidationError as exc:
            result = failure_result(item.prompt_id, exc, error_type="PromptValidationError")
            self._publish_failure(item, result)
            return result
        self._make_room()
        try:
            with MemoryGuard(self.memory_budget, run.cancel):
                return self.executor.execute(validated, prompt_id=item.prompt_id, extra_data=extra_data,
                                             cancel=run.cancel)
        except Exception as exc:  # noqa: BLE001 - an engine bug becomes a failed prompt, not a dead worker
            log.exception("executor failed on prompt %s", item.prompt_id)
            result = failure_result(item.prompt_id, exc)
            self._publish_failure(item, result)
            return result

    def _make_room(self) -> None:
        """Already over the memory budget before a prompt starts: drop cached results rather than fail it."""
        rss = process_rss()
        if self.memory_budget and rss is not None and rss > self.memory_budget:
            log.warning("RSS over the memory budget before a prompt; clearing the result cache")
            self.executor.cache.clear()
            gc.collect()

    def _publish_failure(self, item: QueueItem, result: ExecutionResult) -> None:
        if item.client_id:
            for event_type, data in result.messages:
                self.hub.send_threadsafe({"type": event_type, "data": data}, item.client_id)

    def _apply_free(self) -> None:
        with self._lock:
            flags = dict(self._free_flags)
            self._free_flags = {"unload_models": False, "free_memory": False}
        if not (flags["unload_models"] or flags["free_memory"]):
            return
        self.executor.cache.clear()  # cached outputs (latents, images, conditioning) take RAM too
        unload = getattr(self.registry.services, "unload_models", None)
        if flags["unload_models"] and callable(unload):
            try:
                unload()
            except Exception:  # noqa: BLE001
                log.exception("unload_models failed")
        gc.collect()

    # -- events (worker thread) ------------------------------------------------------------------------------------

    def _on_event(self, event: Event) -> None:
        run = self._current
        if run is None or event.prompt_id != run.item.prompt_id:
            return
        client_id = run.item.client_id
        if isinstance(event, Executing):
            run.node = event.node
        if isinstance(event, ProgressPreview):
            self._send_preview(run, event)
            return
        if isinstance(event, Executed):
            run.done.add(event.node)
        if client_id:
            self.hub.send_threadsafe(event.message(), client_id)
        elif event.type in BROADCAST_WITHOUT_CLIENT:
            self.hub.send_threadsafe(event.message(), None)
        if isinstance(event, ProgressState):
            self._mark_done(run, event)

    def _mark_done(self, run: RunningPrompt, event: ProgressState) -> None:
        """The editor's total progress counts the nodes it got `executed` (or `execution_cached`) for, and ComfyUI
        sends `executed` only for nodes with UI output, so "Total" would stay at 0 % until the end. Each finished
        node without output gets an `executed` with an empty output (merged: it changes nothing shown), to the
        editor's sockets only: API clients see ComfyUI's events unchanged."""
        for node_id, state in event.nodes.items():
            if state.get("state") == "finished" and node_id not in run.done:
                run.done.add(node_id)
                if self._is_output_node(run, node_id):  # its own `executed` follows
                    continue
                message = {"type": "executed", "data": {"node": node_id, "display_node": node_id, "output": {},
                                                        "prompt_id": event.prompt_id, "merge": True}}
                self.hub.send_negotiated_threadsafe(message, run.item.client_id or None)

    def _is_output_node(self, run: RunningPrompt, node_id: str) -> bool:
        entry = run.item.prompt.get(node_id)
        schema = self.registry.get(entry.get("class_type", "")) if isinstance(entry, dict) else None
        return bool(schema and schema.output_node)

    def _send_preview(self, run: RunningPrompt, event: ProgressPreview) -> None:
        if not run.previews:
            return
        encoded = encode_preview(event.image, self.preview_size)
        if encoded is None:
            return
        node = event.node
        metadata = {"node_id": node, "prompt_id": event.prompt_id, "display_node_id": node,
                    "parent_node_id": None, "real_node_id": node}
        self.hub.send_threadsafe(Preview(encoded[0], encoded[1], metadata, run.previews_negotiated_only),
                                 run.item.client_id)
