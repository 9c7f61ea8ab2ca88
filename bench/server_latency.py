"""Server overhead: POST /prompt -> websocket `executing {node: null}` for a fully cached prompt, and the throughput
of 100 queued tiny prompts.

Run: python bench/server_latency.py [--runs 50] [--queued 100]
The server is a real `server.py` process (persistent SQLite queue, default settings) with the pure-Python test node
pack (tests/server/nodepack.py), so no model or torch is involved. The baseline, measured in the same run, is the same
cached prompt executed in-process through `Executor.execute`: the difference is what HTTP, the queue, the worker
thread and the websocket add."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from graphengine import Executor  # noqa: E402
from tests.clients.live import free_port  # noqa: E402
from tests.server.nodepack import make_registry  # noqa: E402


def tiny_prompt(value: int) -> dict:
    """Number -> Slow (one step, no sleep) -> Show: three nodes, one progress event; distinct per `value`."""
    return {"1": {"class_type": "Number", "inputs": {"value": value % 1000}},
            "2": {"class_type": "Slow", "inputs": {"value": ["1", 0], "steps": 1, "delay": 0.0, "tag": f"v{value}",
                                                   "preview_size": 0}},
            "3": {"class_type": "Show", "inputs": {"value": ["2", 0]}}}


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def in_process_baseline(runs: int, output_dir: Path) -> list[float]:
    executor = Executor(make_registry(output_dir))
    prompt = tiny_prompt(7)
    assert executor.execute(prompt).ok
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        result = executor.execute(prompt)
        samples.append(time.perf_counter() - start)
        assert result.ok and not result.executed  # fully cached
    return samples


async def wait_done(ws: aiohttp.ClientWebSocketResponse, pending: set[str]) -> None:
    """Read frames until every prompt id in `pending` has sent `executing {node: null}` (removes them)."""
    while pending:
        message = await ws.receive()
        if message.type != aiohttp.WSMsgType.TEXT:
            if message.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                raise RuntimeError(f"websocket closed: {message}")
            continue
        event = json.loads(message.data)
        data = event["data"]
        if event["type"] == "execution_error":
            raise RuntimeError(data)
        if event["type"] == "executing" and data.get("node") is None:
            pending.discard(data.get("prompt_id"))


async def post(session: aiohttp.ClientSession, url: str, prompt: dict, client_id: str) -> str:
    async with session.post(f"{url}/prompt", json={"prompt": prompt, "client_id": client_id}) as response:
        body = await response.json()
        if response.status != 200:
            raise RuntimeError(body)
        return body["prompt_id"]


async def cached_latency(session, ws, url: str, client_id: str, runs: int) -> list[float]:
    prompt = tiny_prompt(7)
    await wait_done(ws, {await post(session, url, prompt, client_id)})  # warm: later runs are fully cached
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        prompt_id = await post(session, url, prompt, client_id)
        await wait_done(ws, {prompt_id})
        samples.append(time.perf_counter() - start)
    return samples


async def finished_ids(ws: aiohttp.ClientWebSocketResponse, count: int) -> set[str]:
    """Ids of the next `count` prompts to send `executing {node: null}`."""
    done: set[str] = set()
    while len(done) < count:
        message = await ws.receive()
        if message.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
            raise RuntimeError(f"websocket closed: {message}")
        if message.type == aiohttp.WSMsgType.TEXT:
            event = json.loads(message.data)
            if event["type"] == "executing" and event["data"].get("node") is None:
                done.add(event["data"]["prompt_id"])
    return done


async def queued_throughput(session, ws, url: str, client_id: str, count: int) -> float:
    """Queue `count` distinct prompts back to back while reading the websocket, until all have finished (the server
    cuts a client off only after it has read nothing for its send timeout)."""
    start = time.perf_counter()
    reader = asyncio.create_task(finished_ids(ws, count))
    posted = {await post(session, url, tiny_prompt(value), client_id) for value in range(100, 100 + count)}
    done = await reader
    elapsed = time.perf_counter() - start
    assert done == posted, "a prompt other than ours finished"
    return count / elapsed


async def measure_server(url: str, runs: int, queued: int) -> tuple[list[float], float]:
    client_id = uuid.uuid4().hex
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{url}/ws?clientId={client_id}") as ws:
            latency = await cached_latency(session, ws, url, client_id, runs)
            throughput = await queued_throughput(session, ws, url, client_id, queued)
    return latency, throughput


def start_server(base: Path, port: int, packs: str = "tests.server.nodepack:register",
                 extra_args: tuple[str, ...] = ()) -> subprocess.Popen:
    env = {**os.environ, "GRAPHENGINE_NODE_PACKS": packs,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen([sys.executable, str(ROOT / "server.py"), "--port", str(port), "--base-dir", str(base),
                             "--log-level", "WARNING", *extra_args], env=env, cwd=base)


async def wait_ready(url: str, process: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}")
            try:
                async with session.get(f"{url}/system_stats") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError("server did not start")


def ms(seconds: float) -> str:
    return f"{seconds * 1000:7.2f} ms"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--queued", type=int, default=100)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="graphengine-bench-") as folder:
        base = Path(folder)
        baseline = in_process_baseline(args.runs, base / "baseline_output")
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        process = start_server(base, port)
        try:
            asyncio.run(wait_ready(url, process))
            latency, throughput = asyncio.run(measure_server(url, args.runs, args.queued))
        finally:
            process.terminate()
            process.wait(timeout=20)
    print(f"cached prompt, {args.runs} runs            median     p90")
    print(f"  server POST -> executing null   {ms(statistics.median(latency))} {ms(percentile(latency, 0.9))}")
    print(f"  in-process Executor.execute      {ms(statistics.median(baseline))} {ms(percentile(baseline, 0.9))}")
    print(f"  server overhead (median diff)    {ms(statistics.median(latency) - statistics.median(baseline))}")
    print(f"throughput: {args.queued} queued tiny prompts    {throughput:7.1f} prompts/s")


if __name__ == "__main__":
    main()
