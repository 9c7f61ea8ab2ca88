"""Websocket fan-out with ComfyUI's protocol: one send queue and one sender task per client, so a slow or stuck
client never delays the others.

A client that falls behind (its sender is waiting for the socket, or many frames are pending) gets its state frames
merged and its previews dropped (see `outbox`); events carrying results are always delivered, in order. A client is
cut off only when it has read nothing for `send_timeout` seconds, or when its pending frames pass `max_pending_bytes`
while it is not reading. Messages from the worker thread are encoded there and handed to the loop in batches.

Messages for a client id with no socket are kept briefly (text only), so a client that connects after posting its
prompt, or reconnects, still gets the rest of that prompt's events."""

from __future__ import annotations

import asyncio
import json
import logging
import struct
import threading
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from ..limits import loads_limited
from .outbox import Key, Outbox, message_key, preview_key

log = logging.getLogger("graphengine.server")

PREVIEW_IMAGE = 1
PREVIEW_IMAGE_WITH_METADATA = 4
IMAGE_FORMATS = {"image/jpeg": 1, "image/png": 2}
BACKLOG_CLIENTS = 64
BACKLOG_MESSAGES = 1024
MAX_PENDING_BYTES = 64 * 1024 * 1024
STALL_GRACE = 1.0  # seconds without a completed send after which a client over its byte budget is cut off
FRAMES_PER_TURN = 64  # a sender yields the loop after this many frames written without waiting
INBOX_BATCH = 2048  # messages from the worker thread handled per loop callback


@dataclass(frozen=True)
class Preview:
    """An encoded preview; its frame type (1 or 4) depends on what each receiving client negotiated."""

    image: bytes
    mime: str
    metadata: dict[str, Any]
    # Only for sockets that declared `supports_preview_metadata` (the editor): plain API clients that read every
    # binary frame as a result image get no previews they did not ask for.
    negotiated_only: bool = False

    def frame(self, with_metadata: bool) -> bytes:
        if with_metadata:
            meta = json.dumps({**self.metadata, "image_type": self.mime}).encode()
            return struct.pack(">II", PREVIEW_IMAGE_WITH_METADATA, len(meta)) + meta + self.image
        return struct.pack(">II", PREVIEW_IMAGE, IMAGE_FORMATS.get(self.mime, 1)) + self.image


Outgoing = str | Preview  # a JSON text frame, or a preview


def encode(message: dict[str, Any] | Preview) -> tuple[Outgoing, Key | None]:
    """The frame to queue for a message, and its merge key."""
    if isinstance(message, Preview):
        return message, preview_key(message.metadata)
    return json.dumps(message, default=str), message_key(message)


def payload_size(out: Outgoing) -> int:
    return len(out.image) + 256 if isinstance(out, Preview) else len(out)


@dataclass(eq=False)
class Client:
    sid: str
    ws: web.WebSocketResponse
    request: web.Request
    flags: dict[str, Any] = field(default_factory=dict)
    pending: Outbox = field(default_factory=Outbox)
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task | None = None
    sending_since: float | None = None  # loop time the frame being written started; None when idle
    dropped_previews: int = 0
    merged_frames: int = 0
    closed: bool = False


