"""The SQLite queue: ordering, crash recovery (abandoned object, kill -9 of a real server), history limits."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import time

import pytest

from graphengine.queue import DuplicatePromptError, PromptQueue, QueueItem

from .harness import async_test, chain, free_port, http_json, serve, start_server_process, wait_until


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


def test_kill_9_loses_no_prompt(tmp_path):
    port = free_port()
    server = start_server_process(tmp_path, port)
    try:
        ids = [http_json(port, "POST", "/prompt", {"prompt": chain(steps=150, delay=0.01, tag="slow")})["prompt_id"]]
        ids += [http_json(port, "POST", "/prompt", {"prompt": chain(tag=f"k{n}")})["prompt_id"] for n in range(3)]
        while not http_json(port, "GET", "/queue")["queue_running"]:
            time.sleep(0.02)
        server.send_signal(signal.SIGKILL)
        server.wait(10)
        server = start_server_process(tmp_path, port)
        for prompt_id in ids:
            while prompt_id not in (entry := http_json(port, "GET", f"/history/{prompt_id}")):
                time.sleep(0.05)
            assert entry[prompt_id]["status"]["status_str"] == "success"
        history = http_json(port, "GET", "/history")
        assert list(history) == ids  # the killed prompt ran first again, then the others in order
    finally:
        server.kill()
        server.wait(10)


# -- poison prompts: attempts counted across crashes, not across clean stops ---------------------------------------

OLD_SCHEMA = """
CREATE TABLE queue (seq INTEGER PRIMARY KEY AUTOINCREMENT, prompt_id TEXT UNIQUE NOT NULL, number REAL NOT NULL,
                    state TEXT NOT NULL CHECK (state IN ('pending', 'running')), item TEXT NOT NULL);
CREATE INDEX queue_order ON queue (state, number, seq);
CREATE TABLE history (seq INTEGER PRIMARY KEY AUTOINCREMENT, prompt_id TEXT UNIQUE NOT NULL, entry TEXT NOT NULL);
CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


def crash_while_running(path, prompt_id: str) -> None:
    """Open the database, take prompts until `prompt_id` runs, and abandon it (a process dying mid-run)."""
    queue = PromptQueue(path)
    while (taken := queue.get(timeout=0)).prompt_id != prompt_id:
        queue.requeue(taken.prompt_id)
    del queue


def error_message(entry: dict) -> dict:
    assert entry["status"]["status_str"] == "error" and entry["status"]["completed"] is False
    errors = [data for kind, data in entry["status"]["messages"] if kind == "execution_error"]
    assert len(errors) == 1
    return errors[0]


def test_database_without_attempts_column_opens_and_counts_the_crash(tmp_path):
    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(OLD_SCHEMA)
    old = QueueItem(0, "id-old", chain(tag="old"), {}, ["3"])
    db.execute("INSERT INTO queue (prompt_id, number, state, item) VALUES (?, 0, 'running', ?)",
               (old.prompt_id, json.dumps(old.as_list())))
    db.commit()
    db.close()
    queue = PromptQueue(path)
    assert [(i.prompt_id, i.attempts) for i in queue.pending()] == [("id-old", 1)]
    queue.put(item(queue, "new"))
    assert queue.get(timeout=0).prompt_id == "id-old"
    queue.close()


def test_crashes_count_attempts_and_clean_requeues_do_not(tmp_path):
    path = tmp_path / "q.sqlite3"
    queue = PromptQueue(path)
    queue.put(item(queue, "a"))
    for _ in range(3):  # clean stops mid-run (the worker's requeue)
        queue.requeue(queue.get(timeout=0).prompt_id)
    assert queue.item("id-a")[1].attempts == 0
    del queue
    for crashes in (1, 2):
        crash_while_running(path, "id-a")
        reopened = PromptQueue(path)
        state, queued = reopened.item("id-a")
        assert state == "pending" and queued.attempts == crashes
        reopened.close()


