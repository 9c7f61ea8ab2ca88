"""How soon a cancel stops long nodes, against how long their whole work takes (same run, bundled demo model, CPU).

For each case the prompt first runs to the end (the baseline), then runs again with the cancel token set from
another thread `--after` seconds into the node; the figure is the time from the cancel to the Interrupted result.

    python bench/interrupt_latency.py [--after 1.0] [--words 200000]
"""

from __future__ import annotations

import argparse
import threading
import time

from _common import ROOT, make_registry

from graphengine import CancelToken, Executing, Executor

CKPT = "graphengine-demo.safetensors"


def cases(words: int) -> dict[str, dict]:
    ckpt = {"ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CKPT}}}
    sink = {"class_type": "BenchSink", "inputs": {"value": ["work", 0]}}
    return {
        f"CLIPTextEncode, {words} words": {**ckpt, "out": sink, "work": {
            "class_type": "CLIPTextEncode", "inputs": {"text": "a " * words, "clip": ["ckpt", 1]}}},
        "VAEDecode, 128 latents 8x8": {**ckpt, "out": sink,
            "empty": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 128}},
            "work": {"class_type": "VAEDecode", "inputs": {"samples": ["empty", 0], "vae": ["ckpt", 2]}}},
        "KSampler, 512 latents, 1 step": {**ckpt, "out": sink,
            "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red circle", "clip": ["ckpt", 1]}},
            "empty": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 512}},
            "work": {"class_type": "KSampler", "inputs": {
                "model": ["ckpt", 0], "seed": 0, "steps": 1, "cfg": 5.0, "sampler_name": "euler",
                "scheduler": "normal", "positive": ["pos", 0], "negative": ["pos", 0],
                "latent_image": ["empty", 0], "denoise": 1.0}}},
    }


def timed(executor: Executor, prompt: dict, after: float | None) -> tuple[float, float | None, str]:
    """(seconds in the node, seconds from cancel to the end or None, status)."""
    token = CancelToken()
    marks: dict[str, float] = {}

    def cancel() -> None:
        marks["cancel"] = time.perf_counter()
        token.cancel()

    def on_event(event) -> None:
        if isinstance(event, Executing) and event.node == "work":
            marks["start"] = time.perf_counter()
            if after is not None:
                threading.Timer(after, cancel).start()

    executor.events.subscribe(on_event)
    result = executor.execute(prompt, cancel=token)
    end = time.perf_counter()
    cancelled_at = marks.get("cancel")
    return end - marks["start"], (end - cancelled_at) if cancelled_at else None, result.status


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--after", type=float, default=1.0)
    parser.add_argument("--words", type=int, default=100_000)
    args = parser.parse_args()
    registry = make_registry(ROOT / "models")
    print("| node | whole work (s) | cancel → stopped (s) | ratio | status |\n|---|---|---|---|---|")
    for name, prompt in cases(args.words).items():
        whole, _, status = timed(Executor(registry), prompt, None)
        assert status == "success", status
        _, stop, status = timed(Executor(registry), prompt, args.after)
        print(f"| {name} | {whole:.2f} | {stop:.2f} | {stop / whole:.3f} | {status} |")


if __name__ == "__main__":
    main()
