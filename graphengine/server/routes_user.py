"""Per-user storage used by the editor: /users, /settings, /userdata, /v2/userdata (single-user mode).

Every file-system access runs in the thread pool (`off_loop`), never on the event loop."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

from aiohttp import web

from .security import PathRejected, check_component, contained_path, json_error
from .state import BadRequest, add_route, json_off_loop, off_loop, query_flag, read_json, read_json_object, state_of

SETTINGS_FILE = "comfy.settings.json"
DEFAULT_USER = "default"
SETTINGS_LOCK = web.AppKey("settings_lock", threading.Lock)  # updates read, merge and write in worker threads


def user_root(request: web.Request) -> Path:
    root = Path(state_of(request).config.user_dir) / DEFAULT_USER
    root.mkdir(parents=True, exist_ok=True)
    return root


def user_path(request: web.Request, relative: str, what: str = "path") -> Path:
    if not relative:
        raise PathRejected(400, f"{what} is required")
    check_component(relative, what, allow_slash=True)
    root = user_root(request)
    path = contained_path(root, relative)
    if path == contained_path(root):
        raise PathRejected(400, f"{what} must name something inside the user folder")
    return path


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(temp, path)
    except BaseException:
        if os.path.exists(temp):
            os.unlink(temp)
        raise


def file_info(root: Path, path: Path) -> dict[str, Any]:
    stat = path.stat()
    return {"path": path.relative_to(root).as_posix(), "size": stat.st_size, "modified": stat.st_mtime,
            "created": stat.st_ctime}


# -- users and settings ----------------------------------------------------------------------------------------------

async def get_users(request: web.Request) -> web.Response:
    return web.json_response({"storage": "server", "migrated": True})


async def post_users(request: web.Request) -> web.Response:
    return json_error(400, "single_user", "This server runs in single-user mode")


def _settings_path(request: web.Request) -> Path:
    return user_root(request) / SETTINGS_FILE


def load_settings(request: web.Request) -> dict[str, Any]:
    try:
        settings = json.loads(_settings_path(request).read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return {}
    return settings if isinstance(settings, dict) else {}


def save_settings(request: web.Request, settings: dict[str, Any]) -> None:
    write_atomic(_settings_path(request), json.dumps(settings, indent=2).encode())


def update_settings(request: web.Request, changes: dict[str, Any]) -> None:
    with request.app[SETTINGS_LOCK]:
        save_settings(request, {**load_settings(request), **changes})


async def get_settings(request: web.Request) -> web.Response:
    return await json_off_loop(load_settings, request)


async def get_setting(request: web.Request) -> web.Response:
    return await json_off_loop(lambda: load_settings(request).get(request.match_info["setting_id"]))


async def post_settings(request: web.Request) -> web.Response:
    await off_loop(update_settings, request, await read_json_object(request))
    return web.Response(status=200)


async def post_setting(request: web.Request) -> web.Response:
    value = await read_json(request)
    await off_loop(update_settings, request, {request.match_info["setting_id"]: value})
    return web.Response(status=200)


# -- userdata --------------------------------------------------------------------------------------------------------

async def list_userdata(request: web.Request) -> web.Response:
    directory = request.query.get("dir", "")
    if not directory:
        raise BadRequest("invalid_request", "dir is required")
    return await off_loop(userdata_listing, request, directory)


def userdata_listing(request: web.Request, directory: str) -> web.Response:
    root = user_root(request)
    path = user_path(request, directory, "dir")
    if not path.is_dir():
        return json_error(404, "not_found", "Directory not found")
    recurse, full_info, split = (query_flag(request, n) for n in ("recurse", "full_info", "split"))
    found = sorted(p for p in (path.rglob("*") if recurse else path.glob("*")) if p.is_file())
    # a symlink inside the folder may point elsewhere: list only what resolves inside the user folder
    found = [p for p in found if os.path.commonpath([os.path.realpath(p), str(root)]) == str(root)]
    if full_info:
        entries: list[Any] = [{**file_info(path, p)} for p in found]
    else:
        relative = [p.relative_to(path).as_posix() for p in found]
        entries = [[r, *r.split("/")] for r in relative] if split else relative
    return web.json_response(entries)


async def list_userdata_v2(request: web.Request) -> web.Response:
    return await off_loop(userdata_listing_v2, request, request.query.get("path", ""))


def userdata_listing_v2(request: web.Request, relative: str) -> web.Response:
    root = user_root(request)
    path = user_path(request, relative, "path") if relative else contained_path(root)
    if not path.is_dir():
        return json_error(404, "not_found", "Directory not found")
    entries = []
    for child in sorted(path.iterdir(), key=lambda p: (not p.is_dir(), p.name)):
        real = os.path.realpath(child)
        if os.path.commonpath([real, str(root)]) != str(root):
            continue
        entry: dict[str, Any] = {"name": child.name, "path": child.relative_to(root).as_posix(),
                                 "type": "directory" if child.is_dir() else "file"}
        if child.is_file():
            stat = child.stat()
            entry.update(size=stat.st_size, modified=stat.st_mtime)
        entries.append(entry)
    return web.json_response(entries)


def existing_file(request: web.Request, relative: str) -> Path | None:
    path = user_path(request, relative, "file")
    return path if path.is_file() else None


async def get_userdata(request: web.Request) -> web.StreamResponse:
    path = await off_loop(existing_file, request, request.match_info["file"])
    if path is None:
        return json_error(404, "not_found", "File not found")
    headers = {"X-Content-Type-Options": "nosniff"}
    if path.name != "user.css":
        headers["Content-Disposition"] = f'attachment; filename="{path.name.replace(chr(34), "")}"'
    return web.FileResponse(path, headers=headers)


def _written(request: web.Request, path: Path) -> web.Response:
    root = contained_path(user_root(request))
    if query_flag(request, "full_info"):
        return web.json_response(file_info(root, path))
    return web.json_response(path.relative_to(root).as_posix())


async def post_userdata(request: web.Request) -> web.Response:
    path = await off_loop(user_path, request, request.match_info["file"], "file")
    exists, is_dir = await off_loop(lambda: (path.exists(), path.is_dir()))
    if exists and not query_flag(request, "overwrite", True):
        return json_error(409, "exists", "File already exists")
    if is_dir:
        return json_error(400, "is_directory", "A directory has that name")
    data = await request.read()
    return await off_loop(write_userdata, request, path, data)


def write_userdata(request: web.Request, path: Path, data: bytes) -> web.Response:
    write_atomic(path, data)
    path = user_path(request, request.match_info["file"], "file")
    return _written(request, path)


async def delete_userdata(request: web.Request) -> web.Response:
    path = await off_loop(existing_file, request, request.match_info["file"])
    if path is None:
        return json_error(404, "not_found", "File not found")
    await off_loop(path.unlink)
    return web.Response(status=204)


async def move_userdata(request: web.Request) -> web.Response:
    return await off_loop(move_userdata_file, request)


def move_userdata_file(request: web.Request) -> web.Response:
    source = user_path(request, request.match_info["file"], "file")
    dest = user_path(request, request.match_info["dest"], "dest")
    if not source.exists():
        return json_error(404, "not_found", "Source not found")
    if dest.exists() and not query_flag(request, "overwrite", True):
        return json_error(409, "exists", "Destination already exists")
    dest.parent.mkdir(parents=True, exist_ok=True)
    user_path(request, request.match_info["dest"], "dest")  # re-check after creating parents
    shutil.move(source, dest)
    return _written(request, dest)


def setup(app: web.Application) -> None:
    app[SETTINGS_LOCK] = threading.Lock()
    add_route(app, "GET", "/users", get_users)
    add_route(app, "POST", "/users", post_users)
    add_route(app, "GET", "/settings", get_settings)
    add_route(app, "POST", "/settings", post_settings)
    add_route(app, "GET", "/settings/{setting_id}", get_setting)
    add_route(app, "POST", "/settings/{setting_id}", post_setting)
    add_route(app, "GET", "/userdata", list_userdata)
    add_route(app, "GET", "/v2/userdata", list_userdata_v2)
    add_route(app, "GET", "/userdata/{file}", get_userdata)
    add_route(app, "POST", "/userdata/{file}", post_userdata)
    add_route(app, "DELETE", "/userdata/{file}", delete_userdata)
    add_route(app, "POST", "/userdata/{file}/move/{dest}", move_userdata)
