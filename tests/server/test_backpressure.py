"""Websocket back-pressure: a client that falls behind gets merged state frames and every result in order; a client
that reads is never cut off, however many prompts are queued; one that reads nothing is cut off after the send
timeout and its queue is freed."""

from __future__ import annotations

import asyncio
import gc
import json
import socket
import struct
import weakref

import aiohttp

from graphengine.server.hub import Preview
from graphengine.server.outbox import Outbox, message_key

from .harness import async_test, chain, receive_json, serve, stuck_client

# What a chain prompt sends besides state frames (status, progress, progress_state), in order.
RESULT_EVENTS = ["execution_start", "execution_cached", "executing", "executing", "executing", "executed",
                 "execution_success", "executing"]
STATE_EVENTS = ("status", "progress", "progress_state")


def narrow(hub, sid: str) -> None:
    """Shrink the server side's buffers for client `sid`, so its sender waits after a few KiB instead of MiBs."""
    transport = hub.clients[sid].request.transport
    transport.set_write_buffer_limits(high=4096)
    transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)


class FrameReader:
    """Reads the server's (unmasked) websocket frames from a raw socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()

    async def _fill(self, size: int) -> None:
        loop = asyncio.get_running_loop()
        while len(self.buffer) < size:
            chunk = await loop.sock_recv(self.sock, 65536)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            self.buffer += chunk

    async def frame(self) -> tuple[int, bytes]:
        await self._fill(2)
        opcode, length, head = self.buffer[0] & 0x0F, self.buffer[1] & 0x7F, 2
        if length == 126:
            await self._fill(4)
            length, head = struct.unpack(">H", self.buffer[2:4])[0], 4
        elif length == 127:
            await self._fill(10)
            length, head = struct.unpack(">Q", self.buffer[2:10])[0], 10
        await self._fill(head + length)
        payload = bytes(self.buffer[head:head + length])
        del self.buffer[:head + length]
        return opcode, payload


def test_state_frames_merge_only_behind_the_last_result():
    box = Outbox()
    status = [json.dumps({"type": "status", "data": {"status": {"exec_info": {"queue_remaining": n}}}})
              for n in range(3)]
    status_key = message_key(json.loads(status[0]))
    box.push(status[0], status_key, len(status[0]))
    assert box.merge(status[1], status_key, len(status[1]))  # nothing else queued since: the newest replaces it
    box.push('{"type": "executed"}', None, 20)
    assert not box.merge(status[2], status_key, len(status[2]))  # never moves ahead of a result
    box.push(status[2], status_key, len(status[2]))
    progress = {"type": "progress", "data": {"prompt_id": "p", "node": "2", "value": 1, "max": 9}}
    assert message_key(progress) == ("progress", "p", "2")
    assert message_key({"type": "executing", "data": {"node": None, "prompt_id": "p"}}) is None
    assert message_key({"type": "status", "data": {"status": {}, "sid": "me"}}) is None  # the greeting stays
    box.push(Preview(b"x" * 1000, "image/jpeg", {}), ("preview", "p", "2"), 1000)
    assert box.discard(Preview) == 1
    assert [box.pop() for _ in range(len(box))] == [status[1], '{"type": "executed"}', status[2]]
    assert box.bytes == 0


@async_test
async def test_a_lagging_client_gets_every_result_in_order_and_the_newest_state(tmp_path):
    async with serve(tmp_path, ws_send_timeout=60) as srv:
        sock = await stuck_client(srv.client.server.port, "lag")
        hub = srv.state.hub
        narrow(hub, "lag")
        steps, count = 20, 20
        ids = [(await srv.post_prompt(chain(value=n, steps=steps, tag=f"lag{n}"), client_id="lag"))["prompt_id"]
               for n in range(count)]
        for prompt_id in ids:
            await srv.wait_history(prompt_id)
        reader, messages = FrameReader(sock), []
        while True:  # only now does the client start reading
            opcode, payload = await reader.frame()
            assert opcode == 1
            message = json.loads(payload)
            messages.append(message)
            if message["type"] == "executing" and message["data"] == {"node": None, "prompt_id": ids[-1]}:
                break
        results = [m for m in messages[1:] if m["type"] not in STATE_EVENTS]
        assert [m["data"]["prompt_id"] for m in results] == [i for i in ids for _ in RESULT_EVENTS]
        assert [m["type"] for m in results] == RESULT_EVENTS * count
        executed = [m["data"]["output"]["text"] for m in results if m["type"] == "executed"]
        assert executed == [[str(n + steps)] for n in range(count)]
        progress = [m["data"] for m in messages if m["type"] == "progress"]
        assert len(progress) < steps * count  # merged while the client was behind …
        for prompt_id in ids:  # … and the newest one of every prompt won
            assert [p["value"] for p in progress if p["prompt_id"] == prompt_id][-1] == steps
        statuses = [m["data"]["status"]["exec_info"]["queue_remaining"] for m in messages if m["type"] == "status"]
        assert statuses[-1] == 0
        assert hub.disconnected_slow_clients == 0 and "lag" in hub.clients
        sock.close()


@async_test
async def test_a_reading_client_is_never_cut_off_while_1000_prompts_are_queued(tmp_path):
    async with serve(tmp_path) as srv:
        ws = await srv.ws("reader")
        await receive_json(ws)
        count = 1000

        async def read_until_all_done() -> dict[str, str]:
            shown: dict[str, str] = {}
            done: set[str] = set()
            frames = 0
            while len(done) < count:
                msg = await ws.receive()
                assert msg.type == aiohttp.WSMsgType.TEXT, msg  # a close here would mean we were cut off
                frames += 1
                if frames % 5 == 0:
                    await asyncio.sleep(0.002)  # reads steadily, but slower than the server writes
                message = json.loads(msg.data)
                data = message["data"]
                if message["type"] == "executed":
                    shown[data["prompt_id"]] = data["output"]["text"][0]
                if message["type"] == "executing" and data["node"] is None:
                    done.add(data["prompt_id"])
            return shown

        reading = asyncio.ensure_future(read_until_all_done())
        posted = {}
        for n in range(count):
            reply = await srv.post_prompt(chain(value=n % 1000, steps=1, tag=f"f{n}"), client_id="reader")
            posted[reply["prompt_id"]] = str(n % 1000 + 1)
        assert await reading == posted
        hub = srv.state.hub
        assert hub.disconnected_slow_clients == 0 and "reader" in hub.clients
        await ws.close()


@async_test
async def test_a_client_that_reads_nothing_is_cut_off_after_the_send_timeout_and_freed(tmp_path):
    async with serve(tmp_path, ws_send_timeout=0.5) as srv:
        hub = srv.state.hub
        sock = await stuck_client(srv.client.server.port, "stuck")
        narrow(hub, "stuck")
        stuck = weakref.ref(hub.clients["stuck"])
        reader = await srv.ws("reader")
        await receive_json(reader)
        await srv.post_prompt(chain(steps=200, preview_size=64, tag="flood"), client_id="stuck",
                              extra_data={"preview_method": "auto"})
        while "stuck" in hub.clients:
            await asyncio.sleep(0.05)
        assert hub.disconnected_slow_clients == 1
        reply = await srv.post_prompt(chain(steps=3, tag="after"), client_id="reader")  # the others go on
        while True:
            message = await receive_json(reader)
            if message["type"] == "executing" and message["data"] == {"node": None, "prompt_id": reply["prompt_id"]}:
                break
        frames = FrameReader(sock)
        try:
            while True:  # what was already on the wire, then the end of the connection
                await frames.frame()
        except ConnectionError:
            pass
        while stuck() is not None:  # its queue and socket are released, not parked somewhere
            gc.collect()
            await asyncio.sleep(0.05)
        assert hub.disconnected_slow_clients == 1
        sock.close()
        await reader.close()
