"""Soak: N prompts x M websocket clients for a fixed time against a real server, sampling the server's RSS.

Run: python bench/soak.py [--duration 60] [--rate 20] [--clients 6] [--repeat K] [--sd]
The server is a real `server.py` process on 127.0.0.1 with temporary folders. Its clients: M-2 that read normally,
one slow reader (10 ms per frame: it falls behind and gets merged state frames) and one that never reads (it must be
cut off after the server's send timeout). Prompts are the pure-Python test pack's tiny chains, posted at a fixed rate
round-robin for the clients (the never-reading one's carry previews), every one distinct, so each runs and adds its
results to the server's result cache (`--repeat K`: only K distinct ones, so after the first K the results come from
the cache and the cache stops growing); `--sd` makes every 10th prompt the bundled demo model's txt2img at 64x64
(4 steps). Then it waits for the queue to drain and prints prompts completed, clients cut
off, and the server's RSS (from /proc/PID/statm, every second): start, peak, end and slope. Flat RSS is the claim."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.server_latency import post, start_server, tiny_prompt, wait_ready  # noqa: E402
from tests.clients.live import free_port  # noqa: E402
from tests.server.harness import chain, stuck_client  # noqa: E402

SLOW_READER_DELAY = 0.01
SD_EVERY = 10
PAGE = os.sysconf("SC_PAGE_SIZE")


# -- the server side: node packs without per-step bookkeeping ------------------------------------------------------

def register_tiny(registry, config) -> None:
    """The test pack's nodes, with services that keep nothing per step (so the pack itself does not grow)."""
    from tests.server.nodepack import NODE_CLASSES, PackServices

    class QuietServices(PackServices):
        def record_step(self, tag: str, step: int) -> None:
            pass

    registry.services = QuietServices(output_dir=Path(config.output_dir))
    registry.register_all(NODE_CLASSES, python_module="tests.server.nodepack")


def register_mixed(registry, config) -> None:
    """The Stable Diffusion pack and the test pack's nodes in one registry."""
    import nodes
    from nodes.services import Services
    from tests.server.nodepack import NODE_CLASSES

    class MixedServices(Services):
        def record_step(self, tag: str, step: int) -> None:
            pass

    registry.services = MixedServices(config=config, preview_method=config.options.get("preview_method", "none"))
    registry.on_warm_up(registry.services.warm_up)
    registry.register_all(nodes.node_classes(), python_module="nodes")
    registry.register_all(NODE_CLASSES, python_module="tests.server.nodepack")


# -- the client side ---------------------------------------------------------------------------------------------

@dataclass
class Reader:
    client_id: str
    delay: float = 0.0
    done: set[str] = field(default_factory=set)
    frames: int = 0
    cut_off: bool = False

    async def run(self, session: aiohttp.ClientSession, url: str, ready: asyncio.Event) -> None:
        async with session.ws_connect(f"{url}/ws?clientId={self.client_id}", max_msg_size=0) as ws:
            ready.set()
            async for message in ws:
                self.frames += 1
                if message.type == aiohttp.WSMsgType.TEXT:
                    event = json.loads(message.data)
                    if event["type"] == "executing" and event["data"].get("node") is None:
                        self.done.add(event["data"]["prompt_id"])
                if self.delay:
                    await asyncio.sleep(self.delay)
            self.cut_off = True  # the server closed it: only happens to a client that stopped reading


def sd_prompt(seed: int) -> dict:
    prompt = json.loads((ROOT / "workflows" / "txt2img.json").read_text())
    prompt["5"]["inputs"].update(seed=seed, steps=4)
    return prompt


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/statm") as handle:
        return int(handle.read().split()[1]) * PAGE / 2**20


