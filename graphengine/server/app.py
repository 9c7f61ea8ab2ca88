"""The application factory: one aiohttp app owning its queue, websocket hub and worker thread (no globals)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from aiohttp import web

from ..admission import AdmissionLimits
from ..cache import ResultCache, default_sizeof
from ..queue import PromptQueue
from ..registry import NodeRegistry
from ..runtime import build_registry
from . import jobs, routes_files, routes_info, routes_queue, routes_user, static, templates
from .config import ServerConfig
from .extensions import attach_extensions
from .hub import WebSocketHub
from .security import error_middleware, security_middleware
from .state import STATE, ServerState
from .worker import PromptWorker

log = logging.getLogger("graphengine.server")


def create_app(config: ServerConfig, registry: NodeRegistry | None = None, *,
               cache: ResultCache | None = None) -> web.Application:
    """Build the server. The worker thread starts with the app and stops (requeueing its prompt) on cleanup."""
    if not config.loopback_only and not config.auth_token:
        raise ValueError(f"listening on {config.listen!r} (not loopback) requires an auth token")
    if registry is None:
        registry = build_registry(config.runtime_config())
    queue = PromptQueue(config.database, config.max_history)
    hub = WebSocketHub(queue_limit=config.ws_queue_limit, send_timeout=config.ws_send_timeout,
                       server_flags=routes_info.server_flags_of(config))
    limits = AdmissionLimits.for_machine(registry.services, **config.limits)
    if cache is None:
        sizeof = getattr(registry.services, "result_sizeof", None) or default_sizeof
        cache = ResultCache(sizeof=sizeof, max_entries=config.cache_entries)
    worker = PromptWorker(queue, registry, hub, preview_method=config.preview_method,
                          preview_size=config.preview_size, cache=cache, memory_budget=limits.memory_budget,
                          max_attempts=config.max_prompt_attempts)
    state = ServerState(config, registry, queue, hub, worker, limits)
    hub.status = state.status
    hub.on_connect = worker.reconnect_messages

    app = web.Application(client_max_size=config.max_upload_bytes,
                          middlewares=[error_middleware, security_middleware(config)])
    app[STATE] = state
    for module in (routes_queue, routes_files, routes_info, routes_user, jobs):
        module.setup(app)
    app.router.add_get("/ws", hub.handle)
    app.router.add_get("/api/ws", hub.handle)
    templates.setup(app, templates.TemplateLibrary(registry))
    attach_extensions(app, hub, worker, registry.server_extensions())
    static.setup(app, static.frontend_root())  # last: the editor's web root catches every other path

    async def start(app: web.Application) -> None:
        for folder in (config.output_dir, config.input_dir, config.temp_dir, config.user_dir):
            Path(folder).mkdir(parents=True, exist_ok=True)
        loop = asyncio.get_running_loop()
        hub.bind(loop)
        # Heavy imports and folder scans happen here, in a thread, before the first request: never on the loop.
        for failure in await loop.run_in_executor(None, registry.warm_up):
            log.warning("warm-up: %s", failure)
        worker.start()

    async def shutdown(app: web.Application) -> None:
        await hub.close_all()

    async def cleanup(app: web.Application) -> None:
        await asyncio.get_running_loop().run_in_executor(None, worker.stop)
        queue.close()

    app.on_startup.append(start)
    app.on_shutdown.append(shutdown)
    app.on_cleanup.append(cleanup)
    return app
