#!/usr/bin/env python
"""Quality of the bundled demo CLIPSeg, measured through the engine (LoadImage -> CLIPSeg -> MaskToImage ->
SaveImage, run in process).

    python bench/demo_clipseg_quality.py [--models-dir models] [--count N] [--untrained] [--json FILE]

For every held-out scene (tools/shapes_data.held_out_scenes: never rendered in training) each object is asked
for by "the <colour> <shape>"; the mask the node returns (threshold 0.4, no blur, no dilation) is compared
with the object's exact mask at 0.5: mean IoU over single-object scenes, over the objects of two-object scenes,
and how often the named object is the one mostly covered ("picks": the mask overlaps it more than the other).
`--untrained` adds the baseline: the same architecture and files with random weights (the trainer's init).
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
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "tools", ROOT / "bench"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import shapes_data as sd  # noqa: E402
import train_demo_clipseg as trainer  # noqa: E402
from demo_quality import make_engine, run_graph, write_input  # noqa: E402
from graphengine.script import Graph  # noqa: E402

MODEL = trainer.DEFAULT_NAME


def segment(engine, image: np.ndarray, text: str, model_name: str = MODEL, threshold: float = 0.4) -> np.ndarray:
    """The CLIPSeg node's MASK for one image (uint8 HxWx3) as float HxW in 0..1."""
    name = write_input(engine, "clipseg_scene.png", image)
    g = Graph(engine.registry)
    pixels = g.LoadImage(image=name).IMAGE
    mask = g.CLIPSeg(image=pixels, text=text, threshold=threshold, blur=0.0, dilation_factor=0,
                     model_name=model_name)[0]
    g.SaveImage(images=g.MaskToImage(mask=mask)[0], filename_prefix="clipseg_mask")
    return run_graph(engine, g)[0][..., 0].astype(np.float32) / 255.0


def object_query(obj: sd.ShapeSpec) -> str:
    return f"the {obj.color} {obj.shape}"


def evaluate(engine, scenes: list, model_name: str = MODEL) -> dict:
    """Mean IoU (singles, pair objects) and the pick rate among two objects, on canonical renders."""
    single, paired, picks = [], [], []
    for scene in scenes:
        image = np.asarray(sd.render(scene)[0])
        truths = trainer.object_masks(scene, None)
        for index, obj in enumerate(scene.objects):
            mask = segment(engine, image, object_query(obj), model_name)
            (single if len(scene.objects) == 1 else paired).append(trainer.iou(mask, truths[index]))
            if len(scene.objects) == 2:
                other = truths[1 - index]
                picks.append(float((mask * truths[index]).sum() > (mask * other).sum()))
    mean = lambda values: round(float(np.mean(values)), 4) if values else None  # noqa: E731
    return {"iou_single": mean(single), "iou_pair": mean(paired), "iou_all": mean(single + paired),
            "picks": mean(picks), "queries": len(single) + len(paired)}


def held_out(count: int | None) -> list:
    scenes = sd.held_out_scenes()
    if count is None:
        return scenes
    singles = [s for s in scenes if len(s.objects) == 1]
    pairs = [s for s in scenes if len(s.objects) == 2]
    return singles[:: max(1, len(singles) // count)][:count] + pairs


def write_untrained(models_dir: Path, seed: int = 0) -> None:
    trainer.save_folder(trainer.new_model(seed).eval(), models_dir / "clipseg" / MODEL)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", type=Path, default=ROOT / "models")
    parser.add_argument("--count", type=int, default=None, help="single-object held-out scenes (default all 48)")
    parser.add_argument("--untrained", action="store_true", help="also measure the random-init baseline")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    scenes = held_out(args.count)
    results = {}
    with tempfile.TemporaryDirectory() as work:
        results["trained"] = evaluate(make_engine(args.models_dir, Path(work) / "trained"), scenes)
        if args.untrained:
            untrained_dir = Path(work) / "untrained-models"
            write_untrained(untrained_dir)
            results["untrained"] = evaluate(make_engine(untrained_dir, Path(work) / "untrained"), scenes)
    keys = ("iou_single", "iou_pair", "iou_all", "picks", "queries")
    print("| model | " + " | ".join(keys) + " |")
    print("|---|" + "---|" * len(keys))
    for name, row in results.items():
        print(f"| {name} | " + " | ".join(str(row[k]) for k in keys) + " |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
