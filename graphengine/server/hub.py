"""Websocket fan-out with ComfyUI's protocol: one bounded send queue and one sender task per client, so a slow or
stuck client never delays the others (previews are dropped first; a client whose queue is full of text is cut off).

Messages for a client id with no socket are kept briefly (text only), so a client that connects after posting its
prompt, or reconnects, still gets the rest of that prompt's events."""

from __future__ import annotations

import asyncio
import json
import logging
import struct
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from ..limits import loads_limited

log = logging.getLogger("graphengine.server")

PREVIEW_IMAGE = 1
PREVIEW_IMAGE_WITH_METADATA = 4
IMAGE_FORMATS = {"image/jpeg": 1, "image/png": 2}
BACKLOG_CLIENTS = 64
BACKLOG_MESSAGES = 1024


@dataclass(frozen=True)
class Preview:
    """An encoded preview; its frame type (1 or 4) depends on what each receiving client negotiated."""

    image: bytes
    mime: str
    metadata: dict[str, Any]

    def frame(self, with_metadata: bool) -> bytes:
        if with_metadata:
            meta = json.dumps({**self.metadata, "image_type": self.mime}).encode()
            return struct.pack(">II", PREVIEW_IMAGE_WITH_METADATA, len(meta)) + meta + self.image
        return struct.pack(">II", PREVIEW_IMAGE, IMAGE_FORMATS.get(self.mime, 1)) + self.image


Outgoing = str | Preview  # a JSON text frame, or a preview


@dataclass(eq=False)
class Client:
    sid: str
    ws: web.WebSocketResponse
    request: web.Request
    flags: dict[str, Any] = field(default_factory=dict)
    pending: deque[Outgoing] = field(default_factory=deque)
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task | None = None
    dropped_previews: int = 0
    closed: bool = False


class WebSocketHub:
    def __init__(self, *, queue_limit: int = 512, send_timeout: float = 20.0,
                 server_flags: dict[str, Any] | None = None) -> None:
        self.queue_limit = max(queue_limit, 8)
        self.send_timeout = send_timeout
        self.server_flags = server_flags or {}
        self.clients: dict[str, Client] = {}
        self._backlog: OrderedDict[str, deque[str]] = OrderedDict()
        self._loop: asyncio.AbstractEventLoop | None = None
        # Called on connect with the client's sid; returns extra messages describing work in progress.
        self.on_connect: Callable[[str], list[dict[str, Any]]] = lambda sid: []
        self.status: Callable[[], dict[str, Any]] = lambda: {"exec_info": {"queue_remaining": 0}}
        self.disconnected_slow_clients = 0

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    # -- sending (event loop thread) -----------------------------------------------------------------------------

    def send(self, message: dict[str, Any] | Preview, sid: str | None = None) -> None:
        """Queue a message for client `sid`, or for every client when `sid` is None."""
        out: Outgoing = message if isinstance(message, Preview) else json.dumps(message, default=str)
        if sid is None:
            for client in list(self.clients.values()):
                self._enqueue(client, out)
            return
        client = self.clients.get(sid)
        if client is not None:
            self._enqueue(client, out)
        elif isinstance(out, str):
            self._remember(sid, out)

    def send_threadsafe(self, message: dict[str, Any] | Preview, sid: str | None = None) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(self.send, message, sid)
        except RuntimeError:  # loop shutting down
            pass

    def send_threadsafe_call(self, function: Callable[[], None]) -> None:
        """Run `function` on the event loop, in order with the messages sent so far."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(function)
        except RuntimeError:
            pass

    def broadcast_status(self) -> None:
        self.send({"type": "status", "data": {"status": self.status()}})

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

    def _enqueue(self, client: Client, out: Outgoing) -> None:
        if client.closed:
            return
        if isinstance(out, Preview) and len(client.pending) >= self.queue_limit // 2:
            client.dropped_previews += 1
            return
        if len(client.pending) >= self.queue_limit:
            stale = next((m for m in client.pending if isinstance(m, Preview)), None)
            if stale is None:
                log.warning("websocket client %s is not reading; disconnecting it", client.sid)
                self.disconnected_slow_clients += 1
                self._drop(client)
                return
            client.pending.remove(stale)
            client.dropped_previews += 1
        client.pending.append(out)
        client.wakeup.set()

    async def _pump(self, client: Client) -> None:
        with_metadata = lambda: bool(client.flags.get("supports_preview_metadata"))  # noqa: E731
        while not client.closed:
            if not client.pending:
                client.wakeup.clear()
                await client.wakeup.wait()
                continue
            out = client.pending.popleft()
            try:
                if isinstance(out, Preview):
                    await asyncio.wait_for(client.ws.send_bytes(out.frame(with_metadata())), self.send_timeout)
                else:
                    await asyncio.wait_for(client.ws.send_str(out), self.send_timeout)
            except (asyncio.TimeoutError, ConnectionError, RuntimeError):
                self.disconnected_slow_clients += 1
                self._drop(client)
                return

    def _drop(self, client: Client) -> None:
        """Cut a client off without waiting on it: abort its transport, stop its sender."""
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
            if old.task is not None:
                old.task.cancel()
            asyncio.ensure_future(self._close_quietly(old.ws))
        client.task = asyncio.ensure_future(self._pump(client))
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
        for client in list(self.clients.values()):
            client.closed = True
            if client.task is not None:
                client.task.cancel()
            await self._close_quietly(client.ws)
        self.clients.clear()
