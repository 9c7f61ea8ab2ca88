"""Hostile single requests against a real loopback server: deep JSON, decompression bombs, bad start-up flags,
tokens in URLs. Each must get a structured 4xx (or be ignored) and leave the server working."""

from __future__ import annotations

import io
import json
import signal
import socket
import subprocess
import sys

import aiohttp
import pytest
from PIL import Image

from graphengine.limits import MAX_IMAGE_PIXELS, MAX_JSON_DEPTH
from tests.server.harness import (REPO, async_test, chain, free_port, http_json, receive_json, serve,
                                  start_server_process)

from .payloads import bomb_png, deep_json, deep_prompt_body

JSON_ROUTES = ["/prompt", "/api/prompt", "/queue", "/history", "/free", "/settings", "/settings/some.setting",
               "/jobs/cancel"]


async def post_text(srv, path: str, text: str) -> tuple[int, dict]:
    response = await srv.client.post(path, data=text, headers={"Content-Type": "application/json"})
    return response.status, await response.json(content_type=None)


async def still_runs_a_prompt(srv) -> None:
    posted = await srv.post_prompt(chain(tag="after-abuse"))
    entry = await srv.wait_history(posted["prompt_id"])
    assert entry["status"]["status_str"] == "success"


@async_test
async def test_deeply_nested_json_is_a_structured_400_on_every_json_route(tmp_path):
    async with serve(tmp_path) as srv:
        for depth in (100_000, MAX_JSON_DEPTH + 1):
            for path in JSON_ROUTES:
                body = deep_prompt_body(depth) if "prompt" in path else deep_json(depth)
                status, answer = await post_text(srv, path, body)
                assert status == 400, (path, depth, answer)
                assert answer["error"]["type"] == "invalid_json", answer
                assert "nested too deeply" in answer["error"]["message"]
        status, _ = await post_text(srv, "/interrupt", deep_json(100_000))
        assert status == 200  # ComfyUI accepts any body here
        await still_runs_a_prompt(srv)


@async_test
async def test_nesting_within_the_limit_reaches_validation_and_gets_its_errors(tmp_path):
    prompt = chain()
    prompt["1"]["inputs"]["value"] = json.loads(deep_json(MAX_JSON_DEPTH - 5))  # a deep "link"
    prompt["2"]["inputs"]["tag"] = {"__value__": json.loads(deep_json(MAX_JSON_DEPTH - 5))}
    async with serve(tmp_path) as srv:
        status, answer = await post_text(srv, "/prompt", json.dumps({"prompt": prompt}))
        assert status == 400 and answer["error"]["type"] == "prompt_outputs_failed_validation", answer
        errors = {e["type"] for node in answer["node_errors"].values() for e in node["errors"]}
        assert errors == {"bad_linked_input", "invalid_input_type"}
        status, _ = await post_text(srv, "/settings/deep", deep_json(MAX_JSON_DEPTH - 1))
        assert status == 200
        settings = await (await srv.client.get("/settings")).json()
        assert settings["deep"] == json.loads(deep_json(MAX_JSON_DEPTH - 1))


@async_test
async def test_deep_first_websocket_frame_is_ignored_and_the_socket_keeps_working(tmp_path):
    async with serve(tmp_path) as srv:
        ws = await srv.ws("deep-client")
        assert (await receive_json(ws))["type"] == "status"
        await ws.send_str(deep_json(100_000))
        posted = await srv.post_prompt(chain(tag="ws"), client_id="deep-client")
        while (message := await receive_json(ws))["type"] != "executed":
            pass
        assert message["data"]["prompt_id"] == posted["prompt_id"]
        await ws.close()


def _mask_form(mask: bytes, original: str) -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("image", mask, filename="mask.png", content_type="image/png")
    form.add_field("original_ref", json.dumps({"filename": original, "type": "input"}))
    form.add_field("type", "input")
    return form


def _small_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buffer, format="PNG")
    return buffer.getvalue()


