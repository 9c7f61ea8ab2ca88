"""What the route handlers share: the app's state object and small request helpers."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web

from ..admission import AdmissionLimits
from ..limits import JsonTooDeepError, loads_limited
from ..queue import PromptQueue
from ..registry import NodeRegistry
from .config import ServerConfig
from .hub import WebSocketHub
from .security import json_error
from .worker import PromptWorker

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
T = TypeVar("T")


@dataclass
class ServerState:
    config: ServerConfig
    registry: NodeRegistry
    queue: PromptQueue
    hub: WebSocketHub
    worker: PromptWorker
    limits: AdmissionLimits = field(default_factory=AdmissionLimits)

    def status(self) -> dict[str, Any]:
        return {"exec_info": {"queue_remaining": self.queue.remaining()}}


STATE = web.AppKey("graphengine_state", ServerState)


def state_of(request: web.Request) -> ServerState:
    return request.app[STATE]


class BadRequest(Exception):
    """Raised by helpers; turned into ComfyUI's 400 error body by `json_route`."""

    def __init__(self, type_: str, message: str, details: str = "") -> None:
        super().__init__(message)
        self.type = type_
        self.details = details

    def response(self) -> web.Response:
        return json_error(400, self.type, str(self), self.details)


async def off_loop(function: Callable[..., T], *args: Any) -> T:
    """Run blocking work (files, SQLite, large JSON, images) in the thread pool, never on the event loop."""
    return await asyncio.get_running_loop().run_in_executor(None, functools.partial(function, *args))


async def json_off_loop(function: Callable[..., Any], *args: Any) -> web.Response:
    """A JSON response whose value is computed and serialised in the thread pool."""
    body = await off_loop(lambda: json.dumps(function(*args)).encode())
    return web.Response(body=body, content_type="application/json", charset="utf-8")


async def read_json(request: web.Request, *, optional: bool = False) -> Any:
    raw = await request.read()
    if not raw.strip():
        if optional:
            return {}
        raise BadRequest("invalid_json", "Request body is empty; a JSON value is required")
    try:
        return loads_limited(raw)
    except JsonTooDeepError as exc:
        raise BadRequest("invalid_json", "Request body is nested too deeply", str(exc)) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest("invalid_json", "Request body is not valid JSON", str(exc)[:500]) from None


async def read_json_object(request: web.Request, *, optional: bool = False) -> dict[str, Any]:
    body = await read_json(request, optional=optional)
    if not isinstance(body, dict):
        raise BadRequest("invalid_json", "Request body must be a JSON object", f"got {type(body).__name__}")
    return body


MAX_QUERY_INT = 2**63 - 1  # SQLite's largest integer (LIMIT / OFFSET values go there)


def query_int(request: web.Request, name: str, default: int | None = None, minimum: int = 0) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest("invalid_query", f"{name} must be an integer", raw[:100]) from None
    if value < minimum:
        raise BadRequest("invalid_query", f"{name} must be ≥ {minimum}", raw[:100])
    if value > MAX_QUERY_INT:
        raise BadRequest("invalid_query", f"{name} must be ≤ {MAX_QUERY_INT}", raw[:100])
    return value


def query_flag(request: web.Request, name: str, default: bool = False) -> bool:
    raw = request.query.get(name)
    return default if raw is None else raw.lower() in ("true", "1", "yes")


def add_route(app: web.Application, method: str, path: str, handler: Handler) -> None:
    """Register at `path` and at `/api` + `path`, as ComfyUI does."""
    wrapped = _with_bad_request(handler)
    app.router.add_route(method, path, wrapped)
    app.router.add_route(method, "/api" + path, wrapped)


def _with_bad_request(handler: Handler) -> Handler:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except BadRequest as exc:
            return exc.response()

    wrapped.__name__ = getattr(handler, "__name__", "handler")
    return wrapped
