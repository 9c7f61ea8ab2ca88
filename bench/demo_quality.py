#!/usr/bin/env python
"""Quality of the bundled demo model, measured through the engine (the workflow templates run in process).

    python bench/demo_quality.py [--models-dir models] [--count N] [--seeds S] [--untrained]

Renders held-out prompts (never seen in training) with `workflows.templates.txt2img` (20 steps, CFG 5,
dpmpp_2m by default), scores every image with `tools/shapes_data.score` and prints a markdown table per model:
single-object and two-object prompts separately. Then the inpaint checks on held-out scenes whose object is
masked out (a box around it) and asked back by its caption: the base model through SetLatentNoiseMask
(`inpaint` template), the 9-channel inpaint model through VAEEncodeForInpaint (`inpaint_model`), and the
5-channel depth model from the scene's depth map (`depth2img`), each when its file exists. `kept_mae` is the
mean abs error (0-255) of the unmasked region against the input; the scorer columns say whether the repainted
region follows the prompt.

`--untrained` adds the baseline: the same architecture with random UNet/text-encoder weights and the trained
VAE, exported the same way (fp16 single files) into a temporary models folder.

The helpers here (`DemoEngine`, `txt2img_images`, `inpaint_images`, …) are also used by the demo model's test
and by tools/make_readme_grid.py.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, replace  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "tools"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import shapes_data as sd  # noqa: E402
from graphengine import RuntimeConfig, build_registry  # noqa: E402
from graphengine.executor import Executor  # noqa: E402
from workflows import templates  # noqa: E402

STEPS, CFG = 20, 5.0
CHECKS = ("color_ok", "bg_ok", "pos_ok", "shape_ok", "size_ok", "all_ok")
VARIANT_FILES = {"base": templates.BASE_CHECKPOINT, "inpaint": templates.INPAINT_CHECKPOINT,
                 "depth": templates.DEPTH_CHECKPOINT}


# ----------------------------------------------------------------------------- running the engine


@dataclass
class DemoEngine:
    """A registry over one models folder, with scratch input/output folders and one executor (so the
    checkpoint is loaded once and reused from the result cache)."""

    models_dir: Path
    input_dir: Path
    output_dir: Path
    registry: object
    executor: Executor

    def has(self, variant: str) -> bool:
        return (self.models_dir / "checkpoints" / VARIANT_FILES[variant]).is_file()


def make_engine(models_dir: Path, work_dir: Path) -> DemoEngine:
    input_dir, output_dir = work_dir / "input", work_dir / "output"
    input_dir.mkdir(parents=True, exist_ok=True)
    output_dir.mkdir(parents=True, exist_ok=True)
    config = RuntimeConfig(base_dir=work_dir, models_dir=Path(models_dir), input_dir=input_dir, output_dir=output_dir,
                           options={"disable_metadata": True})
    registry = build_registry(config)
    return DemoEngine(Path(models_dir), input_dir, output_dir, registry, Executor(registry))


def run_graph(engine: DemoEngine, graph) -> list[np.ndarray]:
    """Execute a template graph; the images its SaveImage nodes wrote, as uint8 HxWx3 arrays."""
    result = engine.executor.execute(graph.to_api())
    if not result.ok:
        raise RuntimeError(f"graph failed: {result.error}")
    images = []
    for output in result.outputs.values():
        for entry in output.get("images", []):
            path = engine.output_dir / entry["subfolder"] / entry["filename"]
            images.append(np.asarray(Image.open(path).convert("RGB")))
            path.unlink()
    return images


def write_input(engine: DemoEngine, name: str, pixels: np.ndarray) -> str:
    """Save a uint8 HxW or HxWx3 array into the engine's input folder; returns the name LoadImage takes."""
    Image.fromarray(pixels).convert("RGB").save(engine.input_dir / name)
    return name


def txt2img_images(engine: DemoEngine, prompt: str, seed: int, count: int = 1, sampler: str = "dpmpp_2m",
                   scheduler: str = "normal", variant: str = "base") -> list[np.ndarray]:
    """`count` images of one prompt: one KSampler over a batch of `count` latents from `seed`."""
    graph = templates.txt2img(prompt, steps=STEPS, cfg=CFG, sampler=sampler, scheduler=scheduler, seed=seed,
                              batch_size=count, checkpoint=VARIANT_FILES[variant], registry=engine.registry)
    return run_graph(engine, graph)


def img2img_image(engine: DemoEngine, prompt: str, image: np.ndarray, denoise: float, seed: int,
                  sampler: str = "dpmpp_2m") -> np.ndarray:
    name = write_input(engine, f"img2img_{seed}.png", image)
    graph = templates.img2img(prompt, image=name, denoise=denoise, steps=STEPS, cfg=CFG, sampler=sampler,
                              seed=seed, registry=engine.registry)
    return run_graph(engine, graph)[0]


