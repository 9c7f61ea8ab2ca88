"""Reading workflows from files: API-format JSON, and PNGs that carry a `prompt` text chunk."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path
from typing import Any

from .limits import loads_limited

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_MAX_CHUNK = 64 * 1024 * 1024


class WorkflowFileError(ValueError):
    """A workflow file that cannot be read; the message is meant for the user."""


def png_text_chunks(data: bytes) -> dict[str, str]:
    """The tEXt / zTXt / iTXt chunks of a PNG (keyword -> text); stops at IEND or at the first damaged chunk."""
    if not data.startswith(PNG_SIGNATURE):
        raise WorkflowFileError("not a PNG file")
    chunks: dict[str, str] = {}
    pos = len(PNG_SIGNATURE)
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if length > _MAX_CHUNK or len(body) < length:
            break
        pos += 12 + length
        if kind == b"IEND":
            break
        try:
            if kind == b"tEXt":
                key, _, text = body.partition(b"\0")
                chunks[key.decode("latin-1")] = text.decode("latin-1")
            elif kind == b"zTXt":
                key, _, rest = body.partition(b"\0")
                chunks[key.decode("latin-1")] = zlib.decompress(rest[1:]).decode("latin-1")
            elif kind == b"iTXt":
                key, _, rest = body.partition(b"\0")
                compressed, rest = rest[0], rest[2:]
                _lang, _, rest = rest.partition(b"\0")
                _translated, _, text = rest.partition(b"\0")
                chunks[key.decode("latin-1")] = (zlib.decompress(text) if compressed else text).decode("utf-8")
        except (zlib.error, UnicodeDecodeError, IndexError):
            continue
    return chunks


def is_ui_workflow(data: Any) -> bool:
    return isinstance(data, dict) and isinstance(data.get("nodes"), list) and "links" in data


def load_workflow_data(path: str | Path) -> tuple[Any, dict[str, Any]]:
    """Read a workflow file. Returns (decoded JSON — API prompt or UI workflow —, extra_pnginfo to embed)."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise WorkflowFileError(f"{p}: no such file") from None
    except OSError as exc:
        raise WorkflowFileError(f"{p}: cannot read ({exc.strerror})") from None
    if raw.startswith(PNG_SIGNATURE):
        chunks = png_text_chunks(raw)
        workflow = _parse_json(chunks["workflow"], p, "workflow chunk") if "workflow" in chunks else None
        if "prompt" in chunks:
            extra = {"workflow": workflow} if workflow is not None else {}
            return _parse_json(chunks["prompt"], p, "prompt chunk"), extra
        if workflow is not None:
            return workflow, {"workflow": workflow}
        raise WorkflowFileError(f"{p}: the PNG has no 'prompt' or 'workflow' text chunk")
    data = _parse_json(raw.decode("utf-8", errors="replace"), p, "JSON")
    return data, ({"workflow": data} if is_ui_workflow(data) else {})


def _parse_json(text: str, path: Path, what: str) -> Any:
    try:
        return loads_limited(text)
    except json.JSONDecodeError as exc:
        raise WorkflowFileError(f"{path}: invalid {what} at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except ValueError as exc:  # too deep, or not valid Unicode
        raise WorkflowFileError(f"{path}: invalid {what}: {exc}") from None


def parse_override(text: str) -> tuple[str, str, Any]:
    """`NODE.INPUT=VALUE` → (node id, input name, value). Node ids may contain dots; VALUE is JSON or a plain string."""
    target, sep, value_text = text.partition("=")
    node_id, dot, input_name = target.rpartition(".")
    if not sep or not dot or not node_id or not input_name:
        raise WorkflowFileError(f"--set {text!r}: expected NODE.INPUT=VALUE")
    try:
        value = loads_limited(value_text)
    except json.JSONDecodeError:
        value = value_text
    except ValueError as exc:  # too deep, or not valid Unicode
        raise WorkflowFileError(f"--set {text[:100]!r}: {exc}") from None
    return node_id, input_name, value


def apply_overrides(prompt: Any, overrides: list[str]) -> Any:
    if not overrides:
        return prompt
    if not isinstance(prompt, dict):
        raise WorkflowFileError("--set needs an API-format workflow (an object of nodes)")
    for text in overrides:
        node_id, input_name, value = parse_override(text)
        node = prompt.get(node_id)
        if not isinstance(node, dict):
            raise WorkflowFileError(f"--set {text!r}: no node {node_id!r} in the workflow")
        node.setdefault("inputs", {})[input_name] = value
    return prompt
