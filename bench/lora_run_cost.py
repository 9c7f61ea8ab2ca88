#!/usr/bin/env python
"""What a LoRA costs a whole run through the engine: wall time per image and peak resident memory, as ratios to
the plain run measured in the same invocation, and the cost of switching strengths on a warm cache.

    python bench/lora_run_cost.py [--models-dir models] [--images 12] [--checkpoint F] [--lora F]

Each mode runs in its own fresh process (so peak RSS is that mode's own), with one warm executor that first runs
the graph once untimed (checkpoint and LoRA file loaded), then renders `--images` images:

* plain:  the txt2img template (no LoRA node), a new seed per image;
* lora:   the `lora` template at strength 1, a new seed per image (the loader's result stays cached, the LoRA is
          patched in and out for every sampler run and text encode);
* switch: the `lora` template with a new strength every image (1.0 down to 0.5) and the seed fixed, so the
          loader, both encodes and the sampler re-run each time.

Defaults are the bundled demo model and demo LoRA; `--checkpoint` / `--lora` take files from the models folders.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "tools", ROOT / "bench"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

MODES = ("plain", "lora", "switch")
PROMPT = "a red circle in the top left corner"


def _graph(mode: str, index: int, args, registry):
    from demo_quality import CFG, STEPS
    from workflows import templates

    common = dict(steps=STEPS, cfg=CFG, sampler="dpmpp_2m", scheduler="normal", checkpoint=args.checkpoint,
                  registry=registry)
    if mode == "plain":
        return templates.txt2img(PROMPT, seed=index + 1, **common)
    if mode == "lora":
        return templates.lora(PROMPT, lora_name=args.lora, seed=index + 1, **common)
    strength = 1.0 - 0.5 * ((index + 1) % 17) / 16  # never a strength the cache still holds (for <= 16 images)
    return templates.lora(PROMPT, lora_name=args.lora, strength_model=strength, strength_clip=strength, seed=0,
                          **common)


def child(mode: str, args) -> dict:
    from demo_quality import make_engine, run_graph

    with tempfile.TemporaryDirectory() as work:
        engine = make_engine(args.models_dir, Path(work))
        run_graph(engine, _graph(mode, -1, args, engine.registry))  # untimed; every timed graph differs from it
        started = time.perf_counter()
        for index in range(args.images):
            run_graph(engine, _graph(mode, index, args, engine.registry))
        seconds = (time.perf_counter() - started) / args.images
    return {"s_per_image": seconds, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main(argv=None) -> None:
    from workflows import templates

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", type=Path, default=ROOT / "models")
    parser.add_argument("--images", type=int, default=12, choices=range(1, 17), metavar="1..16")
    parser.add_argument("--checkpoint", default=templates.BASE_CHECKPOINT)
    parser.add_argument("--lora", default=templates.DEMO_LORA)
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args)))
        return
    results = {}
    for mode in MODES:
        command = [sys.executable, __file__, "--child", mode, "--models-dir", str(args.models_dir), "--images",
                   str(args.images), "--checkpoint", args.checkpoint, "--lora", args.lora]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results[mode] = json.loads(output.strip().splitlines()[-1])
    base = results["plain"]
    print(f"{args.checkpoint} + {args.lora}, {args.images} images per mode, one process per mode\n")
    print("| mode | s / image | ratio | peak RSS (MiB) | ratio |\n| --- | --- | --- | --- | --- |")
    for mode, r in results.items():
        print(f"| {mode} | {r['s_per_image']:.2f} | {r['s_per_image'] / base['s_per_image']:.2f}x | "
              f"{r['peak_rss_mib']:.0f} | {r['peak_rss_mib'] / base['peak_rss_mib']:.2f}x |")


if __name__ == "__main__":
    main()
