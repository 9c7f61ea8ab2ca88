"""`server`: `PromptServer.instance` for packs that add HTTP routes or send websocket messages. Its `routes` are
added to a graphengine server when one is built; `send_sync` reaches that server's websocket clients."""

from __future__ import annotations

import logging
import sys
import types
from typing import Any

from aiohttp import web

from graphengine import current_context

from . import make_module

log = logging.getLogger("graphengine.comfy_compat")


class PromptServer:
    """The one instance packs reach as `server.PromptServer.instance`."""

    instance: PromptServer | None = None

    def __init__(self) -> None:
        self.routes = web.RouteTableDef()
        self._bridge: Any = None
        self.last_node_id: str | None = None
        # the server serves each pack's WEB_DIRECTORY itself, so packs must not copy their scripts anywhere
        self.supports = ["custom_nodes_from_web"]

    @property
    def client_id(self) -> str | None:
        """The websocket client of the prompt whose node is running here (None outside a node)."""
        ctx = current_context()
        return ctx.extra_data.get("client_id") if ctx is not None else None

    @property
    def last_prompt_id(self) -> str | None:
        ctx = current_context()
        return ctx.prompt_id if ctx is not None else None

    @property
    def app(self) -> web.Application:
        if self._bridge is None:
            raise RuntimeError("PromptServer.instance.app: no graphengine server is running in this process")
        return self._bridge.app

    def send_sync(self, event: str, data: Any, sid: str | None = None) -> None:
        """A websocket message `{"type": event, "data": data}` to client `sid` (every client when None), from any
        thread; dropped when no server runs (a CLI run has no websocket clients)."""
        if self._bridge is not None:
            self._bridge.send(event, data, sid)

    async def send_json(self, event: str, data: Any, sid: str | None = None) -> None:
        self.send_sync(event, data, sid)

    async def send(self, event: str, data: Any, sid: str | None = None) -> None:
        self.send_sync(event, data, sid)

    def interrupt(self) -> bool:
        return bool(self._bridge is not None and self._bridge.interrupt())

    def attach(self, bridge: Any) -> None:
        """Called while a server is built: its routes are added and messages go to its clients from now on."""
        self._bridge = bridge
        bridge.add_routes(self.routes)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raise AttributeError(f"PromptServer.instance has no attribute {name!r}: graphengine's ComfyUI "
                             f"compatibility layer provides routes, send_sync, send_json, client_id, "
                             f"last_prompt_id and app")


def build() -> types.ModuleType:
    server_class = type("PromptServer", (PromptServer,), {})  # one class per module: `instance` is its own
    server_class.instance = server_class()
    return make_module("server", __doc__, {"PromptServer": server_class, "BinaryEventTypes": BinaryEventTypes})


class BinaryEventTypes:
    PREVIEW_IMAGE = 1
    UNENCODED_PREVIEW_IMAGE = 2
    TEXT = 3


def attach_installed(bridge: Any) -> None:
    """The registry's server extension: attach the installed `server` shim's instance (if packs installed it)."""
    module = sys.modules.get("server")
    server_class = getattr(module, "PromptServer", None)
    if isinstance(server_class, type) and issubclass(server_class, PromptServer) and server_class.instance:
        server_class.instance.attach(bridge)
