"""Helpers shared by the server tests: a served app on 127.0.0.1, prompt builders, websocket collectors."""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestClient, TestServer

from graphengine.server import ServerConfig, create_app
from graphengine.server.state import STATE, ServerState

from .nodepack import make_registry

REPO = Path(__file__).resolve().parents[2]
GUARD_SECONDS = 60  # a hang fails the test instead of blocking the run; never an assertion on speed


def async_test(function):
    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(asyncio.wait_for(function(*args, **kwargs), GUARD_SECONDS))

    return wrapper


def chain(value: int = 1, steps: int = 2, delay: float = 0.0, tag: str = "", preview_size: int = 0,
          fail: bool = False, save: bool = False) -> dict[str, Any]:
    """Number → Slow (→ Fail) → Show or SaveNumber."""
    prompt: dict[str, Any] = {
        "1": {"class_type": "Number", "inputs": {"value": value}, "_meta": {"title": "Number"}},
        "2": {"class_type": "Slow", "inputs": {"value": ["1", 0], "steps": steps, "delay": delay, "tag": tag,
                                               "preview_size": preview_size}},
    }
    last = "2"
    if fail:
        prompt["4"] = {"class_type": "Fail", "inputs": {"value": ["2", 0], "message": "boom"}}
        last = "4"
    prompt["3"] = ({"class_type": "SaveNumber", "inputs": {"value": [last, 0], "prefix": tag or "n"}} if save
                   else {"class_type": "Show", "inputs": {"value": [last, 0]}})
    return prompt


@dataclass
class Served:
    client: TestClient
    state: ServerState
    root: Path

    async def post_prompt(self, prompt: dict[str, Any], **body: Any) -> dict[str, Any]:
        response = await self.client.post("/prompt", json={"prompt": prompt, **body})
        assert response.status == 200, await response.text()
        return await response.json()

    async def ws(self, client_id: str | None = None, **kwargs: Any) -> aiohttp.ClientWebSocketResponse:
        path = "/ws" + (f"?clientId={client_id}" if client_id else "")
        return await self.client.ws_connect(path, **kwargs)

    async def wait_history(self, prompt_id: str) -> dict[str, Any]:
        while True:
            response = await self.client.get(f"/history/{prompt_id}")
            body = await response.json()
            if prompt_id in body:
                return body[prompt_id]
            await asyncio.sleep(0.02)


@asynccontextmanager
async def serve(root: Path, registry=None, **overrides: Any):
    config = ServerConfig(base_dir=root, database=overrides.pop("database", root / "queue.sqlite3"), **overrides)
    registry = registry or make_registry(Path(config.output_dir))
    app = create_app(config, registry)
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        yield Served(client, app[STATE], root)
    finally:
        await client.close()


async def receive_until_done(ws: aiohttp.ClientWebSocketResponse, prompt_id: str) -> list[tuple[str, Any]]:
    """Every frame up to and including `executing {node: null}` for `prompt_id` (binary frames as ("binary", b))."""
    frames: list[tuple[str, Any]] = []
    while True:
        msg = await ws.receive()
        if msg.type == aiohttp.WSMsgType.BINARY:
            frames.append(("binary", msg.data))
            continue
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        message = json.loads(msg.data)
        frames.append((message["type"], message["data"]))
        data = message["data"]
        if message["type"] == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id:
            return frames


async def receive_json(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    msg = await ws.receive()
    assert msg.type == aiohttp.WSMsgType.TEXT, msg
    return json.loads(msg.data)


# -- a real server process (for kill -9, the command line and its logs) ---------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_json(port: int, method: str, path: str, body: dict | None = None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        raw = response.read()
        return json.loads(raw) if raw else None


def wait_until(predicate, what: str, seconds: float = GUARD_SECONDS):
    """Poll `predicate` until it returns something truthy (returned); a hang fails the test, speed is not checked."""
    deadline = time.monotonic() + seconds
    while not (result := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.02)
    return result


def start_server_process(base: Path, port: int, *args: str, log_level: str = "WARNING",
                         probe: str = "/prompt") -> subprocess.Popen:
    """`server.py` with the test node pack on 127.0.0.1:`port`; its stderr is appended to base/server.log."""
    env = {**os.environ, "GRAPHENGINE_NODE_PACKS": "tests.server.nodepack:register", "PYTHONPATH": str(REPO)}
    log_path = base / "server.log"
    base.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        process = subprocess.Popen([sys.executable, str(REPO / "server.py"), "--port", str(port), "--base-dir",
                                    str(base), "--log-level", log_level, *args], cwd=REPO, env=env,
                                   stdout=subprocess.DEVNULL, stderr=log)
    for _ in range(1200):  # bounded wait for the port (start-up imports), not a timing assertion
        if process.poll() is not None:
            raise AssertionError(log_path.read_text())
        try:
            http_json(port, "GET", probe)
            return process
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise AssertionError("server did not start")


async def stuck_client(port: int, client_id: str):
    """A websocket client that completes the handshake and then never reads, with a tiny receive buffer."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    request = (f"GET /ws?clientId={client_id} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
    await loop.sock_sendall(sock, request.encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += await loop.sock_recv(sock, 1)
    assert b" 101 " in head.split(b"\r\n")[0]
    return sock
