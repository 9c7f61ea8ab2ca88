"""Graph.submit against the project's ComfyUI-compatible server, served on 127.0.0.1 from a background thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from graphengine import NodeRegistry
from graphengine.examples import EXAMPLE_NODES
from graphengine.script import Graph, SubmitError

server_module = pytest.importorskip("graphengine.server")


def example_registry() -> NodeRegistry:
    registry = NodeRegistry()
    registry.register_all(EXAMPLE_NODES, python_module="graphengine.examples")
    return registry


@pytest.fixture
def server_url(tmp_path: Path) -> Iterator[str]:
    """Serve the app on an ephemeral port; yields its base URL and stops it afterwards."""
    config = server_module.ServerConfig(base_dir=tmp_path, database=":memory:", port=0)
    app = server_module.create_app(config, example_registry())
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = site._server.sockets[0].getsockname()[1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        loop.close()


def test_submit_queues_the_graph_and_returns_its_history_entry(server_url):
    g = Graph(example_registry())
    shown = g.ShowValue(value=g.Add(a=g.Number(value=40), b=2))
    entry = g.submit(server_url, client_id="script-test", timeout=60, poll_interval=0.05)
    assert entry["status"]["status_str"] == "success"
    assert entry["outputs"][shown.id] == {"text": ["42"]}
    assert entry["prompt"][2] == g.to_api()


def test_submit_reports_a_refused_prompt_with_its_node_errors(server_url):
    g = Graph(example_registry())
    g.ShowValue(value=g.Add(a=g.Number(value=1), b=2))
    prompt = g.to_api()
    prompt["2"]["inputs"]["b"] = 2**40  # out of bounds: the builder would refuse it, so break the export
    from graphengine.script import submit_prompt

    with pytest.raises(SubmitError, match=r"HTTP 400.*node 2 \(Add\): Value \d+ bigger than max") as info:
        submit_prompt(server_url, prompt, timeout=60)
    assert "2" in info.value.body["node_errors"]


def test_submit_raises_when_the_prompt_fails_on_the_server(server_url):
    g = Graph(example_registry())
    g.ShowValue(value=g.Fail(message="no good"))
    with pytest.raises(SubmitError, match=r"failed: Fail \(node 1\): no good"):
        g.submit(server_url, timeout=60, poll_interval=0.05)


def _ui_workflow(value: int) -> dict:
    def node(id, type, inputs, outputs, widgets):
        return {"id": id, "type": type, "mode": 0, "inputs": inputs, "outputs": outputs, "widgets_values": widgets}

    return {"nodes": [node(1, "Number", [], [{"name": "value", "type": "INT", "links": [1]}], [value]),
                      node(2, "ShowValue", [{"name": "value", "type": "*", "link": 1}], [], [])],
            "links": [[1, 1, 0, 2, 0, "INT"]], "version": 0.4}


def test_cli_run_server_accepts_api_ui_and_png_workflows(server_url, tmp_path, monkeypatch, capsys):
    import json
    import struct
    import zlib

    from graphengine.cli import main

    monkeypatch.setenv("GRAPHENGINE_NODE_PACKS", "graphengine.examples:register")
    ui_path = tmp_path / "ui.json"
    ui_path.write_text(json.dumps(_ui_workflow(3)))

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    png_path = tmp_path / "saved.png"  # a PNG carrying only a `workflow` (UI-format) chunk
    png_path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)) +
                         chunk(b"tEXt", b"workflow\0" + json.dumps(_ui_workflow(5)).encode()) + chunk(b"IEND", b""))
    api_path = tmp_path / "api.json"
    api_path.write_text(json.dumps({"1": {"class_type": "Number", "inputs": {"value": 7}},
                                    "2": {"class_type": "ShowValue", "inputs": {"value": ["1", 0]}}}))
    for path, expected in [(ui_path, "3"), (png_path, "5"), (api_path, "7")]:
        assert main(["run", str(path), "--server", server_url, "--json", "--timeout", "60"]) == 0
        assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["outputs"]["2"] == {"text": [expected]}
    api_path.write_text(json.dumps({"1": {"class_type": "Number", "inputs": {"value": 2**40}},
                                    "2": {"class_type": "ShowValue", "inputs": {"value": ["1", 0]}}}))
    assert main(["run", str(api_path), "--server", server_url]) == 2  # refused by the server's validation
    assert "HTTP 400" in capsys.readouterr().err
    api_path.write_text(json.dumps({"1": {"class_type": "Fail", "inputs": {"message": "nope"}},
                                    "2": {"class_type": "ShowValue", "inputs": {"value": ["1", 0]}}}))
    assert main(["run", str(api_path), "--server", server_url]) == 1
    assert "nope" in capsys.readouterr().err
