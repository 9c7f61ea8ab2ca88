"""/view, /upload/image and /upload/mask: file access confined to the input, output and temp folders."""

from __future__ import annotations

import asyncio
import hashlib
import io
import mimetypes
import os
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage
from aiohttp.web_request import FileField

from ..limits import MAX_IMAGE_PIXELS, ImageTooLargeError, check_image_size, loads_limited
from .security import PathRejected, check_component, contained_path, json_error
from .state import BadRequest, add_route, off_loop, state_of

ANNOTATIONS = {" [output]": "output", " [input]": "input", " [temp]": "temp"}
# Served as downloads only: a browser must never render them in our origin.
ACTIVE_CONTENT = ("text/html", "application/xhtml+xml", "text/javascript", "application/javascript",
                  "text/css", "image/svg+xml", "application/xml", "text/xml")


def type_dirs(request: web.Request) -> dict[str, Path]:
    config = state_of(request).config
    return {"output": Path(config.output_dir), "input": Path(config.input_dir), "temp": Path(config.temp_dir)}


def resolve_file(request: web.Request, filename: str, subfolder: str, type_: str) -> Path:
    """A file inside one of the type folders; PathRejected / BadRequest otherwise."""
    for suffix, annotated in ANNOTATIONS.items():
        if filename.endswith(suffix):
            filename, type_ = filename[: -len(suffix)], annotated
            break
    base = type_dirs(request).get(type_)
    if base is None:
        raise BadRequest("invalid_type", "type must be output, input or temp", type_[:50])
    if not filename or filename in (".", ".."):
        raise PathRejected(400, "filename is required")
    check_component(filename, "filename", allow_slash=False)
    check_component(subfolder, "subfolder", allow_slash=True)
    return contained_path(base, subfolder, filename)


# -- decoding --------------------------------------------------------------------------------------------------------

def open_image(source: Path | io.BytesIO, label: str) -> Any:
    """Pillow's lazy image, refused by its header's size (the engine's one pixel limit) before anything is decoded."""
    from PIL import Image

    try:
        image = Image.open(source)
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"Image {label} is too large: {exc}") from None
    try:
        check_image_size(*image.size, label)
    except ValueError:
        image.close()
        raise
    return image


async def decode_in_thread(what: str, function: Any, *args: Any) -> Any:
    """Run an image-decoding function off the event loop; bad or oversized images become structured 400s."""
    try:
        return await asyncio.get_running_loop().run_in_executor(None, function, *args)
    except ImageTooLargeError as exc:
        raise BadRequest("image_too_large", str(exc), f"limit {MAX_IMAGE_PIXELS} pixels") from None
    except (PathRejected, BadRequest):
        raise
    except Exception as exc:  # noqa: BLE001 - not an image Pillow understands, or damaged
        raise BadRequest("invalid_image", what, f"{type(exc).__name__}: {exc}"[:300]) from None


# -- /view -----------------------------------------------------------------------------------------------------------

def _render(path: Path, preview: str | None, channel: str) -> tuple[bytes, str]:
    from PIL import Image

    with open_image(path, repr(path.name)) as image:
        image.load()
        if channel == "rgb":
            image = image.convert("RGB")
        elif channel == "a":
            alpha = image.getchannel("A") if "A" in image.getbands() else Image.new("L", image.size, 255)
            image = Image.new("RGBA", image.size, (0, 0, 0, 0))
            image.putalpha(alpha)
        fmt, quality = "png", 90
        if preview:
            name, _, q = preview.partition(";")
            fmt = name if name in ("webp", "jpeg") and "a" not in channel else "webp"
            quality = int(q) if q.isdigit() and 1 <= int(q) <= 100 else 90
        if fmt == "jpeg":
            image = image.convert("RGB")
        buffer = io.BytesIO()
        image.save(buffer, format=fmt.upper(), quality=quality)
    return buffer.getvalue(), f"image/{fmt}"


async def view(request: web.Request) -> web.StreamResponse:
    query = request.query
    if "filename" not in query:
        raise BadRequest("invalid_request", "filename is required")
    path = resolve_file(request, query["filename"], query.get("subfolder", ""), query.get("type", "output"))
    if not path.is_file():
        return json_error(404, "not_found", "File not found")
    channel = query.get("channel", "rgba")
    preview = query.get("preview")
    headers = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}
    if preview or channel in ("rgb", "a"):
        body, content_type = await decode_in_thread("preview/channel needs an image file", _render, path, preview,
                                                    channel)
        return web.Response(body=body, content_type=content_type, headers=headers)
    content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    disposition = "inline"
    if content_type in ACTIVE_CONTENT:
        content_type, disposition = "application/octet-stream", "attachment"
    safe_name = path.name.replace('"', "")
    headers["Content-Disposition"] = f'{disposition}; filename="{safe_name}"'
    headers["Content-Type"] = content_type
    return web.FileResponse(path, headers=headers)