def inpaint_image(engine: DemoEngine, variant: str, prompt: str, image: np.ndarray, mask: np.ndarray, seed: int,
                  sampler: str = "dpmpp_2m") -> np.ndarray:
    """Repaint the mask (float HxW, 1 = repaint): "base" uses the inpaint template (SetLatentNoiseMask), "inpaint"
    the 9-channel model through VAEEncodeForInpaint."""
    image_name = write_input(engine, f"inpaint_image_{seed}.png", image)
    mask_name = write_input(engine, f"inpaint_mask_{seed}.png", (mask * 255).astype(np.uint8))
    common = dict(image=image_name, mask=mask_name, steps=STEPS, cfg=CFG, sampler=sampler, seed=seed,
                  registry=engine.registry)
    if variant == "base":
        graph = templates.inpaint(prompt, **common)
    else:
        graph = templates.inpaint_model(prompt, method="encode", **common)
    return run_graph(engine, graph)[0]


def depth_image(engine: DemoEngine, prompt: str, depth: np.ndarray, seed: int, sampler: str = "dpmpp_2m") -> np.ndarray:
    """depth2img from a nearness map (float HxW in [0, 1], bright = near)."""
    name = write_input(engine, f"depth_{seed}.png", np.round(depth * 255).astype(np.uint8))
    graph = templates.depth2img(prompt, depth_image=name, steps=STEPS, cfg=CFG, sampler=sampler, seed=seed,
                                registry=engine.registry)
    return run_graph(engine, graph)[0]


# ----------------------------------------------------------------------------- scenes, masks, metrics


