"""Write the sample input images of the workflow templates into input/ (64x64 coloured-shape scenes).

    python tools/make_workflow_inputs.py [--out input]

Scenes are drawn by tools/shapes_data.py (the demo model's training renderer, canonical layout: no jitter), so the
inputs look like what the demo model was trained on. Output is deterministic."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import shapes_data as sd  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# file name -> caption of the scene it shows (see the workflow table in the README)
SCENES = {
    "img2img_init.png": "a large red circle in the center on a blue background",
    "inpaint_image.png": "a red circle on the left and a yellow square on the right on a blue background",
    "outpaint_source": "a large green square on the left on a white background",
    "depth_source": "a large red circle at the bottom and a small blue square at the top on a gray background",
}


def scene(caption: str) -> tuple[Image.Image, np.ndarray]:
    """Render a caption whose every attribute is given; sizes left out default to small."""
    spec = sd.parse_prompt(caption)
    objects = tuple(sd.ShapeSpec(o.color or "white", o.shape, o.position, o.size or "small") for o in spec.objects)
    return sd.render(sd.SceneSpec(objects, spec.background))


def right_half_mask(size: int = sd.IMAGE_SIZE) -> Image.Image:
    """White (= repaint) over the right half, black elsewhere."""
    mask = np.zeros((size, size, 3), dtype=np.uint8)
    mask[:, size // 2:] = 255
    return Image.fromarray(mask, "RGB")


def depth_image(depth: np.ndarray) -> Image.Image:
    """Nearness [H, W] in 0..1 -> greyscale RGB (bright = near), as depth models expect."""
    grey = np.round(np.clip(depth, 0.0, 1.0) * 255).astype(np.uint8)
    return Image.fromarray(np.stack([grey] * 3, axis=-1), "RGB")


def sample_inputs() -> dict[str, Image.Image]:
    """File name -> image, for every sample input."""
    img2img, _ = scene(SCENES["img2img_init.png"])
    inpaint, _ = scene(SCENES["inpaint_image.png"])
    outpaint, _ = scene(SCENES["outpaint_source"])
    _, depth = scene(SCENES["depth_source"])
    half = sd.IMAGE_SIZE // 2
    return {
        "img2img_init.png": img2img,
        "inpaint_image.png": inpaint,
        "inpaint_mask.png": right_half_mask(),
        "outpaint_image.png": outpaint.crop((0, 0, half, sd.IMAGE_SIZE)),  # left half; the template pads the right
        "depth_map.png": depth_image(depth),
    }


def write_inputs(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, image in sample_inputs().items():
        path = folder / name
        image.save(path, format="PNG")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "input", help="folder to write into (default: input/)")
    args = parser.parse_args(argv)
    for path in write_inputs(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
