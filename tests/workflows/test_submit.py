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
