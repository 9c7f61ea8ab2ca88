"""Limits on untrusted input, shared by the engine, the server and node packs: JSON nesting and text, decoded
image size.

Python's json module recurses once per nesting level, so a deep document raises RecursionError (or, handled
later, crashes whatever walks it); documents are refused past `MAX_JSON_DEPTH` instead, and so are strings that
are not valid Unicode. Images are refused by their header's size before any pixel is decoded."""

from __future__ import annotations

import json
import re
from typing import Any

MAX_JSON_DEPTH = 256  # far beyond any real prompt or workflow (they nest 3–6 levels), far below the stack limit
MAX_IMAGE_PIXELS = 100_000_000  # per decoded image (frame), for every route and node that decodes images


# A lone UTF-16 surrogate (escaped as \\udXXX, or raw as json.loads(bytes) lets through) is not valid Unicode:
# SQLite, the file system and UTF-8 encoders all refuse it later. Cheap hints first; the exact check only on a hit.
_SURROGATE_HINT_TEXT = re.compile(r"\\u[dD][89a-fA-F]|[\ud800-\udfff]")
_SURROGATE_HINT_BYTES = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")


class InvalidJsonTextError(ValueError):
    """A JSON string (value or key) holding a lone surrogate."""


class JsonTooDeepError(ValueError):
    """A JSON document nested deeper than the limit."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"JSON nested too deeply (more than {limit} levels of arrays/objects)")
        self.limit = limit


def json_depth_exceeds(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether lists/dicts (as json.loads makes them) nest deeper than `limit` levels; level by level, no recursion."""
    level = [value] if type(value) in (list, dict) else []
    depth = 1
    while level:
        if depth > limit:
            return True
        below: list[Any] = []
        for container in level:
            items = container.values() if type(container) is dict else container
            below += [c for c in items if type(c) is list or type(c) is dict]
        level, depth = below, depth + 1
    return False


def loads_limited(text: str | bytes, limit: int = MAX_JSON_DEPTH) -> Any:
    """`json.loads`, refusing documents nested deeper than `limit` with JsonTooDeepError (a ValueError)."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise JsonTooDeepError(limit) from None
    if json_depth_exceeds(value, limit):
        raise JsonTooDeepError(limit)
    hint = _SURROGATE_HINT_BYTES if isinstance(text, (bytes, bytearray)) else _SURROGATE_HINT_TEXT
    if hint.search(text) and _has_lone_surrogate(value):
        raise InvalidJsonTextError("JSON text holds a lone UTF-16 surrogate (e.g. \\ud800), which is not valid Unicode")
    return value


def _has_lone_surrogate(value: Any) -> bool:
    pending = [value]
    while pending:
        current = pending.pop()
        if isinstance(current, dict):
            pending.extend(current)
            pending.extend(current.values())
        elif isinstance(current, list):
            pending.extend(current)
        elif isinstance(current, str):
            try:
                current.encode("utf-8")
            except UnicodeEncodeError:
                return True
    return False


class ImageTooLargeError(ValueError):
    """An image whose header declares more pixels than the limit."""


def check_image_size(width: int, height: int, label: str = "", limit: int = MAX_IMAGE_PIXELS) -> None:
    """Refuse an image by its declared size (ImageTooLargeError) before it is decoded."""
    name = f"Image {label} " if label else "Image "
    if width <= 0 or height <= 0:
        raise ValueError(f"{name}has an invalid size {width}x{height}")
    if width * height > limit:
        raise ImageTooLargeError(f"{name}is too large: {width}x{height} = {width * height} pixels "
                                 f"(limit {limit}); refusing to decode it")