def held_out_split(count: int | None = None) -> tuple[list, list]:
    """(single-object, two-object) held-out scenes; `count` spreads that many singles evenly (pairs: count // 6)."""
    scenes = sd.held_out_scenes()
    singles = [s for s in scenes if len(s.objects) == 1]
    pairs = [s for s in scenes if len(s.objects) == 2]
    if count is None or count >= len(singles):
        return singles, pairs
    pick = lambda items, n: [items[int(i * len(items) / n)] for i in range(n)]  # noqa: E731
    return pick(singles, count), pick(pairs, max(1, count // 6))


def object_mask(scene, margin: float = 4.0) -> np.ndarray:
    """[64, 64] float mask (1 = repaint): the first object's box plus a margin, as the training eval uses."""
    mask = np.zeros((sd.IMAGE_SIZE, sd.IMAGE_SIZE), dtype=np.float32)
    placed = sd.layout(scene)[0]
    half = placed.radius * 1.1 + margin
    x0, y0 = int(max(0, placed.center[0] - half)), int(max(0, placed.center[1] - half))
    mask[y0 : int(placed.center[1] + half) + 1, x0 : int(placed.center[0] + half) + 1] = 1.0
    return mask


def reference(scene) -> np.ndarray:
    return np.asarray(sd.render(scene)[0])


def region_mae(image: np.ndarray, target: np.ndarray, region: np.ndarray) -> float:
    """Mean abs error (0-255) over the pixels where `region` is true."""
    return float(np.abs(image.astype(np.float64) - target.astype(np.float64))[region].mean())


def summarize(scores: list[dict], extra: dict | None = None) -> dict:
    summary = sd.summarize(scores)
    summary.update(extra or {})
    return summary


# ----------------------------------------------------------------------------- the benchmark


def evaluate_txt2img(engine: DemoEngine, scenes: list, seeds: int, sampler: str) -> tuple[dict, list]:
    scores, images = [], []
    for index, scene in enumerate(scenes):
        batch = txt2img_images(engine, sd.caption(scene), seed=1000 + index, count=seeds, sampler=sampler)
        scores += [sd.score(image, scene) for image in batch]
        images.append(batch)
    return summarize(scores), images


def reversed_order(scene):
    """The scene with its objects named in the other order (the caption then starts with the right/bottom one)."""
    return sd.SceneSpec(tuple(reversed(scene.objects)), scene.background)


def without_positions(scene):
    """The scene's caption spec with every position phrase left out."""
    return sd.SceneSpec(tuple(replace(o, position=None) for o in scene.objects), scene.background)


def evaluate_repaint(engine: DemoEngine, variant: str, scenes: list, sampler: str, unplaced: bool = False) -> dict:
    """Mask each scene's object, ask for it back; scorer on the result plus the kept region's error.
    depth: generate from the scene's depth map (with `unplaced`, from a prompt without position words)."""
    scores, kept, changed = [], [], []
    for index, scene in enumerate(scenes):
        target, mask = reference(scene), object_mask(scene)
        if variant == "depth":
            prompt = sd.caption(without_positions(scene) if unplaced else scene)
            image = depth_image(engine, prompt, sd.render(scene)[1], seed=2000 + index, sampler=sampler)
        else:
            image = inpaint_image(engine, variant, sd.caption(scene), target, mask, seed=2000 + index,
                                  sampler=sampler)
            kept.append(region_mae(image, target, mask < 0.5))
            changed.append(region_mae(image, target, mask >= 0.5))
        scores.append(sd.score(image, scene))
    extra = {"kept_mae": float(np.mean(kept)), "masked_mae": float(np.mean(changed))} if kept else {}
    return summarize(scores, extra)


def evaluate_models(models_dir: Path, count: int | None, seeds: int, inpaint_count: int, sampler: str) -> dict:
    singles, pairs = held_out_split(count)
    results = {}
    with tempfile.TemporaryDirectory(prefix="demo_quality_") as work:
        engine = make_engine(models_dir, Path(work))
        if not engine.has("base"):
            raise SystemExit(f"no {VARIANT_FILES['base']} under {models_dir}/checkpoints")
        started = time.perf_counter()
        results["single"], _ = evaluate_txt2img(engine, singles, seeds, sampler)
        results["pairs"], _ = evaluate_txt2img(engine, pairs, seeds, sampler)
        results["pairs, right/bottom object named first"], _ = evaluate_txt2img(
            engine, [reversed_order(s) for s in pairs], seeds, sampler)
        repaint_scenes = held_out_split(inpaint_count)[0]
        results["inpaint (base, SetLatentNoiseMask)"] = evaluate_repaint(engine, "base", repaint_scenes, sampler)
        if engine.has("inpaint"):
            results["inpaint model (VAEEncodeForInpaint)"] = evaluate_repaint(engine, "inpaint", repaint_scenes,
                                                                              sampler)
        if engine.has("depth"):
            results["depth2img"] = evaluate_repaint(engine, "depth", repaint_scenes, sampler)
            results["depth2img, no position words"] = evaluate_repaint(engine, "depth", repaint_scenes, sampler,
                                                                       unplaced=True)
        results["seconds"] = round(time.perf_counter() - started, 1)
    return results


def write_untrained_models(trained_dir: Path, out_dir: Path, variants=("base", "inpaint", "depth")) -> Path:
    """Random UNet/text encoder + the trained VAE, exported like the real files, for each of `variants` present."""
    import torch

    from export_demo_model import STAGE_FILES, export_stage, untrained_stage
    from nodes.models.single_file import load_checkpoint

    base_file = trained_dir / "checkpoints" / VARIANT_FILES["base"]
    vae = load_checkpoint(base_file, components=("vae",)).vae
    for stage, filename in STAGE_FILES.items():
        if stage in variants and (trained_dir / "checkpoints" / filename).is_file():
            export_stage(untrained_stage(vae, stage), out_dir / "checkpoints" / filename, torch.float16, stage)
    return out_dir


def _cell(value) -> str:
    if value is None:
        return "–"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def format_table(columns: dict[str, dict]) -> str:
    """Markdown: one row per (part, model), one column per check."""
    keys = list(CHECKS) + ["kept_mae", "masked_mae", "median_centroid_error", "count"]
    lines = ["| part | model | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    parts = [p for p in next(iter(columns.values())) if p != "seconds"]
    for part in parts:
        for model, results in columns.items():
            if part in results:
                lines.append(f"| {part} | {model} | " + " | ".join(_cell(results[part].get(k)) for k in keys) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", type=Path, default=ROOT / "models")
    parser.add_argument("--count", type=int, default=None, help="single-object held-out prompts (default all 48)")
    parser.add_argument("--seeds", type=int, default=2, help="images per prompt")
    parser.add_argument("--inpaint-count", type=int, default=12, help="scenes for the inpaint/depth checks")
    parser.add_argument("--sampler", default="dpmpp_2m")
    parser.add_argument("--untrained", action="store_true", help="also score the untrained baseline")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    columns = {"trained": evaluate_models(args.models_dir, args.count, args.seeds, args.inpaint_count, args.sampler)}
    if args.untrained:
        with tempfile.TemporaryDirectory(prefix="demo_untrained_") as tmp:
            untrained_dir = write_untrained_models(args.models_dir, Path(tmp) / "models")
            columns["untrained"] = evaluate_models(untrained_dir, args.count, args.seeds, args.inpaint_count,
                                                   args.sampler)
    print(f"held-out prompts, {STEPS} steps, CFG {CFG}, {args.sampler}, {args.seeds} seed(s) per prompt; "
          f"inpaint/depth: {args.inpaint_count} scenes")
    print(format_table(columns))
    print("seconds: " + ", ".join(f"{model} {results['seconds']}" for model, results in columns.items()))
    if args.json:
        args.json.write_text(json.dumps(columns, indent=1))


if __name__ == "__main__":
    main()
