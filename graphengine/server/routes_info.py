"""Read-only information routes: node definitions, system stats, feature flags, model folders."""

from __future__ import annotations

import asyncio
import logging
import os
import platform
import sys
from importlib import metadata
from typing import Any

from aiohttp import web

from .security import json_error
from .state import add_route, off_loop, state_of

log = logging.getLogger("graphengine.server")

SERVER_VERSION = "0.1.0"
# ComfyUI's folder keys, used when the node layer does not say which folders it has.
DEFAULT_MODEL_FOLDERS = ("checkpoints", "configs", "loras", "vae", "text_encoders", "diffusion_models",
                         "clip_vision", "style_models", "embeddings", "diffusers", "vae_approx", "controlnet",
                         "gligen", "upscale_models", "hypernetworks", "photomaker", "classifiers")


def server_flags_of(config) -> dict[str, Any]:
    """The websocket `feature_flags` answer, also served at /features."""
    return {"supports_preview_metadata": True, "max_upload_size": config.max_upload_bytes}


def _folders(state) -> Any:
    try:
        return getattr(state.registry.services, "folders", None)
    except Exception:  # noqa: BLE001 - the node layer may not be able to build its folders
        return None


def folder_names(state) -> list[str]:
    folders = _folders(state)
    for attribute in ("folders", "names", "keys"):
        method = getattr(folders, attribute, None)
        if callable(method):
            try:
                return list(method())
            except Exception:  # noqa: BLE001
                break
    return list(DEFAULT_MODEL_FOLDERS)


def folder_files(state, name: str) -> list[str] | None:
    folders = _folders(state)
    lister = getattr(folders, "list", None)
    if not callable(lister):
        return [] if name in DEFAULT_MODEL_FOLDERS else None
    try:
        return list(lister(name))
    except (KeyError, ValueError):
        return None


def all_node_info(registry) -> dict[str, Any]:
    """Every node definition; one node whose options cannot be computed is logged and left out, so the editor
    still boots."""
    info: dict[str, Any] = {}
    for name in registry.names():
        try:
            info[name] = registry.node_info(name)
        except Exception:  # noqa: BLE001
            log.exception("object_info failed for node %s", name)
    return info


async def object_info(request: web.Request) -> web.Response:
    registry = state_of(request).registry
    info = await asyncio.get_running_loop().run_in_executor(None, all_node_info, registry)
    return web.json_response(info)


async def object_info_node(request: web.Request) -> web.Response:
    registry = state_of(request).registry
    name = request.match_info["node_class"]
    if name not in registry:
        return web.json_response({})
    info = await asyncio.get_running_loop().run_in_executor(None, registry.node_info, name)
    return web.json_response({name: info})


def _memory() -> tuple[int, int]:
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        return os.sysconf("SC_PHYS_PAGES") * page, os.sysconf("SC_AVPHYS_PAGES") * page
    except (ValueError, OSError, AttributeError):
        return 0, 0


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return ""


async def system_stats(request: web.Request) -> web.Response:
    state = state_of(request)
    total, free = _memory()
    devices_of = getattr(state.registry.services, "device_stats", None)
    devices = await off_loop(devices_of) if callable(devices_of) else [
        {"name": "cpu", "type": "cpu", "index": 0, "vram_total": 0, "vram_free": 0,
         "torch_vram_total": 0, "torch_vram_free": 0}]
    return web.json_response({
        "system": {"os": sys.platform, "ram_total": total, "ram_free": free, "comfyui_version": SERVER_VERSION,
                   "required_frontend_version": "", "installed_templates_version": "",
                   "required_templates_version": "", "python_version": sys.version,
                   "pytorch_version": _version("torch"), "embedded_python": False,
                   "deploy_environment": "local", "argv": list(sys.argv), "machine": platform.machine()},
        "devices": devices})


async def features(request: web.Request) -> web.Response:
    return web.json_response(server_flags_of(state_of(request).config))


async def embeddings(request: web.Request) -> web.Response:
    files = await off_loop(folder_files, state_of(request), "embeddings") or []
    return web.json_response([os.path.splitext(f)[0] for f in files])


async def models(request: web.Request) -> web.Response:
    return web.json_response(folder_names(state_of(request)))


async def models_in_folder(request: web.Request) -> web.Response:
    files = await off_loop(folder_files, state_of(request), request.match_info["folder"])
    if files is None:
        return json_error(404, "not_found", "Unknown model folder", request.match_info["folder"][:100])
    return web.json_response(files)


def extension_scripts(web_dirs: dict[str, Any]) -> list[str]:
    """The URLs of the packs' frontend scripts, as ComfyUI lists them (every .js file under WEB_DIRECTORY)."""
    return [f"/extensions/{pack}/{path.relative_to(root).as_posix()}"
            for pack, root in sorted(web_dirs.items()) for path in sorted(root.rglob("*.js")) if path.is_file()]


async def extensions(request: web.Request) -> web.Response:
    return web.json_response(await off_loop(extension_scripts, state_of(request).registry.web_directories()))


async def i18n(request: web.Request) -> web.Response:
    return web.json_response({})


def setup(app: web.Application) -> None:
    add_route(app, "GET", "/object_info", object_info)
    add_route(app, "GET", "/object_info/{node_class}", object_info_node)
    add_route(app, "GET", "/system_stats", system_stats)
    add_route(app, "GET", "/features", features)
    add_route(app, "GET", "/embeddings", embeddings)
    add_route(app, "GET", "/models", models)
    add_route(app, "GET", "/models/{folder}", models_in_folder)
    add_route(app, "GET", "/extensions", extensions)
    add_route(app, "GET", "/i18n", i18n)
