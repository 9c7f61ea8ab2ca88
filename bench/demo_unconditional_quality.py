#!/usr/bin/env python
"""Quality of the bundled pixel-space unconditional model, measured through the engine.

    python bench/demo_unconditional_quality.py [--models-dir models] [--count 64] [--steps 50]
        [--scheduler DDIMScheduler] [--untrained] [--grid docs/unconditional_samples.png]

Samples `count` 32x32 images with `workflows.templates.unconditional` (DiffusersSchedulerSampler, no prompt) and
scores each with `clean_shape`: does it show one clean shape on a plain background? The background colour is the
median of the border pixels and at least 90 % of the border must be near it; the pixels far from it (the
foreground) must form one 4-connected blob of 0.5-40 % of the image (stray foreground outside it at most a tenth of
its size) with a flat colour inside, few in-between (blurred) pixels around it, and a flat background. The
renderer's own training images all pass (`--data` scores them too); noise and blurred, mottled blobs do not.

`--untrained` adds the baseline: the same architecture with random weights (the trainer's step-0 initialisation),
exported the same way into a temporary models folder. `--grid` writes the first 16 samples as a 4x4 PNG (4x upscaled).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "tools", ROOT / "bench"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from demo_quality import make_engine, run_graph  # noqa: E402
from workflows import templates  # noqa: E402

BORDER = 2
BACKGROUND_DISTANCE = 48.0  # RGB distance: at most this far from the background colour = background
FOREGROUND_DISTANCE = 64.0  # at least this far = foreground (in between: antialiased edge, ignored)
MIN_PLAIN_BORDER = 0.9
MIN_AREA, MAX_AREA = 0.005, 0.4  # of the image
MAX_STRAY = 0.1  # foreground pixels outside the blob, relative to the blob
# Mean per-channel standard deviation (0-255) of the blob's inner pixels and of the background. The renderer's own
# images stay below 1.1 and 3.2 (300 images); a blurred, mottled blob does not.
MAX_SPREAD = 8.0
MAX_BACKGROUND_SPREAD = 6.0
MAX_EDGE = 1.25  # half-way pixels per outline pixel: renderer images <= 1.14 (300 images), blurred ones more
BATCH = 16


def _components(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    labels, _ = ndimage.label(mask)
    return labels


def clean_shape(image: np.ndarray) -> dict:
    """Score one uint8 HxWx3 image; `ok` is the verdict, the other keys say which check failed."""
    pixels = image.astype(np.float32)
    ring = np.ones(pixels.shape[:2], dtype=bool)
    ring[BORDER:-BORDER, BORDER:-BORDER] = False
    background = np.median(pixels[ring], axis=0)
    distance = np.linalg.norm(pixels - background, axis=-1)
    plain_border = float((distance[ring] <= BACKGROUND_DISTANCE).mean()) >= MIN_PLAIN_BORDER
    foreground = distance >= FOREGROUND_DISTANCE
    labels = _components(foreground)
    sizes = np.bincount(labels.ravel())[1:] if labels.max() else np.zeros(0, dtype=int)
    blob = labels == (int(sizes.argmax()) + 1) if sizes.size else np.zeros_like(foreground)
    area = float(blob.mean())
    stray = (int(foreground.sum()) - int(blob.sum())) / max(1, int(blob.sum()))
    inner = blob.copy()
    inner[1:, :] &= blob[:-1, :]
    inner[:-1, :] &= blob[1:, :]
    inner[:, 1:] &= blob[:, :-1]
    inner[:, :-1] &= blob[:, 1:]
    if not inner.any():
        inner = blob
    spread = float(pixels[inner].std(axis=0).mean()) if inner.any() else float("inf")
    flat = float(pixels[distance <= BACKGROUND_DISTANCE].std(axis=0).mean()) if plain_border else float("inf")
    # Sharpness: pixels a quarter to three quarters of the way from the background to the blob's colour, per
    # pixel of the blob's outline (antialiasing alone gives at most about one such pixel per outline pixel).
    contrast = float(np.linalg.norm(np.median(pixels[blob], axis=0) - background)) if blob.any() else 1.0
    ratio = distance / max(contrast, 1.0)
    outline = max(1, int((blob & ~inner).sum()))
    edge = float(((ratio > 0.25) & (ratio < 0.75)).sum()) / outline
    result = {"plain_border": plain_border, "one_blob": bool(sizes.size) and stray <= MAX_STRAY,
              "area_ok": MIN_AREA <= area <= MAX_AREA, "flat_shape": spread <= MAX_SPREAD,
              "flat_background": flat <= MAX_BACKGROUND_SPREAD, "sharp_edge": edge <= MAX_EDGE}
    result["ok"] = all(result.values())
    return result | {"spread": spread, "background_spread": flat, "edge": edge}


def summarize(scores: list[dict]) -> dict:
    keys = ("plain_border", "one_blob", "area_ok", "flat_shape", "flat_background", "sharp_edge", "ok")
    return {key: sum(s[key] for s in scores) / len(scores) for key in keys} | {"count": len(scores)}


def sample(engine, count: int, steps: int, scheduler: str, seed: int = 0) -> list[np.ndarray]:
    images: list[np.ndarray] = []
    for start in range(0, count, BATCH):
        graph = templates.unconditional(scheduler=scheduler, steps=steps, seed=seed + start,
                                        batch_size=min(BATCH, count - start), registry=engine.registry)
        images += run_graph(engine, graph)
    return images


def training_images(count: int, seed: int = 99) -> list[np.ndarray]:
    from train_demo_unconditional import render_small, single_shape_scene

    rng = random.Random(seed)
    return [np.asarray(render_small(single_shape_scene(rng), rng.randrange(2**31))) for _ in range(count)]


def write_untrained(models_dir: Path) -> None:
    import torch
    from train_demo_unconditional import build_models, export

    torch.manual_seed(0)  # the trainer's initialisation
    unet, scheduler = build_models()
    export(models_dir / "checkpoints" / templates.UNCOND_CHECKPOINT, unet, scheduler, 0)


def write_grid(images: list[np.ndarray], path: Path, columns: int = 4, scale: int = 4) -> None:
    size = images[0].shape[0]
    rows = (len(images) + columns - 1) // columns
    grid = Image.new("RGB", (columns * size, rows * size), (255, 255, 255))
    for index, image in enumerate(images):
        grid.paste(Image.fromarray(image), ((index % columns) * size, (index // columns) * size))
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.resize((grid.width * scale, grid.height * scale), Image.Resampling.NEAREST).save(path)


def table(rows: list[tuple[str, dict]]) -> str:
    keys = ("plain_border", "one_blob", "area_ok", "flat_shape", "flat_background", "sharp_edge", "ok", "count")
    lines = ["| model | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name, summary in rows:
        cells = [f"{summary[k]:.2f}" if k != "count" else str(summary[k]) for k in keys]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", type=Path, default=ROOT / "models")
    parser.add_argument("--count", type=int, default=64)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--scheduler", default="DDIMScheduler")
    parser.add_argument("--untrained", action="store_true")
    parser.add_argument("--data", action="store_true", help="also score the renderer's own training images")
    parser.add_argument("--grid", type=Path)
    args = parser.parse_args()
    rows = []
    if args.data:
        rows.append(("training data (renderer)", summarize([clean_shape(i) for i in training_images(args.count)])))
    with tempfile.TemporaryDirectory() as work:
        started = time.perf_counter()
        images = sample(make_engine(args.models_dir, Path(work) / "trained"), args.count, args.steps, args.scheduler)
        rows.append(("trained", summarize([clean_shape(i) for i in images])))
        print(f"trained: {len(images)} samples in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        if args.grid:
            write_grid(images[:16], args.grid)
        if args.untrained:
            models = Path(work) / "untrained_models"
            write_untrained(models)
            untrained = sample(make_engine(models, Path(work) / "untrained"), args.count, args.steps, args.scheduler)
            rows.append(("untrained", summarize([clean_shape(i) for i in untrained])))
    print(f"{args.scheduler}, {args.steps} steps, {args.count} samples")
    print(table(rows))


if __name__ == "__main__":
    main()
