"""Websocket protocol: event sequence and routing, errors, interrupts, late joiners, previews, flags."""

from __future__ import annotations

import asyncio
import json
import struct

import aiohttp

from .harness import async_test, chain, receive_json, receive_until_done, serve, stuck_client


def types(frames):
    return [kind for kind, _ in frames]


@async_test
async def test_event_sequence_goes_to_the_posting_client_only(tmp_path):
    async with serve(tmp_path) as srv:
        mine = await srv.ws("me")
        other = await srv.ws()
        hello = await receive_json(mine)
        assert hello["type"] == "status" and hello["data"]["sid"] == "me"
        assert hello["data"]["status"] == {"exec_info": {"queue_remaining": 0}}
        other_sid = (await receive_json(other))["data"]["sid"]
        assert other_sid and other_sid != "me"
        reply = await srv.post_prompt(chain(value=2, steps=2, tag="seq"), client_id="me")
        frames = await receive_until_done(mine, reply["prompt_id"])
        execution = [(k, d) for k, d in frames if k != "status"]
        ps = "progress_state"
        assert types(execution) == ["execution_start", "execution_cached",
                                    ps, "executing", ps,                                       # node 1
                                    ps, "executing", ps, "progress", ps, "progress", ps,       # node 2, 2 steps
                                    ps, "executing", ps, "executed",                           # node 3
                                    "execution_success", "executing"]
        states = [d for k, d in execution if k == ps]
        assert states[0]["nodes"] == {"1": {"value": 0, "max": 1, "state": "running", "node_id": "1",
                                            "prompt_id": reply["prompt_id"], "display_node_id": "1",
                                            "parent_node_id": None, "real_node_id": "1"}}
        # every message carries all started nodes: node 2's step 1 of 2 beside node 1 finished
        assert {k: (v["state"], v["value"], v["max"]) for k, v in states[3]["nodes"].items()} == {
            "1": ("finished", 1, 1), "2": ("running", 1, 2)}
        # each step's progress_state comes right before its progress, with the same value (ComfyUI's order)
        steps = [(k, d["value"] if k == "progress" else d["nodes"]["2"]["value"]) for k, d in execution
                 if k == "progress" or (k == ps and d["nodes"].get("2", {}).get("state") == "running")]
        assert steps == [(ps, 0), (ps, 1), ("progress", 1), (ps, 2), ("progress", 2)]
        assert {k: (v["state"], v["value"], v["max"]) for k, v in states[-1]["nodes"].items()} == {
            "1": ("finished", 1, 1), "2": ("finished", 2, 2), "3": ("finished", 1, 1)}
        assert [d["node"] for k, d in execution if k == "executing"] == ["1", "2", "3", None]
        assert all(d["prompt_id"] == reply["prompt_id"] for _, d in execution)
        executed = next(d for k, d in execution if k == "executed")
        assert executed["node"] == "3" and executed["output"] == {"text": ["4"]}
        # the history entry exists by the time executing{node: null} arrives, and the queue no longer counts it
        assert reply["prompt_id"] in await (await srv.client.get(f"/history/{reply['prompt_id']}")).json()
        statuses = [d["status"]["exec_info"]["queue_remaining"] for k, d in frames if k == "status"]
        assert statuses[-1] == 0
        # the other socket only ever saw broadcast status messages
        await other.send_str("ignored")
        seen = []
        while True:
            try:
                msg = await other.receive(timeout=0.3)
            except asyncio.TimeoutError:
                break
            seen.append(json.loads(msg.data)["type"])
        assert set(seen) <= {"status"} and seen
        # re-running the same prompt is fully cached
        again = await srv.post_prompt(chain(value=2, steps=2, tag="seq"), client_id="me")
        frames = await receive_until_done(mine, again["prompt_id"])
        cached = next(d for k, d in frames if k == "execution_cached")
        assert sorted(cached["nodes"]) == ["1", "2", "3"]
        # the cached output node is still visited: its UI again, then its finished state (ComfyUI's order)
        assert [k for k in types(frames) if k != "status"] == [
            "execution_start", "execution_cached", "executed", ps, "execution_success", "executing"]
        finished = next(d for k, d in frames if k == ps)
        assert {k: (v["state"], v["value"], v["max"]) for k, v in finished["nodes"].items()} == {
            "3": ("finished", 1, 1)}
        # queued, dequeued (the running prompt still counts, however fast it ran), done
        assert [d["status"]["exec_info"]["queue_remaining"] for k, d in frames if k == "status"] == [1, 1, 0]
        await mine.close()
        await other.close()


@async_test
async def test_node_error_reports_and_next_prompt_runs(tmp_path):
    async with serve(tmp_path) as srv:
        ws = await srv.ws("err")
        await receive_json(ws)
        failing = await srv.post_prompt(chain(tag="f", fail=True), client_id="err")
        good = await srv.post_prompt(chain(tag="g"), client_id="err")
        frames = await receive_until_done(ws, failing["prompt_id"])
        error = next(d for k, d in frames if k == "execution_error")
        assert error["node_id"] == "4" and error["node_type"] == "Fail"
        assert error["exception_message"] == "boom" and error["exception_type"] == "ValueError"
        assert error["executed"] == ["1", "2"] and isinstance(error["traceback"], list)
        assert "execution_success" not in types(frames)
        frames = await receive_until_done(ws, good["prompt_id"])
        assert "execution_success" in types(frames)
        entry = await srv.wait_history(failing["prompt_id"])
        assert entry["status"]["status_str"] == "error" and entry["status"]["completed"] is False
        assert entry["status"]["messages"][-1][0] == "execution_error"
        await ws.close()


