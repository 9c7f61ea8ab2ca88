"""Request guards (Host / Origin / token) and path containment for every file the HTTP API touches."""

from __future__ import annotations

import hmac
import logging
import os
import re
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.web_log import AccessLogger
from yarl import URL

from .config import ServerConfig, is_loopback

log = logging.getLogger("graphengine.server")

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
MAX_NAME_BYTES = 255  # a file name, as common file systems allow
MAX_PATH_BYTES = 1024
_TOKEN_IN_QUERY = re.compile(r"([?&;](?:[a-z_]*token|api_key)=)[^&;\s\"]*", re.IGNORECASE)


def redact_tokens(text: str) -> str:
    """`…?token=SECRET&…` → `…?token=[redacted]&…` (also auth_token=, api_key= and the like)."""
    return _TOKEN_IN_QUERY.sub(r"\1[redacted]", text)


class TokenRedactingFilter(logging.Filter):
    """For log handlers: redacts tokens in any record, its traceback included (aiohttp's errors quote raw URLs)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact_tokens(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_tokens(record.exc_text)
        return True


class RedactingAccessLogger(AccessLogger):
    """aiohttp's access log with tokens taken out of the request line and headers (`?token=` is an auth method)."""

    def _format_line(self, request, response, time):  # type: ignore[no-untyped-def]
        return [(key, redact_tokens(value) if isinstance(value, str) else value)
                for key, value in super()._format_line(request, response, time)]


def error_body(type_: str, message: str, details: str = "", **extra: Any) -> dict[str, Any]:
    """ComfyUI's error object, used for every refusal so clients can parse one shape."""
    return {"error": {"type": type_, "message": message, "details": details, "extra_info": extra}, "node_errors": {}}


def json_error(status: int, type_: str, message: str, details: str = "", **extra: Any) -> web.Response:
    return web.json_response(error_body(type_, message, details, **extra), status=status)


class PathRejected(Exception):
    """A user-supplied path was refused; `status` is 400 (malformed) or 403 (escapes its root)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status

    def response(self) -> web.Response:
        return json_error(self.status, "invalid_path" if self.status == 400 else "forbidden_path", str(self))


def check_component(value: str, what: str, *, allow_slash: bool) -> None:
    """Syntactic checks done before touching the disk: no NUL, backslash, absolute path or `..` segment, nothing
    the file system cannot name (a lone surrogate, a name over 255 bytes, a path over 1024 bytes)."""
    try:
        encoded = value.encode("utf-8")
    except UnicodeEncodeError:
        raise PathRejected(400, f"{what} is not valid Unicode") from None
    if len(encoded) > MAX_PATH_BYTES or any(len(part) > MAX_NAME_BYTES for part in encoded.split(b"/")):
        raise PathRejected(400, f"{what} is too long")
    if "\x00" in value:
        raise PathRejected(400, f"{what} contains a NUL byte")
    if "\\" in value:
        raise PathRejected(400, f"{what} contains a backslash")
    if value.startswith("/") or (len(value) > 1 and value[1] == ":"):
        raise PathRejected(400, f"{what} must be relative")
    if not allow_slash and "/" in value:
        raise PathRejected(400, f"{what} must be a plain file name")
    if any(part == ".." for part in value.split("/")):
        raise PathRejected(400, f"{what} must not contain '..'")


def contained_path(root: str | Path, *parts: str) -> Path:
    """`root/parts…` with symlinks resolved; PathRejected(403) unless it stays inside the resolved root."""
    real_root = os.path.realpath(root)
    candidate = os.path.realpath(os.path.join(real_root, *[p for p in parts if p]))
    if os.path.commonpath([real_root, candidate]) != real_root:
        raise PathRejected(403, "path escapes its root folder")
    return Path(candidate)


# -- middlewares -----------------------------------------------------------------------------------------------------

def _split_host(value: str) -> tuple[str, int | None] | None:
    try:
        url = URL(f"http://{value}")
    except ValueError:
        return None
    if not url.host:
        return None
    return url.host.lower(), url.explicit_port


def _origin_matches(origin: str, host: str, request_scheme: str) -> bool:
    try:
        url = URL(origin)
    except ValueError:
        return False
    if not url.host or not url.scheme:
        return False
    parsed = _split_host(host)
    if parsed is None:
        return False
    host_name, host_port = parsed
    origin_port = url.port or _DEFAULT_PORTS.get(url.scheme)
    host_port = host_port or _DEFAULT_PORTS.get(request_scheme)
    return url.host.lower() == host_name and origin_port == host_port


def _host_allowed(config: ServerConfig, host_header: str) -> bool:
    parsed = _split_host(host_header)
    if parsed is None:
        return False
    name = parsed[0]
    if is_loopback(name) or name in {h.lower() for h in config.allowed_hosts}:
        return True
    if config.loopback_only:
        return False  # DNS rebinding: a browser reaching us through a foreign name
    return not config.allowed_hosts or name in {h.lower() for h in config.listen_hosts}


def _token_ok(config: ServerConfig, request: web.Request) -> bool:
    expected = config.auth_token or ""
    header = request.headers.get("Authorization", "")
    supplied = header[7:].strip() if header[:7].lower() == "bearer " else request.query.get("token", "")
    return hmac.compare_digest(supplied.encode(), expected.encode())


def security_middleware(config: ServerConfig):
    @web.middleware
    async def guard(request: web.Request, handler):
        host = request.headers.get("Host", "")
        if not _host_allowed(config, host):
            return json_error(403, "forbidden_host", "Host header not allowed", host[:200])
        if request.headers.get("Sec-Fetch-Site", "").lower() == "cross-site":
            return json_error(403, "forbidden_origin", "Cross-site requests are not allowed")
        origin = request.headers.get("Origin")
        if origin is not None and not _origin_matches(origin, host, request.scheme):
            return json_error(403, "forbidden_origin", "Origin does not match Host", origin[:200])
        if config.auth_token and not _token_ok(config, request):
            response = json_error(401, "unauthorized", "A valid token is required (Authorization: Bearer …)")
            response.headers["WWW-Authenticate"] = "Bearer"
            return response
        return await handler(request)

    return guard


@web.middleware
async def error_middleware(request: web.Request, handler):
    """Unexpected exceptions become a structured 500 instead of aiohttp's HTML page."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status >= 400 and exc.content_type != "application/json":
            return json_error(exc.status, "http_error", exc.reason)
        raise
    except PathRejected as exc:
        return exc.response()
    except Exception as exc:  # noqa: BLE001 - the API must always answer with JSON
        log.exception("unhandled error in %s %s", request.method, request.path)
        return json_error(500, "server_error", f"{type(exc).__name__}: {exc}")