# -- uploads ---------------------------------------------------------------------------------------------------------

def _same_content(path: Path, data: bytes) -> bool:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.digest() == hashlib.sha256(data).digest()


def store_upload(base: Path, subfolder: str, filename: str, data: bytes, overwrite: bool) -> str:
    """Write `data` as base/subfolder/filename (ComfyUI's collision rules); returns the name used."""
    folder = contained_path(base, subfolder)
    folder.mkdir(parents=True, exist_ok=True)
    folder = contained_path(base, subfolder)  # re-check: mkdir may have followed a symlink planted meanwhile
    target = contained_path(folder, filename)
    if target.exists() and not overwrite:
        if target.is_file() and _same_content(target, data):
            return filename
        stem, ext = os.path.splitext(filename)
        counter = 1
        while target.exists():
            filename = f"{stem} ({counter}){ext}"
            target = contained_path(folder, filename)
            counter += 1
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(target, flags, 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    return filename


async def _upload_fields(request: web.Request) -> tuple[dict[str, Any], FileField]:
    try:
        post = await request.post()
    except (ValueError, BadHttpMessage) as exc:
        raise BadRequest("invalid_request", "multipart/form-data body expected", str(exc)[:200]) from None
    image = post.get("image")
    if not isinstance(image, FileField):
        raise BadRequest("invalid_request", "multipart field 'image' (a file) is required")
    fields = {k: v for k, v in post.items() if isinstance(v, str)}
    return fields, image


def _target(request: web.Request, fields: dict[str, Any], image: FileField) -> tuple[Path, str, str, str]:
    type_ = fields.get("type", "input") or "input"
    base = type_dirs(request).get(type_)
    if base is None:
        raise BadRequest("invalid_type", "type must be input, temp or output", type_[:50])
    subfolder = fields.get("subfolder", "") or ""
    filename = image.filename or ""
    if not filename or filename in (".", ".."):
        raise PathRejected(400, "the uploaded file needs a name")
    check_component(filename, "filename", allow_slash=False)
    check_component(subfolder, "subfolder", allow_slash=True)
    contained_path(base, subfolder, filename)
    return base, subfolder, filename, type_


async def upload_image(request: web.Request) -> web.Response:
    fields, image = await _upload_fields(request)
    base, subfolder, filename, type_ = _target(request, fields, image)
    overwrite = fields.get("overwrite", "").lower() in ("true", "1")
    data = await off_loop(image.file.read)
    name = await off_loop(store_upload, base, subfolder, filename, data, overwrite)
    return web.json_response({"name": name, "subfolder": subfolder, "type": type_})


def _apply_mask(original: Path, mask_bytes: bytes) -> bytes:
    from PIL import PngImagePlugin

    with open_image(original, "original_ref") as source, open_image(io.BytesIO(mask_bytes), "mask") as mask:
        info = PngImagePlugin.PngInfo()
        for key, value in source.info.items():
            if isinstance(key, str) and isinstance(value, str):
                info.add_text(key, value)
        result = source.convert("RGBA")
        alpha = mask.convert("RGBA").getchannel("A")
        if alpha.size != result.size:
            alpha = alpha.resize(result.size)
        result.putalpha(alpha)
        buffer = io.BytesIO()
        result.save(buffer, format="PNG", pnginfo=info, compress_level=4)
    return buffer.getvalue()


async def upload_mask(request: web.Request) -> web.Response:
    fields, image = await _upload_fields(request)
    base, subfolder, filename, type_ = _target(request, fields, image)
    try:
        ref = loads_limited(fields.get("original_ref", ""))
    except ValueError:
        raise BadRequest("invalid_request", "original_ref must be a JSON object") from None
    if not isinstance(ref, dict) or not isinstance(ref.get("filename"), str):
        raise BadRequest("invalid_request", "original_ref needs a filename")
    original = resolve_file(request, ref["filename"], str(ref.get("subfolder") or ""), str(ref.get("type") or "output"))
    if not original.is_file():
        return json_error(404, "not_found", "original_ref file not found")
    overwrite = fields.get("overwrite", "").lower() in ("true", "1")
    mask = await off_loop(image.file.read)
    data = await decode_in_thread("could not combine the mask with the original", _apply_mask, original, mask)
    name = await off_loop(store_upload, base, subfolder, filename, data, overwrite)
    return web.json_response({"name": name, "subfolder": subfolder, "type": type_})


def setup(app: web.Application) -> None:
    add_route(app, "GET", "/view", view)
    add_route(app, "POST", "/upload/image", upload_image)
    add_route(app, "POST", "/upload/mask", upload_mask)