# Over the engine's limit but under twice Pillow's default (which Pillow would only warn about, then decode);
# and the issue's 30000×30000 (which Pillow's own guard refuses). Both are small files.
BOMBS = [(12_000, 9_000), (30_000, 30_000)]


@pytest.mark.parametrize("size", BOMBS, ids=["over-engine-limit", "30000x30000"])
@async_test
async def test_decompression_bombs_are_refused_by_view_preview_and_upload_mask(tmp_path, size):
    assert size[0] * size[1] > MAX_IMAGE_PIXELS
    bomb = bomb_png(*size)
    assert len(bomb) < 1_000_000
    async with serve(tmp_path) as srv:
        input_dir = srv.state.config.input_dir
        (input_dir / "bomb.png").write_bytes(bomb)
        (input_dir / "small.png").write_bytes(_small_png())
        for query in ("preview=webp;80", "preview=jpeg", "channel=rgb", "channel=a"):
            response = await srv.client.get(f"/view?filename=bomb.png&type=input&{query}")
            answer = await response.json()
            assert response.status == 400 and answer["error"]["type"] == "image_too_large", (query, answer)
        for mask, original in ((bomb, "small.png"), (_small_png(), "bomb.png")):
            response = await srv.client.post("/upload/mask", data=_mask_form(mask, original))
            answer = await response.json()
            assert response.status == 400 and answer["error"]["type"] == "image_too_large", answer
        assert sorted(p.name for p in input_dir.iterdir()) == ["bomb.png", "small.png"]  # nothing written
        response = await srv.client.post("/upload/mask", data=_mask_form(_small_png(), "small.png"))
        assert response.status == 200  # a normal mask still works
        await still_runs_a_prompt(srv)


def test_empty_listen_address_is_a_clear_start_up_error():
    result = subprocess.run([sys.executable, str(REPO / "server.py"), "--listen", ""], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "--listen needs at least one address" in result.stderr and "Traceback" not in result.stderr


def test_tokens_in_urls_never_reach_the_access_log(tmp_path):
    secret = "s3cret-token-value"
    port = free_port()
    server = start_server_process(tmp_path, port, "--auth-token", secret, log_level="INFO",
                                  probe=f"/prompt?token={secret}")
    try:
        assert http_json(port, "GET", f"/queue?token={secret}&x=1") == {"queue_running": [], "queue_pending": []}
        with pytest.raises(OSError):  # a wrong token is refused (and must not be logged either)
            http_json(port, "GET", "/queue?token=wrong-token-value")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:  # a request line aiohttp refuses
            raw.sendall(f"GET /queue?token={secret}&pad={'a' * 9000} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            assert b" 400 " in raw.recv(100).split(b"\r\n")[0]
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(30)
    log = (tmp_path / "server.log").read_text()
    assert "GET /queue?token=[redacted]&x=1" in log  # the access log is on, and redacts
    assert "/queue?token=[redacted]" in log.split("x=1", 1)[1]  # so do aiohttp's errors quoting the raw line
    assert secret not in log and "wrong-token-value" not in log


@pytest.mark.parametrize("command", ["validate", "run"])
def test_cli_refuses_a_deeply_nested_workflow_file(tmp_path, capsys, command):
    from graphengine.cli import main

    path = tmp_path / "deep.json"
    path.write_text('{"1": {"class_type": "Number", "inputs": {"value": ' + deep_json(100_000) + "}}}")
    assert main([command, str(path)]) == 2
    err = capsys.readouterr().err
    assert "nested too deeply" in err and "Traceback" not in err


def test_a_deep_prompt_built_in_python_is_refused_by_validation_not_by_the_stack():
    from graphengine import PromptValidationError, validate_prompt
    from tests.server.nodepack import make_registry

    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    prompt = chain()
    prompt["2"]["inputs"]["tag"] = deep
    with pytest.raises(PromptValidationError) as refused:
        validate_prompt(prompt, make_registry(REPO / "output"))
    assert refused.value.error["type"] == "invalid_prompt"
    assert refused.value.error["message"] == "Prompt nested too deeply"
