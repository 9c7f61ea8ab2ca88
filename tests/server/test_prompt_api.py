"""POST /prompt, /queue, /history: responses and shapes as ComfyUI clients parse them."""

from __future__ import annotations

import asyncio

from .harness import async_test, chain, serve


@async_test
async def test_valid_prompt_is_queued_then_recorded_in_history(tmp_path):
    async with serve(tmp_path) as srv:
        reply = await srv.post_prompt(chain(value=5, steps=3, delay=0.4, tag="a"), client_id="c1")
        assert set(reply) == {"prompt_id", "number", "node_errors"}
        assert reply["node_errors"] == {}
        queue = await (await srv.client.get("/queue")).json()
        listed = [item[1] for item in queue["queue_running"] + queue["queue_pending"]]
        history = await (await srv.client.get(f"/history/{reply['prompt_id']}")).json()
        # queued from the moment POST returned: listed, or (on a loaded machine) already run and in the history
        assert reply["prompt_id"] in listed or reply["prompt_id"] in history
        entry = await srv.wait_history(reply["prompt_id"])
        number, prompt_id, prompt, extra_data, outputs = entry["prompt"]
        assert (number, prompt_id) == (reply["number"], reply["prompt_id"])
        assert prompt["2"]["class_type"] == "Slow" and outputs == ["3"]
        assert extra_data["client_id"] == "c1" and isinstance(extra_data["create_time"], int)
        assert entry["outputs"] == {"3": {"text": ["8"]}}
        assert entry["status"]["status_str"] == "success" and entry["status"]["completed"] is True
        kinds = [m[0] for m in entry["status"]["messages"]]
        assert kinds == ["execution_start", "execution_cached", "execution_success"]
        queue = await (await srv.client.get("/api/queue")).json()
        assert queue == {"queue_running": [], "queue_pending": []}
        assert await (await srv.client.get("/prompt")).json() == {"exec_info": {"queue_remaining": 0}}


@async_test
async def test_invalid_prompt_gets_comfyui_400_body(tmp_path):
    async with serve(tmp_path) as srv:
        bad = chain()
        bad["2"]["inputs"]["steps"] = 0  # below min
        response = await srv.client.post("/api/prompt", json={"prompt": bad})
        assert response.status == 400
        body = await response.json()
        assert body["error"]["type"] == "prompt_outputs_failed_validation"
        assert set(body["error"]) == {"type", "message", "details", "extra_info"}
        errors = body["node_errors"]["2"]
        assert errors["class_type"] == "Slow" and errors["dependent_outputs"] == ["3"]
        assert errors["errors"][0]["type"] == "value_smaller_than_min"
        unknown = await srv.client.post("/prompt", json={"prompt": {"1": {"class_type": "Nope", "inputs": {}}}})
        assert unknown.status == 400 and await unknown.json() == {
            "error": {"type": "missing_node_type", "message": "Cannot execute because node Nope does not exist.",
                      "details": "Node ID '#1'", "extra_info": {
                          "node_id": "1", "class_type": "Nope", "node_title": None,
                          "missing_nodes": [{"node_id": "1", "class_type": "Nope", "node_title": None, "hint": None}]}},
            "node_errors": {}}
        several = {**chain(), "7": {"class_type": "Nope", "inputs": {}}, "8": {"class_type": "Gone", "inputs": {}}}
        body = await (await srv.client.post("/api/prompt", json={"prompt": several})).json()
        assert body["error"]["message"] == "Cannot execute because node Nope does not exist. Also missing: Gone."
        assert [m["node_id"] for m in body["error"]["extra_info"]["missing_nodes"]] == ["7", "8"]
        assert body["error"]["details"] == "Node ID '#7' (Nope)\nNode ID '#8' (Gone)" and body["node_errors"] == {}
        assert srv.state.queue.remaining() == 0 and srv.state.queue.history() == {}


@async_test
async def test_malformed_bodies_get_structured_400(tmp_path):
    async with serve(tmp_path) as srv:
        cases = [b"{not json", b"", b"[1, 2]", b'"text"', b'{"prompt": {"1": 5}}', b'{"no_prompt": 1}',
                 b'{"prompt": {}, "extra_data": 3}', b'{"prompt": {}, "prompt_id": "../x"}',
                 b'{"prompt": {}, "number": "abc"}', b"\xff\xfe\x00"]
        for raw in cases:
            response = await srv.client.post("/prompt", data=raw, headers={"Content-Type": "application/json"})
            assert response.status == 400, raw
            body = await response.json()
            assert isinstance(body["error"]["type"], str) and "message" in body["error"], raw
        for path in ("/queue", "/history", "/api/jobs/cancel", "/settings"):
            response = await srv.client.post(path, data=b"{oops")
            assert response.status == 400, path
            assert (await response.json())["error"]["type"] == "invalid_json"


