"""Pipeline assembly, export and held-out evaluation for the demo model (used by train_demo_model.py).

Every evaluation samples held-out prompts (never trained on) with DPM++ 2M, 20 steps, CFG 5 and
fixed seeds, scores the images with shapes_data.score(), logs the summary, appends it to
OUT/<stage>/eval.jsonl and writes a picture grid to OUT/<stage>/samples.png.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
import shapes_data as sd  # noqa: E402

TOKENIZER_DIR = Path(__file__).resolve().parent.parent / "nodes" / "configs" / "tokenizer"
SAMPLE_STEPS, GUIDANCE = 20, 5.0
GRID_SCALE = 2


def log(message: str) -> None:
    tqdm.write(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stdout)
    sys.stdout.flush()


# ----------------------------------------------------------------------------- pipelines


def sampling_scheduler():
    """Scheduler saved with the pipelines: SD's scaled-linear betas, epsilon prediction."""
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                  beta_schedule="scaled_linear", prediction_type="epsilon", steps_offset=1,
                                  timestep_spacing="leading")


def text_to_image_pipeline(vae, text_encoder, tokenizer, unet):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=sampling_scheduler(), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def inpaint_pipeline(base, unet):
    from diffusers import StableDiffusionInpaintPipeline

    return StableDiffusionInpaintPipeline(vae=base.vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer,
                                          unet=unet, scheduler=sampling_scheduler(), safety_checker=None,
                                          feature_extractor=None, requires_safety_checker=False)


def depth_pipeline(base, unet):
    from diffusers import StableDiffusionDepth2ImgPipeline

    # No depth estimator ships with the demo model: depth maps come from the renderer (or the user).
    return StableDiffusionDepth2ImgPipeline(vae=base.vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer,
                                            unet=unet, scheduler=sampling_scheduler(), depth_estimator=None,
                                            feature_extractor=None)


def save_pipeline(pipeline, path: Path) -> None:
    """save_pretrained, plus the slow-tokenizer files (transformers 5 writes only tokenizer.json)."""
    pipeline.save_pretrained(path)
    for name in ("vocab.json", "merges.txt"):
        shutil.copyfile(TOKENIZER_DIR / name, Path(path) / "tokenizer" / name)


def _dpm_solver(pipeline):
    from diffusers import DPMSolverMultistepScheduler

    pipeline.scheduler = DPMSolverMultistepScheduler.from_config(pipeline.scheduler.config)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


# ----------------------------------------------------------------------------- helpers


def eval_scenes(count: int) -> list:
    """`count` held-out scenes spread over the single-object and two-object parts of the set."""
    scenes = sd.held_out_scenes()
    if count >= len(scenes):
        return scenes
    stride = len(scenes) / count
    return [scenes[int(i * stride)] for i in range(count)]


def _generators(count: int) -> list:
    return [torch.Generator().manual_seed(1000 + i) for i in range(count)]


def _to_uint8(images: np.ndarray) -> list[np.ndarray]:
    return [np.clip(np.round(image * 255), 0, 255).astype(np.uint8) for image in images]