class WebSocketHub:
    def __init__(self, *, queue_limit: int = 512, send_timeout: float = 20.0,
                 server_flags: dict[str, Any] | None = None, max_pending_bytes: int = MAX_PENDING_BYTES) -> None:
        self.queue_limit = max(queue_limit, 8)
        self.send_timeout = send_timeout
        self.max_pending_bytes = max_pending_bytes
        self.server_flags = server_flags or {}
        self.clients: dict[str, Client] = {}
        self._backlog: OrderedDict[str, deque[str]] = OrderedDict()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._inbox: deque[tuple[Callable[..., None], tuple]] = deque()
        self._inbox_lock = threading.Lock()
        self._inbox_scheduled = False
        self._watchdog: asyncio.Task | None = None
        # Called on connect with the client's sid; returns extra messages describing work in progress.
        self.on_connect: Callable[[str], list[dict[str, Any]]] = lambda sid: []
        self.status: Callable[[], dict[str, Any]] = lambda: {"exec_info": {"queue_remaining": 0}}
        self.disconnected_slow_clients = 0

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    # -- sending (event loop thread) -----------------------------------------------------------------------------

    def send(self, message: dict[str, Any] | Preview, sid: str | None = None) -> None:
        """Queue a message for client `sid`, or for every client when `sid` is None."""
        self._deliver(*encode(message), sid)

    def _deliver(self, out: Outgoing, key: Key | None, sid: str | None) -> None:
        if sid is None:
            for client in list(self.clients.values()):
                self._enqueue(client, out, key)
            return
        client = self.clients.get(sid)
        if client is not None:
            self._enqueue(client, out, key)
        elif isinstance(out, str):
            self._remember(sid, out)

    # -- sending (any thread) ------------------------------------------------------------------------------------

    def send_threadsafe(self, message: dict[str, Any] | Preview, sid: str | None = None) -> None:
        """`send` from another thread: the message is encoded here, then queued on the loop with its batch."""
        out, key = encode(message)
        self._post(self._deliver, (out, key, sid))

    def send_negotiated_threadsafe(self, message: dict[str, Any], sid: str | None = None) -> None:
        """`send_threadsafe` to sockets that declared `supports_preview_metadata` (the editor) only."""
        out, key = encode(message)
        self._post(self._deliver_negotiated, (out, key, sid))

    def _deliver_negotiated(self, out: Outgoing, key: Key | None, sid: str | None) -> None:
        for client in list(self.clients.values()) if sid is None else [self.clients.get(sid)]:
            if client is not None and client.flags.get("supports_preview_metadata"):
                self._enqueue(client, out, key)

    def send_threadsafe_call(self, function: Callable[[], None]) -> None:
        """Run `function` on the event loop, in order with the messages sent so far."""
        self._post(function, ())

    def _post(self, function: Callable[..., None], args: tuple) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        self._inbox.append((function, args))
        with self._inbox_lock:
            if self._inbox_scheduled:
                return
            self._inbox_scheduled = True
        try:
            loop.call_soon_threadsafe(self._drain_inbox)
        except RuntimeError:  # loop shutting down
            pass

    def _drain_inbox(self) -> None:
        with self._inbox_lock:
            self._inbox_scheduled = False
        for _ in range(INBOX_BATCH):
            try:
                function, args = self._inbox.popleft()
            except IndexError:
                return
            try:
                function(*args)
            except Exception:  # noqa: BLE001 - one bad message must not stop the rest
                log.exception("websocket hub callback failed")
        with self._inbox_lock:  # more left: finish them on a later turn, after other ready callbacks
            if self._inbox_scheduled:
                return
            self._inbox_scheduled = True
        asyncio.get_running_loop().call_soon(self._drain_inbox)

    def broadcast_status(self) -> None:
        self.send({"type": "status", "data": {"status": self.status()}})

    def broadcast_status_threadsafe(self) -> None:
        """`broadcast_status` from another thread, with the queue counted now rather than when the loop gets to it."""
        self.send_threadsafe({"type": "status", "data": {"status": self.status()}})

    def expect(self, sid: str) -> None:
        """Start keeping messages for a client id that has no socket yet (its prompt was just queued)."""
        if sid not in self.clients and sid not in self._backlog:
            self._backlog[sid] = deque(maxlen=BACKLOG_MESSAGES)
            while len(self._backlog) > BACKLOG_CLIENTS:
                self._backlog.popitem(last=False)

    def _remember(self, sid: str, text: str) -> None:
        backlog = self._backlog.get(sid)
        if backlog is not None:
            backlog.append(text)
            self._backlog.move_to_end(sid)

    def _enqueue(self, client: Client, out: Outgoing, key: Key | None = None) -> None:
        if client.closed:
            return
        if isinstance(out, Preview) and out.negotiated_only and not client.flags.get("supports_preview_metadata"):
            return
        pending = client.pending
        behind = client.sending_since is not None or len(pending) >= self.queue_limit
        size = payload_size(out)
        if behind and key is not None and pending.merge(out, key, size):
            if isinstance(out, Preview):
                client.dropped_previews += 1
            else:
                client.merged_frames += 1
        elif isinstance(out, Preview) and behind and len(pending) >= self.queue_limit // 2:
            client.dropped_previews += 1
        else:
            pending.push(out, key, size)
        if pending.bytes > self.max_pending_bytes:
            self._over_budget(client)
        client.wakeup.set()

    def _over_budget(self, client: Client) -> None:
        """Previews go first; a client still over its byte budget is cut off once it has stopped reading."""
        client.dropped_previews += client.pending.discard(Preview)
        if client.pending.bytes <= self.max_pending_bytes:
            return
        since = client.sending_since
        if since is not None and asyncio.get_running_loop().time() - since > STALL_GRACE:
            self._drop(client, f"{client.pending.bytes} bytes wait for it and it is not reading")

    async def _pump(self, client: Client) -> None:
        loop = asyncio.get_running_loop()
        ws, pending, written = client.ws, client.pending, 0
        try:
            while not client.closed:
                if not pending:
                    client.wakeup.clear()
                    await client.wakeup.wait()
                    continue
                out = pending.pop()
                client.sending_since = loop.time()
                if isinstance(out, Preview):
                    await ws.send_bytes(out.frame(bool(client.flags.get("supports_preview_metadata"))))
                else:
                    await ws.send_str(out)
                client.sending_since = None
                written += 1
                if written % FRAMES_PER_TURN == 0:
                    await asyncio.sleep(0)
        except (ConnectionError, RuntimeError):  # the client went away while we wrote
            self._drop(client)

    async def _watch(self) -> None:
        interval = max(0.05, min(1.0, self.send_timeout / 4))
        while True:
            await asyncio.sleep(interval)
            self._cut_stalled(asyncio.get_running_loop().time())

    def _cut_stalled(self, now: float) -> None:
        """Cut off every client whose current frame has waited longer than `send_timeout` for the socket."""
        for client in list(self.clients.values()):
            since = client.sending_since
            if since is not None and now - since > self.send_timeout:
                self._drop(client, f"it read nothing for {self.send_timeout:g} s")

    def _drop(self, client: Client, reason: str | None = None) -> None:
        """Cut a client off without waiting on it: abort its transport, stop its sender, free its queue. With a
        `reason` it is counted and logged as a client that did not keep up."""
        if client.closed:
            return
        if reason is not None:
            log.warning("websocket client %s disconnected: %s", client.sid, reason)
            self.disconnected_slow_clients += 1
        client.closed = True
        client.pending.clear()
        if self.clients.get(client.sid) is client:
            del self.clients[client.sid]
        transport = client.request.transport
        if transport is not None:
            transport.abort()
        if client.task is not None and client.task is not asyncio.current_task():
            client.task.cancel()

    # -- connection handler --------------------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=1024 * 1024)
        await ws.prepare(request)
        sid = request.query.get("clientId") or uuid.uuid4().hex
        sid = sid[:200]
        old = self.clients.get(sid)
        client = Client(sid, ws, request)
        self.clients[sid] = client
        if old is not None:  # ComfyUI replaces the socket of a reconnecting id
            old.closed = True
            old.pending.clear()
            if old.task is not None:
                old.task.cancel()
            asyncio.ensure_future(self._close_quietly(old.ws))
        client.task = asyncio.ensure_future(self._pump(client))
        if self._watchdog is None or self._watchdog.done():
            self._watchdog = asyncio.ensure_future(self._watch())
        self._enqueue(client, json.dumps({"type": "status", "data": {"status": self.status(), "sid": sid}}))
        missed = self._backlog.pop(sid, None)
        for text in missed or ():
            self._enqueue(client, text)
        if not missed:
            for message in self.on_connect(sid):
                self._enqueue(client, json.dumps(message))
        first = True
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT and first:
                    self._handle_first_frame(client, msg.data)
                first = False
        finally:
            if self.clients.get(sid) is client:
                del self.clients[sid]
                self.expect(sid)  # keep what it misses until it reconnects
            client.closed = True
            client.pending.clear()
            if client.task is not None:
                client.task.cancel()
        return ws

    def _handle_first_frame(self, client: Client, text: str) -> None:
        try:
            message = loads_limited(text)
        except ValueError:  # not JSON, or nested too deeply: ignored like any unknown first frame
            return
        if isinstance(message, dict) and message.get("type") == "feature_flags" and \
                isinstance(message.get("data"), dict):
            client.flags = message["data"]
            self._enqueue(client, json.dumps({"type": "feature_flags", "data": self.server_flags}))

    @staticmethod
    async def _close_quietly(ws: web.WebSocketResponse) -> None:
        try:
            await asyncio.wait_for(ws.close(), 5)
        except Exception:  # noqa: BLE001 - the old socket is being discarded anyway
            pass

    async def close_all(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        for client in list(self.clients.values()):
            client.closed = True
            if client.task is not None:
                client.task.cancel()
            await self._close_quietly(client.ws)
        self.clients.clear()
