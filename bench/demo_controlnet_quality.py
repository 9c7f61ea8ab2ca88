#!/usr/bin/env python
"""The bundled demo ControlNet, measured through the engine: does the depth map put the shape where it says?

    python bench/demo_controlnet_quality.py [--models-dir models] [--count 24] [--sampler dpmpp_2m]

Held-out scenes of the base model (tools/shapes_data.py; the ControlNet never trained on them) have their depth
maps rendered, saved as the control image and run through the `controlnet` workflow template (LoadImage ->
ControlNetLoader + ControlNetApplyAdvanced -> KSampler, 20 steps, CFG 5) with prompts that leave the positions out,
so only the control can say where the shapes go, and again with the full prompts. Columns: the trained ControlNet;
no ControlNet (strength 0: ControlNetApplyAdvanced passes the conditioning through); an untrained ControlNet
(ControlNetModel.from_unet of the demo UNet, as training starts: zero convolutions) at strength 1. Every image is
scored against the full scene with the scene scorer, plus the mean error (0-255) against the scene's own render
inside the object's box. One executor runs everything (the checkpoint stays loaded); prints a markdown table per
prompt kind.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "tools", ROOT / "bench"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import shapes_data as sd  # noqa: E402
from make_workflow_inputs import depth_image  # noqa: E402
from demo_quality import CFG, CHECKS, STEPS, held_out_split, make_engine, object_mask, reference, region_mae, \
    run_graph, without_positions, write_input  # noqa: E402

from workflows import templates  # noqa: E402

UNTRAINED = "graphengine-demo-depth-untrained.safetensors"
COLUMNS = {"controlnet": (templates.DEMO_CONTROLNET, 1.0), "without": (templates.DEMO_CONTROLNET, 0.0),
           "untrained": (UNTRAINED, 1.0)}


def render(engine, prompt: str, control_image: str, control_net: str, strength: float, seed: int,
           sampler: str = "dpmpp_2m", steps: int = STEPS) -> np.ndarray:
    graph = templates.controlnet(prompt, control_image=control_image, control_net_name=control_net,
                                 strength=strength, steps=steps, cfg=CFG, sampler=sampler, seed=seed,
                                 registry=engine.registry)
    return run_graph(engine, graph)[0]


def control_image(engine, scene, index: int) -> str:
    """The depth map of the scene's canonical render in the engine's input folder (as input/depth_map.png)."""
    return write_input(engine, f"control_{index}.png", np.asarray(depth_image(sd.render(scene)[1])))


def object_error(image: np.ndarray, scene) -> float:
    """Mean abs error (0-255) against the scene's render inside the first object's box."""
    return region_mae(image, reference(scene), object_mask(scene) > 0)


def evaluate(engine, scenes: list, columns: dict, positions: bool, sampler: str) -> dict:
    scores: dict[str, list] = {c: [] for c in columns}
    errors: dict[str, list] = {c: [] for c in columns}
    for index, scene in enumerate(scenes):
        name = control_image(engine, scene, index)
        prompt = sd.caption(scene if positions else without_positions(scene))
        for column, (control_net, strength) in columns.items():
            image = render(engine, prompt, name, control_net, strength, 1000 + index, sampler)
            scores[column].append(sd.score(image, scene))
            errors[column].append(object_error(image, scene))
    return {c: {**sd.summarize(scores[c]), "object_mae": float(np.mean(errors[c]))} for c in columns}


def write_untrained(folder: Path, checkpoint: Path) -> Path:
    """The ControlNet training starts from (from_unet of the demo UNet, zero convs), in the bundled file's layout."""
    import torch

    import train_demo_controlnet as training

    base = training.load_base_model(checkpoint, torch.device("cpu"))
    torch.manual_seed(0)
    ctx = {"out": folder, "checkpoint": checkpoint, "name": Path(UNTRAINED).stem, "control": "depth", "steps": 0,
           "runs": [], "seed": 0, "lr": 0.0, "batch": 0, "p_position": 0.0, "p_empty": 0.0, "timestep_power": 1.0}
    return training.export_file(ctx, training.build_controlnet(base.unet), 0, None)


def scratch_models(models_dir: Path, work: Path) -> Path:
    """A models folder with the real checkpoints and ControlNets plus the untrained ControlNet."""
    scratch = work / "models"
    (scratch / "controlnet").mkdir(parents=True)
    (scratch / "checkpoints").symlink_to((models_dir / "checkpoints").resolve(), target_is_directory=True)
    for path in (models_dir / "controlnet").glob("*.safetensors"):  # copied: the folder lists no file links
        shutil.copy(path, scratch / "controlnet" / path.name)
    write_untrained(scratch / "controlnet", models_dir / "checkpoints" / templates.BASE_CHECKPOINT)
    return scratch


def table(title: str, columns: dict[str, dict]) -> str:
    head = f"| {title} | " + " | ".join(columns) + " |"
    rule = "| --- |" + " --- |" * len(columns)
    rows = [f"| {check} | " + " | ".join(f"{c[check]:.2f}" for c in columns.values()) + " |"
            for check in (*CHECKS, "median_centroid_error", "object_mae")]
    rows.append("| images | " + " | ".join(str(c["count"]) for c in columns.values()) + " |")
    return "\n".join([head, rule, *rows])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", type=Path, default=ROOT / "models")
    parser.add_argument("--count", type=int, default=24, help="held-out single-object scenes (pairs: count // 6)")
    parser.add_argument("--sampler", default="dpmpp_2m")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    trained = args.models_dir / "controlnet" / templates.DEMO_CONTROLNET
    if not trained.is_file():
        raise SystemExit(f"no demo ControlNet at {trained} (train it with tools/train_demo_controlnet.py)")
    with tempfile.TemporaryDirectory() as work:
        engine = make_engine(scratch_models(args.models_dir, Path(work)), Path(work))
        singles, pairs = held_out_split(args.count)
        started = time.perf_counter()
        result = {"position-free prompts": evaluate(engine, singles + pairs, COLUMNS, False, args.sampler),
                  "full prompts": evaluate(engine, singles + pairs, COLUMNS, True, args.sampler)}
    print(f"demo ControlNet {trained.name} ({trained.stat().st_size / 1e6:.2f} MB), {args.sampler}, {STEPS} steps, "
          f"CFG {CFG}, held-out scenes, {time.perf_counter() - started:.0f} s\n")
    for title, columns in result.items():
        print(table(title, columns) + "\n")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
