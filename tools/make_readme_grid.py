#!/usr/bin/env python
"""Render the README picture: held-out prompts (rows) x seeds (columns) from the demo model, through the engine's
txt2img template, upscaled with nearest-neighbour so the 64x64 pixels stay visible. The first column is the
renderer's own drawing of the prompt, for comparison.

    python tools/make_readme_grid.py [--models-dir models] [--out docs/demo_grid.png] [--seeds 3] [--scale 3]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT / "bench", ROOT / "tools"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import demo_quality as dq  # noqa: E402
import shapes_data as sd  # noqa: E402

# From the held-out set (never trained on): varied colours, shapes, sizes and positions, and one two-object prompt.
PROMPTS = (
    "a large orange circle in the center on a red background",
    "a large green triangle at the top on a gray background",
    "a small blue square on the right on a green background",
    "a large yellow square on the left on a red background",
    "a large white triangle in the center on a blue background",
    "a large black circle on the left and a large white circle on the right on an orange background",
)
GAP, LABEL_HEIGHT, BACKGROUND, TEXT = 4, 20, (255, 255, 255), (30, 30, 30)


def render_rows(engine, prompts, seeds: int, first_seed: int, sampler: str) -> list[list[np.ndarray]]:
    """Per prompt: the reference drawing, then `seeds` generated images (seeds first_seed, first_seed + 1, …)."""
    rows = []
    for prompt in prompts:
        images = [np.asarray(sd.render(sd.parse_prompt(prompt))[0])]
        for seed in range(first_seed, first_seed + seeds):
            images += dq.txt2img_images(engine, prompt, seed=seed, sampler=sampler)
        rows.append(images)
    return rows


def compose(rows: list[list[np.ndarray]], prompts, scale: int) -> Image.Image:
    """One labelled row per prompt; cells upscaled by `scale` (nearest)."""
    cell = sd.IMAGE_SIZE * scale
    columns = len(rows[0])
    font = ImageFont.load_default(size=13)
    label_width = max(font.getbbox(f'"{prompt}"')[2] for prompt in prompts) + 2 * GAP
    width = max(columns * cell + (columns + 1) * GAP, label_width)
    row_height = LABEL_HEIGHT + cell + GAP
    header = LABEL_HEIGHT
    picture = Image.new("RGB", (width, header + len(rows) * row_height + GAP), BACKGROUND)
    draw = ImageDraw.Draw(picture)
    titles = ["renderer's drawing"] + [f"seed {i}" for i in range(columns - 1)]
    for c, title in enumerate(titles):
        draw.text((GAP + c * (cell + GAP), 3), title, fill=(110, 110, 110), font=font)
    for r, (images, prompt) in enumerate(zip(rows, prompts)):
        top = header + r * row_height
        draw.text((GAP, top + 3), f'"{prompt}"', fill=TEXT, font=font)
        for c, image in enumerate(images):
            big = Image.fromarray(image).resize((cell, cell), Image.Resampling.NEAREST)
            picture.paste(big, (GAP + c * (cell + GAP), top + LABEL_HEIGHT))
    return picture


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", type=Path, default=ROOT / "models")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "demo_grid.png")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--scale", type=int, default=3)
    parser.add_argument("--sampler", default="dpmpp_2m")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    held_out = sd.held_out_scenes()
    unseen = [p for p in PROMPTS if sd.is_held_out(sd.parse_prompt(p), held_out)]
    if len(unseen) != len(PROMPTS):
        print(f"note: {len(PROMPTS) - len(unseen)} grid prompt(s) are training combinations, not held out")
    with tempfile.TemporaryDirectory(prefix="readme_grid_") as work:
        engine = dq.make_engine(args.models_dir, Path(work))
        rows = render_rows(engine, PROMPTS, args.seeds, args.first_seed, args.sampler)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    picture = compose(rows, PROMPTS, args.scale)
    picture.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(args.out, optimize=True)
    print(f"wrote {args.out} ({picture.width}x{picture.height}, {args.out.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
