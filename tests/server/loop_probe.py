"""Run in a fresh interpreter: serve the real node pack, then POST its first prompt while a ticker coroutine
measures how late the event loop wakes it. Prints one JSON line: the POST's status, the heavy modules imported by
the request, and the loop's worst lag while it was validated (and, with --run, while the prompt ran).

    python -m tests.server.loop_probe BASE_DIR MODELS_DIR WORKFLOW.json [--run]"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import aiohttp
from aiohttp import web

from graphengine.server import ServerConfig, create_app
from graphengine.server.state import STATE

TICK = 0.01
HEAVY_MODULES = ("torch", "diffusers", "transformers")


def heavy_modules(names: set[str]) -> list[str]:
    """The model machinery among `names` (at most 20, sorted)."""
    return sorted(n for n in names if n.split(".")[0] in HEAVY_MODULES or n.startswith("nodes."))[:20]


class LagMeter:
    """A coroutine that sleeps TICK at a time and records how much later than asked it wakes up."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._tick())

    async def _tick(self) -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(TICK)
            self.worst = max(self.worst, time.perf_counter() - before - TICK)

    def reset(self) -> float:
        worst, self.worst = self.worst, 0.0
        return worst

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()


async def probe(base: Path, models: Path, workflow: Path, run: bool) -> dict:
    config = ServerConfig(base_dir=base, models_dir=models, database=":memory:")
    app = create_app(config)
    runner = web.AppRunner(app)
    started = time.perf_counter()
    await runner.setup()  # on_startup: the node pack's warm-up runs here, before the socket accepts anything
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    startup_s = time.perf_counter() - started
    port = site._server.sockets[0].getsockname()[1]  # noqa: SLF001 - the port the OS picked
    if not run:  # only the request is measured: no prompt starts, so shutting down waits for nothing
        await asyncio.get_running_loop().run_in_executor(None, app[STATE].worker.stop)
    meter = LagMeter()
    meter.start()
    await asyncio.sleep(0.2)
    idle_lag = meter.reset()
    prompt = json.loads(workflow.read_text())
    heavy_before = sorted(m for m in HEAVY_MODULES if m in sys.modules)
    modules_before = set(sys.modules)
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"http://127.0.0.1:{port}/ws?clientId=probe") as ws:
            posted = time.perf_counter()
            async with session.post(f"http://127.0.0.1:{port}/prompt",
                                    json={"prompt": prompt, "client_id": "probe"}) as response:
                status, body = response.status, await response.json()
            post_s = time.perf_counter() - posted
            validate_lag = meter.reset()
            imported_by_post = heavy_modules(set(sys.modules) - modules_before)
            finished = status != 200 or not run
            event = {"type": None}
            while not finished:
                message = await ws.receive(timeout=300)
                if message.type != aiohttp.WSMsgType.TEXT:
                    continue
                event = json.loads(message.data)
                finished = event["type"] in ("execution_success", "execution_error")
            run_lag = meter.reset()
            imported_by_run = heavy_modules(set(sys.modules) - modules_before)
    meter.stop()
    await runner.cleanup()
    return {"heavy_imported_at_start": heavy_before, "startup_s": startup_s, "idle_lag_s": idle_lag,
            "post_status": status, "post_s": post_s, "validate_max_lag_s": validate_lag,
            "imported_by_post": imported_by_post, "imported_by_run": imported_by_run, "run_event": event["type"],
            "run_max_lag_s": run_lag, "node_errors": body.get("node_errors") if isinstance(body, dict) else body}


def main() -> None:
    base, models, workflow = (Path(a) for a in sys.argv[1:4])
    print(json.dumps(asyncio.run(probe(base, models, workflow, "--run" in sys.argv[4:]))), flush=True)


if __name__ == "__main__":
    main()
