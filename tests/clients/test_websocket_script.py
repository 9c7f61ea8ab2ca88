"""The pattern of ComfyUI's own websocket script example, written out with urllib + websocket-client: queue with a
client_id, connect the websocket only afterwards, wait for `executing {node: null}` of that prompt, read
/history/{id}, download the image through /view."""

from __future__ import annotations

import json
import urllib.request
import uuid

import pytest

from .checks import assert_png_of_size, fetch_view, saved_images
from .live import txt2img_prompt

websocket = pytest.importorskip("websocket", reason="websocket-client is not installed (pip install websocket-client)")


def queue_prompt(url: str, prompt: dict, client_id: str) -> dict:
    body = json.dumps({"prompt": prompt, "client_id": client_id}).encode()
    request = urllib.request.Request(f"{url}/prompt", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def wait_until_done(ws, prompt_id: str) -> list[str]:
    """Text message types seen until this prompt's final `executing` (binary frames are skipped)."""
    seen: list[str] = []
    while True:
        frame = ws.recv()
        if not isinstance(frame, str):
            continue
        message = json.loads(frame)
        seen.append(message["type"])
        data = message["data"]
        if message["type"] == "execution_error":
            raise AssertionError(data)
        if message["type"] == "executing" and data["node"] is None and data["prompt_id"] == prompt_id:
            return seen


def test_script_example_pattern_gets_the_png(server_url):
    client_id = str(uuid.uuid4())
    reply = queue_prompt(server_url, txt2img_prompt(seed=7, prefix="ws_script"), client_id)
    assert reply["node_errors"] == {}
    prompt_id = reply["prompt_id"]
    ws = websocket.WebSocket()
    ws.connect(f"ws://{server_url.split('://', 1)[1]}/ws?clientId={client_id}", timeout=120)
    try:
        seen = wait_until_done(ws, prompt_id)
    finally:
        ws.close()
    assert seen[0] == "status"  # the greeting every socket gets first
    images = saved_images(server_url, prompt_id)
    assert images[0]["filename"].startswith("ws_script")
    assert_png_of_size(fetch_view(server_url, images[0]))
