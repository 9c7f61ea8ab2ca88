"""The SQLite queue: ordering, crash recovery (abandoned object, kill -9 of a real server), history limits."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from graphengine.queue import DuplicatePromptError, PromptQueue, QueueItem

from .harness import async_test, chain, serve

REPO = Path(__file__).resolve().parents[2]


def item(queue: PromptQueue, tag: str, front: bool = False, client_id: str | None = None) -> QueueItem:
    extra = {"client_id": client_id} if client_id else {}
    return QueueItem(queue.next_number(front), f"id-{tag}", chain(tag=tag), extra, ["3"])


def test_order_priority_and_duplicates(tmp_path):
    queue = PromptQueue(tmp_path / "q.sqlite3")
    a, b = item(queue, "a"), item(queue, "b")
    c = item(queue, "c", front=True)
    for it in (a, b, c):
        queue.put(it)
    with pytest.raises(DuplicatePromptError):
        queue.put(a)
    assert [i.prompt_id for i in queue.pending()] == ["id-c", "id-a", "id-b"]
    assert queue.get(timeout=0).prompt_id == "id-c"
    assert [i.prompt_id for i in queue.running()] == ["id-c"] and queue.remaining() == 3
    entry = queue.finish("id-c", {"3": {"text": ["x"]}}, {"status_str": "success", "completed": True,
                                                          "messages": []})
    assert entry["prompt"] == c.as_list() and queue.remaining() == 2
    assert queue.history_entry("id-c") == entry
    assert queue.get(timeout=0).prompt_id == "id-a"
    queue.close()
    assert queue.get(timeout=0) is None


def test_abandoned_queue_reopens_with_running_and_pending_prompts(tmp_path):
    path = tmp_path / "q.sqlite3"
    queue = PromptQueue(path)
    for tag in ("one", "two", "three"):
        queue.put(item(queue, tag))
    queue.get(timeout=0)
    queue.finish("id-one", {}, {"status_str": "success", "completed": True, "messages": []})
    taken = queue.get(timeout=0)
    assert taken.prompt_id == "id-two"
    del queue  # crash mid-run: nothing closed, nothing finished
    reopened = PromptQueue(path)
    assert [i.prompt_id for i in reopened.pending()] == ["id-two", "id-three"]
    assert reopened.running() == [] and list(reopened.history()) == ["id-one"]
    assert reopened.next_number() == 3  # the counter survived too
    reopened.close()


def test_history_is_capped_oldest_first(tmp_path):
    queue = PromptQueue(tmp_path / "q.sqlite3", max_history=3)
    for n in range(5):
        queue.put(item(queue, str(n)))
        taken = queue.get(timeout=0)
        queue.finish(taken.prompt_id, {}, {"status_str": "success", "completed": True, "messages": []})
    assert list(queue.history()) == ["id-2", "id-3", "id-4"]
    assert list(queue.history(max_items=1)) == ["id-4"]
    queue.close()


@async_test
async def test_server_runs_every_prompt_left_in_a_reopened_database(tmp_path):
    path = tmp_path / "q.sqlite3"
    queue = PromptQueue(path)
    for tag in ("r1", "r2", "r3"):
        queue.put(item(queue, tag))
    queue.get(timeout=0)  # "r1" was running when the process died
    del queue
    async with serve(tmp_path, database=path) as srv:
        for tag in ("r1", "r2", "r3"):
            entry = await srv.wait_history(f"id-{tag}")
            assert entry["status"]["status_str"] == "success"
        assert srv.state.queue.remaining() == 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _http(port: int, method: str, path: str, body: dict | None = None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        raw = response.read()
        return json.loads(raw) if raw else None


def _start_server(base: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "GRAPHENGINE_NODE_PACKS": "tests.server.nodepack:register", "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, str(REPO / "server.py"), "--port", str(port), "--base-dir",
                                str(base), "--log-level", "WARNING"], cwd=REPO, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    for _ in range(600):  # bounded wait for the port (start-up imports), not a timing assertion
        if process.poll() is not None:
            raise AssertionError(process.stderr.read().decode())
        try:
            _http(port, "GET", "/prompt")
            return process
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise AssertionError("server did not start")


def test_kill_9_loses_no_prompt(tmp_path):
    port = _free_port()
    server = _start_server(tmp_path, port)
    try:
        ids = [_http(port, "POST", "/prompt", {"prompt": chain(steps=150, delay=0.01, tag="slow")})["prompt_id"]]
        ids += [_http(port, "POST", "/prompt", {"prompt": chain(tag=f"k{n}")})["prompt_id"] for n in range(3)]
        while not _http(port, "GET", "/queue")["queue_running"]:
            time.sleep(0.02)
        server.send_signal(signal.SIGKILL)
        server.wait(10)
        server = _start_server(tmp_path, port)
        for prompt_id in ids:
            while prompt_id not in (entry := _http(port, "GET", f"/history/{prompt_id}")):
                time.sleep(0.05)
            assert entry[prompt_id]["status"]["status_str"] == "success"
        history = _http(port, "GET", "/history")
        assert list(history) == ids  # the killed prompt ran first again, then the others in order
    finally:
        server.kill()
        server.wait(10)
