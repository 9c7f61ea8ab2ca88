#!/usr/bin/env python
"""The bundled demo LoRA, measured through the engine: what it teaches, what it leaves alone, what it costs.

    python bench/demo_lora_quality.py [--models-dir models] [--unrelated 56] [--sampler dpmpp_2m]

Renders the corner concept's evaluation scenes (tools/corner_concept.py; never trained on) with the `lora`
workflow template (LoraLoader on the model and the text encoder, 20 steps, CFG 5) at strengths 0 (the base model:
LoraLoader passes it through), 0.5 and 1, and held-out prompts of the base model (tools/shapes_data.py) at
strengths 0 and 1; every image is scored with the scene scorer (corners count as anchors for the concept). One
executor runs everything, so the checkpoint stays loaded and the strengths alternate on a warm cache. Prints a
markdown table per measure and the wall time per image of each column (ratios against strength 0 in this run).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "tools", ROOT / "bench"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import corner_concept as concept  # noqa: E402
import shapes_data as sd  # noqa: E402
from demo_quality import CFG, CHECKS, STEPS, held_out_split, make_engine, run_graph  # noqa: E402

from workflows import templates  # noqa: E402

CONCEPT_STRENGTHS = (0.0, 0.5, 1.0)
UNRELATED_STRENGTHS = (0.0, 1.0)


def render(engine, scene, strength: float, seed: int, sampler: str):
    graph = templates.lora(sd.caption(scene), strength_model=strength, strength_clip=strength, steps=STEPS, cfg=CFG,
                           sampler=sampler, scheduler="normal", seed=seed, registry=engine.registry)
    return run_graph(engine, graph)[0]


def evaluate(engine, scenes: list, strengths: tuple[float, ...], scorer, sampler: str) -> dict:
    """strength -> summary (+ seconds per image); strengths alternate scene by scene (warm-cache switching)."""
    scores: dict[float, list] = {s: [] for s in strengths}
    seconds: dict[float, float] = dict.fromkeys(strengths, 0.0)
    for index, scene in enumerate(scenes):
        for strength in strengths:
            start = time.perf_counter()
            image = render(engine, scene, strength, 1000 + index, sampler)
            seconds[strength] += time.perf_counter() - start
            scores[strength].append(scorer(image, scene))
    return {s: {**sd.summarize(scores[s]), "s_per_image": seconds[s] / len(scenes)} for s in strengths}


def table(title: str, columns: dict[float, dict]) -> str:
    head = f"| {title} | " + " | ".join(f"strength {s:g}" for s in columns) + " |"
    rule = "| --- |" + " --- |" * len(columns)
    rows = [f"| {check} | " + " | ".join(f"{c[check]:.2f}" for c in columns.values()) + " |" for check in CHECKS]
    base = columns[min(columns)]["s_per_image"]
    rows.append("| s / image (ratio to strength 0) | " + " | ".join(
        f"{c['s_per_image']:.2f} ({c['s_per_image'] / base:.2f}x)" for c in columns.values()) + " |")
    rows.append("| images | " + " | ".join(str(c["count"]) for c in columns.values()) + " |")
    return "\n".join([head, rule, *rows])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", type=Path, default=ROOT / "models")
    parser.add_argument("--unrelated", type=int, default=56, help="held-out base prompts (singles; pairs: n // 6)")
    parser.add_argument("--concept", type=int, default=None, help="only the first N concept scenes (smoke runs)")
    parser.add_argument("--sampler", default="dpmpp_2m")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    lora = args.models_dir / "loras" / templates.DEMO_LORA
    if not lora.is_file():
        raise SystemExit(f"no demo LoRA at {lora} (train it with tools/train_demo_lora.py)")
    with tempfile.TemporaryDirectory() as work:
        engine = make_engine(args.models_dir, Path(work))
        singles, pairs = held_out_split(args.unrelated)
        for strength in (0.0, 1.0):  # load the checkpoint and the LoRA file once, outside the timings
            render(engine, singles[0], strength, 0, args.sampler)
        started = time.perf_counter()
        result = {
            "concept": evaluate(engine, concept.concept_eval_scenes()[:args.concept], CONCEPT_STRENGTHS, concept.score_concept,
                                args.sampler),
            "unrelated": evaluate(engine, singles + pairs, UNRELATED_STRENGTHS, sd.score, args.sampler),
        }
    print(f"demo LoRA {lora.name} ({lora.stat().st_size / 1e6:.2f} MB), {args.sampler}, {STEPS} steps, CFG {CFG}, "
          f"{time.perf_counter() - started:.0f} s\n")
    print(table("corner prompts (concept)", result["concept"]) + "\n")
    print(table("held-out base prompts (unrelated)", result["unrelated"]))
    if args.json:
        args.json.write_text(json.dumps({k: {str(s): v for s, v in cols.items()} for k, cols in result.items()},
                                        indent=2))


if __name__ == "__main__":
    main()