@async_test
async def test_interrupt_stops_within_one_step_and_targets_only_its_prompt(tmp_path):
    async with serve(tmp_path) as srv:
        ws = await srv.ws("int")
        await receive_json(ws)
        reply = await srv.post_prompt(chain(steps=10000, delay=0.01, tag="long"), client_id="int")
        while True:
            message = await receive_json(ws)
            if message["type"] == "progress":
                break
        services = srv.state.registry.services
        assert (await srv.client.post("/interrupt", json={"prompt_id": "someone-else"})).status == 200
        await receive_json(ws)  # still progressing after a targeted interrupt of another prompt
        started_before = services.steps_of("long")
        assert (await srv.client.post("/api/interrupt", json={"prompt_id": reply["prompt_id"]})).status == 200
        frames = await receive_until_done(ws, reply["prompt_id"])
        assert services.steps_of("long") <= started_before + 1
        interrupted = next(d for k, d in frames if k == "execution_interrupted")
        assert interrupted["node_id"] == "2" and interrupted["node_type"] == "Slow"
        entry = await srv.wait_history(reply["prompt_id"])
        assert entry["status"]["status_str"] == "error"
        job = await (await srv.client.get(f"/api/jobs/{reply['prompt_id']}")).json()
        assert job["status"] == "cancelled"
        await ws.close()


@async_test
async def test_late_joiner_gets_the_rest_of_its_prompt(tmp_path):
    async with serve(tmp_path) as srv:
        running = await srv.post_prompt(chain(steps=30, delay=0.01, tag="late-run"), client_id="late")
        finished = await srv.post_prompt(chain(tag="late-done"), client_id="gone")
        await srv.wait_history(finished["prompt_id"])
        ws = await srv.ws("late")
        assert (await receive_json(ws))["data"]["sid"] == "late"
        frames = await receive_until_done(ws, running["prompt_id"])
        assert "execution_success" in types(frames)
        # a client that connects after its prompt finished still learns it finished
        ws2 = await srv.ws("gone")
        frames = await receive_until_done(ws2, finished["prompt_id"])
        assert types(frames)[0] == "status" and "execution_success" in types(frames)
        await ws.close()
        await ws2.close()


@async_test
async def test_feature_flags_and_preview_frames(tmp_path):
    async with serve(tmp_path) as srv:
        plain = await srv.ws("plain")
        meta = await srv.ws("meta")
        await receive_json(plain)
        await receive_json(meta)
        await meta.send_json({"type": "feature_flags", "data": {"supports_preview_metadata": True}})
        flags = await receive_json(meta)
        assert flags["type"] == "feature_flags" and flags["data"]["supports_preview_metadata"] is True
        assert flags["data"] == await (await srv.client.get("/api/features")).json()
        # the default method (auto) previews only to sockets that negotiated previews (the editor)
        reply = await srv.post_prompt(chain(steps=2, preview_size=32, tag="nopreview"), client_id="plain")
        frames = await receive_until_done(plain, reply["prompt_id"])
        assert "binary" not in types(frames)
        assert [d["node"] for k, d in frames if k == "executed"] == ["3"]  # ComfyUI's: output nodes only
        reply = await srv.post_prompt(chain(steps=2, preview_size=32, tag="default"), client_id="meta")
        frames = await receive_until_done(meta, reply["prompt_id"])
        assert types(frames).count("binary") == 2
        # the editor's total progress counts nodes it got `executed` or `execution_cached` for: it hears of every one
        executed = [d for k, d in frames if k == "executed"]
        cached = {n for k, d in frames if k == "execution_cached" for n in d["nodes"]}
        assert {d["node"] for d in executed} | cached == {"1", "2", "3"} and "2" in {d["node"] for d in executed}
        assert all(d["output"] == {} and d["merge"] is True for d in executed if d["node"] != "3")
        assert next(d for d in executed if d["node"] == "3")["output"]
        done_2 = next(i for i, (k, d) in enumerate(frames) if k == "executed" and d["node"] == "2")
        assert done_2 < frames.index(("executing", {"node": "3", "display_node": "3", "prompt_id": reply["prompt_id"]}))
        # requested per prompt: type 1 for a client without metadata support …
        reply = await srv.post_prompt(chain(steps=2, preview_size=32, tag="p1"), client_id="plain",
                                      extra_data={"preview_method": "auto"})
        frames = await receive_until_done(plain, reply["prompt_id"])
        binaries = [d for k, d in frames if k == "binary"]
        assert len(binaries) == 2
        assert struct.unpack(">II", binaries[0][:8]) == (1, 1) and binaries[0][8:10] == b"\xff\xd8"
        first_binary = types(frames).index("binary")
        assert "progress" in types(frames)[:first_binary]
        # … and type 4 with metadata for one that negotiated it
        reply = await srv.post_prompt(chain(steps=1, preview_size=32, tag="p4"), client_id="meta",
                                      extra_data={"preview_method": "latent2rgb"})
        frames = await receive_until_done(meta, reply["prompt_id"])
        frame = next(d for k, d in frames if k == "binary")
        kind, size = struct.unpack(">II", frame[:8])
        info = json.loads(frame[8:8 + size])
        assert kind == 4 and info["node_id"] == "2" and info["prompt_id"] == reply["prompt_id"]
        assert info["image_type"] == "image/jpeg" and frame[8 + size:8 + size + 2] == b"\xff\xd8"
        await plain.close()
        await meta.close()


