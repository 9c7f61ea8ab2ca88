"""Serving the official ComfyUI editor (the optional `comfyui-frontend-package` wheel) and the small boot routes it
calls that have no engine meaning (blueprints, templates, model library, terminal panel).

The package is located with `importlib.util.find_spec`, which reads no module code; only its `static/` folder is
served. Without the package `/` answers a short text that says how to install it."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from aiohttp import web

from .routes_info import folder_files, folder_names
from .security import PathRejected, check_component, contained_path, json_error
from .state import add_route, json_off_loop, off_loop, state_of

FRONTEND_PACKAGE = "comfyui_frontend_package"
NO_STORE = {"Cache-Control": "no-store, must-revalidate", "Pragma": "no-cache", "Expires": "0"}
NO_EDITOR_TEXT = (
    "graphengine server: the ComfyUI-compatible API is under /api (and the bare paths).\n"
    "The web editor is not installed. Install it with:\n"
    "    pip install 'graphengine[editor]'     (or: pip install comfyui-frontend-package==1.58.1)\n"
    "then restart the server and open this page again.\n"
)
JS_MIME = "application/javascript; charset=utf-8"  # ES modules are refused under a non-JS type
INTERNAL_FILE_DIRS = ("output", "input", "temp")


def frontend_root() -> Path | None:
    """The editor's web root (`comfyui_frontend_package/static`) or None when the package is not installed."""
    try:
        spec = importlib.util.find_spec(FRONTEND_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    for location in spec.submodule_search_locations or ():
        root = Path(location) / "static"
        if (root / "index.html").is_file():
            return root
    return None


# -- the web root -----------------------------------------------------------------------------------------------------

def index_handler(web_root: Path | None):
    async def index(request: web.Request) -> web.StreamResponse:
        if web_root is None:
            return web.Response(text=NO_EDITOR_TEXT, headers={"Cache-Control": "no-store"})
        return web.FileResponse(web_root / "index.html", headers=NO_STORE)

    return index


def static_handler(web_root: Path):
    """Files under the web root, GET/HEAD only; every other method and every miss is a JSON 404 (not 405), so a
    mistyped API call reads the same with or without the editor installed."""

    async def serve_file(request: web.Request) -> web.StreamResponse:
        return await serve_static(request, web_root, request.match_info["path"])

    return serve_file


async def serve_static(request: web.Request, web_root: Path, relative: str) -> web.StreamResponse:
    """The file at `relative` under `web_root` (GET/HEAD), or a JSON 404; paths that escape are rejected."""
    if request.method not in ("GET", "HEAD"):
        return json_error(404, "not_found", "Not found", request.path[:200])
    try:
        check_component(relative, "path", allow_slash=True)
        path = contained_path(web_root, relative)
    except PathRejected as exc:
        return exc.response()
    if not path.is_file():
        return json_error(404, "not_found", "Not found", request.path[:200])
    headers = {"Content-Type": JS_MIME} if path.suffix in (".js", ".mjs") else None
    return web.FileResponse(path, headers=headers)


def pack_extension_handler(web_root: Path | None):
    """A custom node pack's frontend files (its WEB_DIRECTORY) at /extensions/<pack>/…; other /extensions/ paths
    (the editor's own, e.g. /extensions/core/) come from the web root."""

    async def serve_extension(request: web.Request) -> web.StreamResponse:
        pack = request.match_info["pack"]
        root = state_of(request).registry.web_directories().get(pack)
        if root is not None:
            return await serve_static(request, root, request.match_info["path"])
        if web_root is None:
            return json_error(404, "not_found", "Not found", request.path[:200])
        return await serve_static(request, web_root, f"extensions/{pack}/{request.match_info['path']}")

    return serve_extension


# -- boot routes without engine meaning ---------------------------------------------------------------------------------

async def empty_object(request: web.Request) -> web.Response:
    return web.json_response({})


async def no_global_subgraph(request: web.Request) -> web.Response:
    return json_error(404, "not_found", "No such subgraph blueprint", request.match_info["subgraph_id"][:100])


def _folder_paths(state, name: str) -> list[str]:
    folders = getattr(state.registry.services, "folders", None)
    paths_of = getattr(folders, "paths", None)
    if not callable(paths_of):
        return []
    try:
        return [str(p) for p in paths_of(name)]
    except (KeyError, ValueError):
        return []


async def experiment_models(request: web.Request) -> web.Response:
    state = state_of(request)
    return web.json_response([{"name": name, "folders": _folder_paths(state, name)} for name in folder_names(state)])


def _model_entry(roots: list[str], name: str) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": name, "pathIndex": 0}
    for index, root in enumerate(roots):
        path = os.path.join(root, name)
        if os.path.exists(path):
            stat = os.stat(path)
            entry.update(pathIndex=index, modified=stat.st_mtime, created=stat.st_ctime, size=stat.st_size)
            break
    return entry


async def experiment_models_in_folder(request: web.Request) -> web.Response:
    state = state_of(request)
    folder = request.match_info["folder"]
    files = await off_loop(folder_files, state, folder)
    if files is None:
        return json_error(404, "not_found", "Unknown model folder", folder[:100])
    roots = _folder_paths(state, folder)
    return await json_off_loop(lambda: [_model_entry(roots, name) for name in files])


async def internal_folder_paths(request: web.Request) -> web.Response:
    state = state_of(request)
    return web.json_response({name: _folder_paths(state, name) for name in folder_names(state)})


async def internal_files(request: web.Request) -> web.Response:
    """File names of the output/input/temp folder, newest first (the editor's assets panel)."""
    kind = request.match_info["directory_type"]
    if kind not in INTERNAL_FILE_DIRS:
        return json_error(400, "invalid_directory_type", "directory_type must be output, input or temp", kind[:50])
    config = state_of(request).config
    root = Path({"output": config.output_dir, "input": config.input_dir, "temp": config.temp_dir}[kind])
    return await json_off_loop(newest_first, root)


def newest_first(root: Path) -> list[str]:
    files = [entry for entry in os.scandir(root) if entry.is_file()] if root.is_dir() else []
    files.sort(key=lambda entry: entry.stat().st_mtime, reverse=True)
    return [entry.name for entry in files]


async def internal_logs(request: web.Request) -> web.Response:
    return web.Response(text="")


async def internal_logs_raw(request: web.Request) -> web.Response:
    return web.json_response({"entries": [], "size": {"cols": 80, "rows": 24}})


async def internal_logs_subscribe(request: web.Request) -> web.Response:
    return web.Response(status=200)


def setup(app: web.Application, web_root: Path | None) -> None:
    """Register the editor's boot routes, `/`, and (last, so every API route wins) the static web root."""
    add_route(app, "GET", "/global_subgraphs", empty_object)
    add_route(app, "GET", "/global_subgraphs/{subgraph_id}", no_global_subgraph)
    add_route(app, "GET", "/node_replacements", empty_object)
    add_route(app, "GET", "/workflow_templates", empty_object)
    add_route(app, "GET", "/experiment/models", experiment_models)
    add_route(app, "GET", "/experiment/models/{folder}", experiment_models_in_folder)
    # ComfyUI mounts /internal without the /api twin.
    app.router.add_get("/internal/folder_paths", internal_folder_paths)
    app.router.add_get("/internal/files/{directory_type}", internal_files)
    app.router.add_get("/internal/logs", internal_logs)
    app.router.add_get("/internal/logs/raw", internal_logs_raw)
    app.router.add_route("PATCH", "/internal/logs/subscribe", internal_logs_subscribe)
    app.router.add_get("/", index_handler(web_root))
    app.router.add_get("/extensions/{pack}/{path:.+}", pack_extension_handler(web_root))
    if web_root is not None:
        app.router.add_route("*", "/{path:.+}", static_handler(web_root))
