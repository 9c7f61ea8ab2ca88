"""What a server offers the registry's server extensions (ComfyUI-style packs' routes and websocket messages)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from aiohttp import web

from .hub import WebSocketHub
from .worker import PromptWorker

log = logging.getLogger("graphengine.server")


class ServerBridge:
    """Handed to each `registry.add_server_extension` hook while the app is built."""

    def __init__(self, app: web.Application, hub: WebSocketHub, worker: PromptWorker) -> None:
        self.app = app
        self._hub = hub
        self._worker = worker

    def add_routes(self, route_defs: Iterable[web.AbstractRouteDef]) -> None:
        """Add routes (e.g. an aiohttp RouteTableDef); they go before the editor's catch-all static route."""
        self.app.router.add_routes(route_defs)

    def send(self, event_type: str, data: Any, sid: str | None = None) -> None:
        """A websocket message `{"type", "data"}` to client `sid` (every client when None), from any thread."""
        self._hub.send_threadsafe({"type": event_type, "data": data}, sid)

    def interrupt(self) -> bool:
        """Interrupt the running prompt (False when none runs)."""
        return self._worker.interrupt()


def attach_extensions(app: web.Application, hub: WebSocketHub, worker: PromptWorker, extensions: list[Any]) -> None:
    """Run each extension hook; one that fails is logged and skipped, never stopping the server."""
    bridge = ServerBridge(app, hub, worker)
    for attach in extensions:
        try:
            attach(bridge)
        except Exception:  # noqa: BLE001 - a pack's hook must not take the server down
            log.exception("server extension %r failed", attach)
