"""CPU threads: the demo model's txt2img at torch's default thread count vs the engine's default vs one thread.

Run: python bench/threads.py [--steps 100] [--repeats 3] [--threads 1,2,4]
     (prints sampler it/s per thread count and each count's ratio to torch's default, all measured in this run).

Each setting runs in a fresh process (torch's inter-op pool can be sized once per process): the process builds the
engine with `Engine(threads=N)` (torch's own default when N is "torch"), runs the graph once to load and cache the
model and the text encodings, then times `repeats` runs that change only the seed, so only KSampler, VAEDecode and
SaveImage run. Settings are interleaved across repeats so that load from other jobs hits them alike."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time
import torch
threads = sys.argv[1]
torch_default = torch.get_num_threads()
from nodes.api import Engine
engine = Engine(sys.argv[2], output_dir=sys.argv[3], threads=None if threads == "torch" else int(threads))
if threads == "torch":  # undo the engine's default (the inter-op pool keeps the engine's size)
    torch.set_num_threads(torch_default)
steps = int(sys.argv[4])
engine("a red circle on the left on a blue background", num_inference_steps=2, seed=0)
start = time.perf_counter()
engine("a red circle on the left on a blue background", num_inference_steps=steps, seed=int(sys.argv[5]))
print(json.dumps({"threads": torch.get_num_threads(), "seconds": time.perf_counter() - start}))
"""


def measure(setting: str, steps: int, seed: int, out: str) -> tuple[int, float]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    env.pop("OMP_NUM_THREADS", None)
    proc = subprocess.run([sys.executable, "-c", CHILD, setting, str(ROOT), out, str(steps), str(seed)],
                          capture_output=True, text=True, env=env, cwd=ROOT, check=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return result["threads"], steps / result["seconds"]


def main() -> int:
    from graphengine.options import available_cores, default_threads

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", default="1", help="comma-separated thread counts to compare besides the defaults")
    args = parser.parse_args()
    settings = ["torch", str(default_threads()), *[t for t in args.threads.split(",") if t]]
    settings = list(dict.fromkeys(settings))
    rates: dict[str, list[float]] = {s: [] for s in settings}
    counts: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as out:
        for repeat in range(args.repeats):
            order = settings[repeat % len(settings):] + settings[:repeat % len(settings)]
            for setting in order:
                counts[setting], rate = measure(setting, args.steps, repeat + 1, out)
                rates[setting].append(rate)
    base = statistics.median(rates["torch"])
    print(f"cores available: {available_cores()}, engine default: {default_threads()} thread(s), "
          f"{args.steps} steps, median of {args.repeats}")
    print("| setting | threads | it/s | ratio to torch's default |")
    print("|---|---|---|---|")
    for setting in settings:
        label = {"torch": "torch's default", str(default_threads()): "engine default"}.get(setting, "--threads")
        median = statistics.median(rates[setting])
        print(f"| {label} | {counts[setting]} | {median:.1f} | {median / base:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