@async_test
async def test_prompt_without_client_id_broadcasts_only_progress_and_the_end(tmp_path):
    async with serve(tmp_path) as srv:
        ws = await srv.ws()
        await receive_json(ws)
        reply = await srv.post_prompt(chain(steps=2, tag="anon"))
        frames = await receive_until_done(ws, reply["prompt_id"])
        assert set(types(frames)) == {"status", "progress", "progress_state", "executing"}
        assert [d["node"] for k, d in frames if k == "executing"] == [None]
        await ws.close()


@async_test
async def test_a_stuck_client_does_not_stall_a_reading_one(tmp_path):
    async with serve(tmp_path, ws_queue_limit=128, ws_send_timeout=60) as srv:
        port = srv.client.server.port
        stuck = await stuck_client(port, "stuck")
        reader = await srv.ws("reader")
        await receive_json(reader)
        flood = await srv.post_prompt(chain(steps=60, preview_size=384, tag="flood"), client_id="stuck",
                                      extra_data={"preview_method": "auto"})
        mine = await srv.post_prompt(chain(steps=40, preview_size=64, tag="mine"), client_id="reader",
                                     extra_data={"preview_method": "auto"})
        frames = await receive_until_done(reader, mine["prompt_id"])
        assert types(frames).count("progress") == 40 and "execution_success" in types(frames)
        assert (await srv.wait_history(flood["prompt_id"]))["status"]["status_str"] == "success"
        hub = srv.state.hub
        client = hub.clients.get("stuck")
        if client is not None:  # still connected: its backlog stayed bounded, previews went first
            assert len(client.pending) <= hub.queue_limit and client.dropped_previews > 0
        else:
            assert hub.disconnected_slow_clients >= 1
        stuck.close()
        await reader.close()


@async_test
async def test_reconnect_replaces_socket_and_unknown_frames_are_ignored(tmp_path):
    async with serve(tmp_path) as srv:
        first = await srv.ws("same")
        await receive_json(first)
        await first.send_str("{not json")
        second = await srv.ws("same")
        await receive_json(second)
        reply = await srv.post_prompt(chain(tag="re"), client_id="same")
        assert "execution_success" in types(await receive_until_done(second, reply["prompt_id"]))
        msg = await first.receive(timeout=5)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)
        await second.close()


@async_test
async def test_100_prompts_10_clients_one_never_reads(tmp_path):
    """Nine reading clients and one that never reads share 100 prompts: every reader gets every event of its own
    prompts, in order, ending with `executing {node: null}`, and none of another client's."""
    async with serve(tmp_path) as srv:
        stuck = await stuck_client(srv.client.server.port, "stuck")
        readers = {f"reader{i}": await srv.ws(f"reader{i}") for i in range(9)}
        for ws in readers.values():
            assert (await receive_json(ws))["type"] == "status"
        owners: dict[str, str] = {}
        for n in range(100):
            client_id = "stuck" if n % 10 == 9 else f"reader{n % 10}"
            posted = await srv.post_prompt(chain(value=n, steps=2, tag=f"p{n}"), client_id=client_id)
            owners[posted["prompt_id"]] = client_id

        async def collect(client_id: str, ws) -> dict[str, list[str]]:
            mine = {pid for pid, owner in owners.items() if owner == client_id}
            seen: dict[str, list[str]] = {}
            done: set[str] = set()
            while done != mine:
                message = await receive_json(ws)
                data = message["data"]
                if message["type"] == "status":
                    continue
                pid = data.get("prompt_id")
                assert pid in mine, (client_id, message)  # never another client's events
                seen.setdefault(pid, []).append(message["type"])
                if message["type"] == "executing" and data.get("node") is None:
                    done.add(pid)
            return seen

        results = await asyncio.gather(*(collect(cid, ws) for cid, ws in readers.items()))
        ps = "progress_state"
        expected = ["execution_start", "execution_cached", ps, "executing", ps, ps, "executing", ps, "progress",
                    ps, "progress", ps, ps, "executing", ps, "executed", "execution_success", "executing"]
        for seen in results:
            assert len(seen) == 10 and all(types_ == expected for types_ in seen.values()), seen
        for pid, owner in owners.items():
            if owner == "stuck":
                assert (await srv.wait_history(pid))["status"]["status_str"] == "success"
        stuck.close()
        for ws in readers.values():
            await ws.close()