def save_grid(columns: list[list[np.ndarray]], path: Path, examples: int = 16, per_block: int = 4) -> None:
    """`examples` evenly spread examples, in blocks of `per_block` rows placed side by side; each row
    shows the given image lists (uint8 HxWx3) left to right. Upscaled for viewing."""
    total = len(columns[0])
    count = min(examples, total)
    chosen = [round(i * (total - 1) / max(1, count - 1)) for i in range(count)]
    blocks = -(-count // per_block)
    cell, block_width = sd.IMAGE_SIZE + 2, len(columns) * (sd.IMAGE_SIZE + 2) + 8
    grid = np.full((min(count, per_block) * cell, blocks * block_width, 3), 255, dtype=np.uint8)
    for index in range(count):
        top, left = (index % per_block) * cell, (index // per_block) * block_width
        for c, column in enumerate(columns):
            grid[top : top + sd.IMAGE_SIZE, left + c * cell : left + c * cell + sd.IMAGE_SIZE] = column[chosen[index]]
    picture = Image.fromarray(grid)
    picture.resize((picture.width * GRID_SCALE, picture.height * GRID_SCALE), Image.Resampling.NEAREST).save(path)


def _record(ctx: dict, stage: str, step: int, summary: dict, extra: dict | None = None) -> None:
    entry = {"step": step, **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in summary.items()}}
    entry.update(extra or {})
    with open(ctx["out"] / stage / "eval.jsonl", "a") as handle:
        handle.write(json.dumps(entry) + "\n")
    shown = " ".join(f"{k} {v:.2f}" for k, v in entry.items() if isinstance(v, float))
    log(f"[{stage}] eval at step {step} ({summary['count']} held-out prompts): {shown}")


def reference_images(scenes: list) -> list[np.ndarray]:
    """The renderer's own (canonical) drawings of the scenes, uint8."""
    return [np.asarray(sd.render(scene)[0]) for scene in scenes]


# ----------------------------------------------------------------------------- evaluations


@torch.no_grad()
def evaluate_vae(vae, ctx: dict, step: int, stage: str = "vae") -> None:
    scenes = eval_scenes(ctx["eval_prompts"])
    references = reference_images(scenes)
    pixels = torch.from_numpy(np.stack(references)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    device = next(vae.parameters()).device
    recon = vae.decode(vae.encode(pixels.to(device)).latent_dist.mean).sample.clamp(-1, 1)
    images = _to_uint8(((recon + 1) / 2).permute(0, 2, 3, 1).cpu().numpy())
    mae = float(np.mean([np.abs(a.astype(float) - b) for a, b in zip(images, references)]))
    summary = sd.summarize([sd.score(image, scene) for image, scene in zip(images, scenes)])
    _record(ctx, stage, step, summary, {"mae_255": round(mae, 2), "scaling_factor": vae.config.scaling_factor})
    save_grid([references, images], ctx["out"] / stage / "samples.png")


@torch.no_grad()
def generate_images(pipeline, prompts: list[str], steps: int = SAMPLE_STEPS) -> list[np.ndarray]:
    """uint8 64x64 images of the prompts: DPM++ 2M, `steps` steps, CFG GUIDANCE, seeds 1000, 1001, ..."""
    result = _dpm_solver(pipeline)(prompts, height=sd.IMAGE_SIZE, width=sd.IMAGE_SIZE,
                                   num_inference_steps=steps, guidance_scale=GUIDANCE,
                                   generator=_generators(len(prompts)), output_type="np")
    return _to_uint8(result.images)


@torch.no_grad()
def evaluate_text_to_image(pipeline, ctx: dict, stage: str, step: int) -> None:
    scenes = eval_scenes(ctx["eval_prompts"])
    images = generate_images(pipeline, [sd.caption(s) for s in scenes])
    summary = sd.summarize([sd.score(image, scene) for image, scene in zip(images, scenes)])
    _record(ctx, stage, step, summary)
    save_grid([reference_images(scenes), images], ctx["out"] / stage / "samples.png")


def object_box_mask(scene, margin: float = 4.0) -> np.ndarray:
    """[64, 64] float mask (1 = repaint) covering the first object's box plus a margin."""
    mask = np.zeros((sd.IMAGE_SIZE, sd.IMAGE_SIZE), dtype=np.float32)
    placed = sd.layout(scene)[0]
    half = placed.radius * 1.1 + margin
    x0, y0 = int(max(0, placed.center[0] - half)), int(max(0, placed.center[1] - half))
    mask[y0 : int(placed.center[1] + half) + 1, x0 : int(placed.center[0] + half) + 1] = 1.0
    return mask


@torch.no_grad()
def evaluate_inpaint(pipeline, ctx: dict, step: int) -> None:
    """Mask out the (first) object of each held-out scene and ask the model to paint it back."""
    scenes = eval_scenes(ctx["eval_prompts"])
    references = reference_images(scenes)
    masks = [object_box_mask(scene) for scene in scenes]
    pipeline = _dpm_solver(pipeline)
    result = pipeline([sd.caption(s) for s in scenes], image=[Image.fromarray(r) for r in references],
                      mask_image=[Image.fromarray((m * 255).astype(np.uint8)) for m in masks],
                      height=sd.IMAGE_SIZE, width=sd.IMAGE_SIZE, strength=1.0, num_inference_steps=SAMPLE_STEPS,
                      guidance_scale=GUIDANCE, generator=_generators(len(scenes)), output_type="np")
    images = _to_uint8(result.images)
    summary = sd.summarize([sd.score(image, scene) for image, scene in zip(images, scenes)])
    kept = [np.abs(i.astype(float) - r)[m < 0.5].mean() for i, r, m in zip(images, references, masks)]
    _record(ctx, "inpaint", step, summary, {"kept_region_mae_255": round(float(np.mean(kept)), 2)})
    shown = [np.where(m[..., None] > 0.5, np.array([255, 0, 255], np.uint8), r) for r, m in zip(references, masks)]
    save_grid([references, shown, images], ctx["out"] / "inpaint" / "samples.png")


@torch.no_grad()
def evaluate_depth(pipeline, ctx: dict, step: int) -> None:
    """Generate each held-out scene from its rendered depth map (strength 1 from a gray image)."""
    scenes = eval_scenes(ctx["eval_prompts"])
    depths = [sd.render(scene)[1] for scene in scenes]
    gray = Image.new("RGB", (sd.IMAGE_SIZE, sd.IMAGE_SIZE), (128, 128, 128))
    pipeline = _dpm_solver(pipeline)
    result = pipeline([sd.caption(s) for s in scenes], image=[gray] * len(scenes),
                      depth_map=torch.from_numpy(np.stack(depths)), strength=1.0, num_inference_steps=SAMPLE_STEPS,
                      guidance_scale=GUIDANCE, generator=_generators(len(scenes)), output_type="np")
    images = _to_uint8(result.images)
    summary = sd.summarize([sd.score(image, scene) for image, scene in zip(images, scenes)])
    # Same depth maps, captions without position words: only the depth map can place the objects.
    unplaced = [sd.SceneSpec(tuple(replace(o, position=None) for o in s.objects), s.background) for s in scenes]
    result = pipeline([sd.caption(s) for s in unplaced], image=[gray] * len(scenes),
                      depth_map=torch.from_numpy(np.stack(depths)), strength=1.0, num_inference_steps=SAMPLE_STEPS,
                      guidance_scale=GUIDANCE, generator=_generators(len(scenes)), output_type="np")
    placed = sd.summarize([sd.score(image, scene) for image, scene in zip(_to_uint8(result.images), scenes)])
    _record(ctx, "depth", step, summary, {"pos_ok_from_depth_only": round(placed["pos_ok"], 4)})
    depth_pictures = [np.repeat((d[..., None] * 255).astype(np.uint8), 3, axis=2) for d in depths]
    save_grid([reference_images(scenes), depth_pictures, images], ctx["out"] / "depth" / "samples.png")