@pytest.mark.parametrize("max_attempts,runs", [(2, False), (3, True)])
@async_test
async def test_prompt_running_at_too_many_crashes_is_failed_not_run(tmp_path, max_attempts, runs):
    path = tmp_path / "q.sqlite3"
    queue = PromptQueue(path)
    poison = QueueItem(queue.next_number(), "id-poison", chain(tag="poison"), {"client_id": "c1"}, ["3"])
    queue.put(poison)
    queue.put(item(queue, "after"))
    del queue
    crash_while_running(path, "id-poison")
    crash_while_running(path, "id-poison")
    async with serve(tmp_path, database=path, max_prompt_attempts=max_attempts) as srv:
        ws = await srv.ws("c1")
        entry = await srv.wait_history("id-poison")
        assert (await srv.wait_history("id-after"))["status"]["status_str"] == "success"
        steps = srv.state.registry.services.steps_of("poison")
        await ws.close()
    if runs:
        assert entry["status"]["status_str"] == "success" and steps == 2
        return
    error = error_message(entry)
    assert steps == 0  # never started a third time
    assert error["exception_type"] == "AbandonedPromptError" and error["prompt_id"] == "id-poison"
    assert "the server stopped while running this prompt, twice" in error["exception_message"]
    assert entry["prompt"] == poison.as_list()
    reopened = PromptQueue(path)  # and it stays failed: nothing left to run on the next start
    assert reopened.remaining() == 0
    reopened.close()


@async_test
async def test_clean_stops_do_not_count_and_the_requeued_prompt_can_be_interrupted(tmp_path):
    path = tmp_path / "q.sqlite3"
    prompt = chain(steps=100000, delay=0.01, tag="long")
    prompt_id = None
    for start in range(3):  # more clean stops mid-run than the attempts allowed
        async with serve(tmp_path, database=path) as srv:
            if prompt_id is None:
                prompt_id = (await srv.post_prompt(prompt))["prompt_id"]
            services = srv.state.registry.services
            while services.steps_of("long") == 0:
                await asyncio.sleep(0.02)
            if start == 2:
                response = await srv.client.post("/interrupt", json={"prompt_id": prompt_id})
                assert response.status == 200
                entry = await srv.wait_history(prompt_id)
    assert entry["status"]["status_str"] == "error"
    assert [kind for kind, _ in entry["status"]["messages"]][-1] == "execution_interrupted"


@async_test
async def test_prompt_requeued_by_a_crash_can_be_deleted_while_pending(tmp_path):
    path = tmp_path / "q.sqlite3"
    queue = PromptQueue(path)
    queue.put(item(queue, "crashed"))
    queue.get(timeout=0)
    queue.put(QueueItem(queue.next_number(front=True), "id-front", chain(steps=100000, delay=0.01, tag="front"),
                        {}, ["3"]))
    del queue
    async with serve(tmp_path, database=path) as srv:
        while not (await (await srv.client.get("/queue")).json())["queue_running"]:
            await asyncio.sleep(0.02)
        queued = await (await srv.client.get("/queue")).json()
        assert [i[1] for i in queued["queue_running"]] == ["id-front"]
        assert [i[1] for i in queued["queue_pending"]] == ["id-crashed"]
        assert (await srv.client.post("/queue", json={"delete": ["id-crashed"]})).status == 200
        assert (await (await srv.client.get("/queue")).json())["queue_pending"] == []
        await srv.client.post("/interrupt", json={})
        await srv.wait_history("id-front")
        assert srv.state.queue.remaining() == 0 and srv.state.queue.history_entry("id-crashed") is None
        assert srv.state.registry.services.steps_of("crashed") == 0


def test_kill_9_twice_fails_the_prompt_and_runs_the_rest(tmp_path):
    port = free_port()
    server = start_server_process(tmp_path, port)
    try:
        poison = http_json(port, "POST", "/prompt",
                           {"prompt": chain(steps=100000, delay=0.01, tag="poison")})["prompt_id"]
        after = http_json(port, "POST", "/prompt", {"prompt": chain(tag="after")})["prompt_id"]
        for _ in range(2):
            wait_until(lambda: [i[1] for i in http_json(port, "GET", "/queue")["queue_running"]] == [poison],
                       "the prompt to run")
            server.send_signal(signal.SIGKILL)
            server.wait(10)
            server = start_server_process(tmp_path, port)
        entries = {p: wait_until(lambda p=p: http_json(port, "GET", f"/history/{p}").get(p), f"history of {p}")
                   for p in (poison, after)}
        assert "stopped while running this prompt, twice" in error_message(entries[poison])["exception_message"]
        assert entries[after]["status"]["status_str"] == "success"
        assert http_json(port, "GET", "/queue") == {"queue_running": [], "queue_pending": []}
    finally:
        server.kill()
        server.wait(10)