def slope_per_minute(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MiB) samples, in MiB per minute."""
    if len(samples) < 2:
        return 0.0
    mean_t = sum(t for t, _ in samples) / len(samples)
    mean_r = sum(r for _, r in samples) / len(samples)
    var = sum((t - mean_t) ** 2 for t, _ in samples)
    return 60 * sum((t - mean_t) * (r - mean_r) for t, r in samples) / var if var else 0.0


async def sample_rss(pid: int, samples: list[tuple[float, float]], start: float, stop: asyncio.Event) -> None:
    while not stop.is_set():
        samples.append((time.monotonic() - start, rss_mib(pid)))
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
        except asyncio.TimeoutError:
            pass


async def was_cut_off(sock: socket.socket, wait: float = 5.0) -> bool:
    """Read what the server had already written to the never-reading client; True if the connection then ends."""
    loop = asyncio.get_running_loop()
    try:
        while True:
            if not await asyncio.wait_for(loop.sock_recv(sock, 1 << 16), wait):
                return True
    except (ConnectionError, OSError):
        return True
    except asyncio.TimeoutError:
        return False


async def queue_empty(session: aiohttp.ClientSession, url: str) -> bool:
    async with session.get(f"{url}/prompt") as response:
        return (await response.json())["exec_info"]["queue_remaining"] == 0


async def soak(url: str, pid: int, args: argparse.Namespace) -> dict:
    readers = [Reader(f"reader{i}") for i in range(args.clients - 2)] + [Reader("slow", SLOW_READER_DELAY)]
    owners = [r.client_id for r in readers] + ["stuck"]
    posted: dict[str, str] = {}
    samples: list[tuple[float, float]] = []
    stop_sampling = asyncio.Event()
    async with aiohttp.ClientSession() as session:
        sock = await stuck_client(int(url.rsplit(":", 1)[1]), "stuck")
        tasks = []
        for reader in readers:
            ready = asyncio.Event()
            tasks.append(asyncio.ensure_future(reader.run(session, url, ready)))
            await ready.wait()
        start = time.monotonic()
        sampler = asyncio.ensure_future(sample_rss(pid, samples, start, stop_sampling))
        count = int(args.duration * args.rate)
        for n in range(count):
            await asyncio.sleep(max(0.0, start + n / args.rate - time.monotonic()))
            owner = owners[n % len(owners)]
            variant = n % args.repeat if args.repeat else n
            if args.sd and n % SD_EVERY == 0:
                prompt, extra = sd_prompt(variant), {}
            elif owner == "stuck":
                prompt = chain(value=variant % 1000, steps=5, preview_size=64, tag=f"s{variant}")
                extra = {"preview_method": "auto"}
            else:
                prompt, extra = tiny_prompt(variant), {}
            async with session.post(f"{url}/prompt", json={"prompt": prompt, "client_id": owner,
                                                           "extra_data": extra}) as response:
                body = await response.json()
                if response.status != 200:
                    raise RuntimeError(body)
            posted[body["prompt_id"]] = owner
        posting_s = time.monotonic() - start
        deadline = time.monotonic() + args.drain
        while time.monotonic() < deadline and not await queue_empty(session, url):
            await asyncio.sleep(0.5)
        while time.monotonic() < deadline and not all(
                {p for p, o in posted.items() if o == r.client_id} <= r.done for r in readers if not r.cut_off):
            await asyncio.sleep(0.2)
        stuck_cut = await was_cut_off(sock)
        stop_sampling.set()
        await sampler
        samples.append((time.monotonic() - start, rss_mib(pid)))
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        sock.close()
    completed = sum(1 for p, o in posted.items() if o != "stuck" and any(p in r.done for r in readers))
    stuck_posted = sum(1 for o in posted.values() if o == "stuck")
    return {"posting_s": posting_s, "posted": len(posted), "stuck_posted": stuck_posted,
            "completed_by_readers": completed, "queue_drained": await _drained(url),
            "readers_cut_off": [r.client_id for r in readers if r.cut_off], "stuck_cut_off": stuck_cut,
            "slow_reader_frames": readers[-1].frames, "reader_frames": [r.frames for r in readers[:-1]],
            "samples": samples}


async def _drained(url: str) -> bool:
    async with aiohttp.ClientSession() as session:
        return await queue_empty(session, url)


def report(args: argparse.Namespace, result: dict) -> bool:
    samples = result["samples"]
    rss = [r for _, r in samples]
    half = [s for s in samples if result["posting_s"] / 2 <= s[0] <= result["posting_s"]]
    reading = result["posted"] - result["stuck_posted"]
    print(f"soak: {result['posting_s']:.0f} s of posting, {result['posted']} prompts ({args.rate:g}/s"
          f"{', every 10th the demo txt2img 64x64' if args.sd else ''}"
          f"{f', {args.repeat} distinct' if args.repeat else ', all distinct'}), {args.clients} websocket clients "
          f"({args.clients - 2} reading, 1 slow, 1 never reading)")
    print(f"  prompts completed (reading clients)  {result['completed_by_readers']} / {reading}; "
          f"queue drained: {'yes' if result['queue_drained'] else 'NO'}")
    print(f"  reading clients cut off              {len(result['readers_cut_off'])} / {args.clients - 1} "
          f"{result['readers_cut_off'] or ''}")
    print(f"  never-reading client cut off         {'yes' if result['stuck_cut_off'] else 'NO'}")
    print(f"  server RSS (MiB)                     start {rss[0]:.1f}  peak {max(rss):.1f}  end {rss[-1]:.1f}"
          f"  ({len(samples)} samples)")
    print(f"  RSS slope (MiB/min)                  second half of the posting {slope_per_minute(half):+.2f}, "
          f"whole run {slope_per_minute(samples):+.2f}")
    print(f"  frames read                          slow reader {result['slow_reader_frames']}, "
          f"normal readers {result['reader_frames']}")
    return (result["completed_by_readers"] == reading and result["queue_drained"] and not result["readers_cut_off"]
            and result["stuck_cut_off"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of posting")
    parser.add_argument("--rate", type=float, default=20.0, help="prompts per second")
    parser.add_argument("--clients", type=int, default=6, help="websocket clients (at least 3)")
    parser.add_argument("--drain", type=float, default=120.0, help="seconds to wait for the queue afterwards")
    parser.add_argument("--repeat", type=int, default=0, help="cycle through this many distinct prompts")
    parser.add_argument("--sd", action="store_true", help="mix in the bundled demo model's txt2img")
    parser.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                        help="passed to server.py (repeatable), e.g. --server-arg=--cache-lru=2000")
    args = parser.parse_args(argv)
    if args.clients < 3:
        parser.error("--clients must be at least 3")
    with tempfile.TemporaryDirectory(prefix="graphengine-soak-") as folder:
        base = Path(folder)
        if args.sd:
            (base / "models").symlink_to(ROOT / "models", target_is_directory=True)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        packs = "bench.soak:register_mixed" if args.sd else "bench.soak:register_tiny"
        process = start_server(base, port, packs, tuple(args.server_arg))
        try:
            asyncio.run(wait_ready(url, process, timeout=300))
            result = asyncio.run(soak(url, process.pid, args))
        finally:
            process.terminate()
            process.wait(timeout=30)
    return 0 if report(args, result) else 1


if __name__ == "__main__":
    sys.exit(main())