@async_test
async def test_partially_invalid_prompt_runs_valid_outputs_and_reports_node_errors(tmp_path):
    async with serve(tmp_path) as srv:
        prompt = chain(tag="p")
        prompt["9"] = {"class_type": "Show", "inputs": {"value": ["8", 0]}}
        prompt["8"] = {"class_type": "Number", "inputs": {"value": 5000}}  # above max
        reply = await srv.post_prompt(prompt)
        assert set(reply["node_errors"]) == {"8"} and reply["node_errors"]["8"]["dependent_outputs"] == ["9"]
        entry = await srv.wait_history(reply["prompt_id"])
        assert entry["prompt"][4] == ["3"] and set(entry["outputs"]) == {"3"}


@async_test
async def test_priority_front_and_explicit_number(tmp_path):
    async with serve(tmp_path) as srv:
        blocker = await srv.post_prompt(chain(steps=200, delay=0.02, tag="block"))
        while srv.state.worker.running_prompt_id() != blocker["prompt_id"]:
            await asyncio.sleep(0.01)
        late = await srv.post_prompt(chain(tag="late"))
        front = await srv.post_prompt(chain(tag="front"), front=True)
        explicit = await srv.post_prompt(chain(tag="explicit"), number=-1000.5)
        assert front["number"] < 0 and explicit["number"] == -1000.5
        pending = (await (await srv.client.get("/queue")).json())["queue_pending"]
        assert [p[1] for p in sorted(pending, key=lambda p: p[0])] == \
            [explicit["prompt_id"], front["prompt_id"], late["prompt_id"]]
        await srv.client.post("/interrupt")
        for reply in (explicit, front, late):
            await srv.wait_history(reply["prompt_id"])
        history = await (await srv.client.get("/history")).json()
        assert list(history) == [blocker["prompt_id"], explicit["prompt_id"], front["prompt_id"], late["prompt_id"]]


@async_test
async def test_queue_and_history_editing(tmp_path):
    async with serve(tmp_path) as srv:
        blocker = await srv.post_prompt(chain(steps=500, delay=0.02, tag="block"))
        while srv.state.worker.running_prompt_id() != blocker["prompt_id"]:
            await asyncio.sleep(0.01)
        a = await srv.post_prompt(chain(tag="a"))
        b = await srv.post_prompt(chain(tag="b"))
        c = await srv.post_prompt(chain(tag="c"))
        assert (await srv.client.post("/api/queue", json={"delete": [a["prompt_id"]]})).status == 200
        pending = (await (await srv.client.get("/queue")).json())["queue_pending"]
        assert sorted(p[1] for p in pending) == sorted([b["prompt_id"], c["prompt_id"]])
        assert all(len(p) == 5 for p in pending)
        await srv.client.post("/queue", json={"clear": True})
        assert (await (await srv.client.get("/queue")).json())["queue_pending"] == []
        running = (await (await srv.client.get("/queue")).json())["queue_running"]
        assert [r[1] for r in running] == [blocker["prompt_id"]]  # clear leaves the running prompt
        await srv.client.post("/interrupt", json={"prompt_id": blocker["prompt_id"]})
        entry = await srv.wait_history(blocker["prompt_id"])
        assert entry["status"]["status_str"] == "error"
        ids = []
        for tag in ("h1", "h2", "h3"):
            reply = await srv.post_prompt(chain(tag=tag))
            await srv.wait_history(reply["prompt_id"])
            ids.append(reply["prompt_id"])
        newest = await (await srv.client.get("/history?max_items=2")).json()
        assert list(newest) == ids[1:]
        skipped = await (await srv.client.get("/history?offset=1&max_items=2")).json()
        assert list(skipped) == ids[:2]
        assert (await srv.client.get("/history?max_items=x")).status == 400
        await srv.client.post("/history", json={"delete": [ids[0]]})
        assert await (await srv.client.get(f"/history/{ids[0]}")).json() == {}
        await srv.client.post("/api/history", json={"clear": True})
        assert await (await srv.client.get("/history")).json() == {}
