"""Train the bundled tiny pixel-space unconditional model: a diffusers ``UNet2DModel`` + ``DDPMScheduler``.

    nice -n 10 python tools/train_demo_unconditional.py [--steps 750] [--work build/demo-uncond]
        [--out models/checkpoints/graphengine-demo-uncond.safetensors]

Data: the demo model's shapes renderer (tools/shapes_data.py), one coloured shape on a plain background,
rendered at 64 px and box-downsampled to 32x32. Objective: DDPM with x0 ("sample") prediction, uniform timesteps
(flat shapes are learnt in far fewer steps than with epsilon prediction, which leaves grain until late),
AdamW with warmup and cosine decay, EMA of the weights. Seeded: the batch of step N comes from
``random.Random(seed * 1_000_003 + N)`` and the noise from a generator seeded the same way, so a resumed run sees
the same data as an uninterrupted one. State (weights, EMA, optimizer, step) goes to WORK/state.pt every
--save-every steps; rerunning the same command resumes. Every save also exports the EMA weights with
``--untrained-out`` written once at step 0 (the same architecture, random weights), for the quality benchmark.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "tools"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import shapes_data as sd  # noqa: E402

from nodes.models.pixel_unet import save_pixel_unet  # noqa: E402

IMAGE_SIZE = 32
UNET_CONFIG = {
    "sample_size": IMAGE_SIZE,
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": [8, 16, 32],
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "down_block_types": ["DownBlock2D", "DownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
    "attention_head_dim": 16,
}
SCHEDULER_CONFIG = {"num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 0.0001,
                    "beta_end": 0.02, "prediction_type": "sample", "clip_sample": True}
DEFAULT_OUT = ROOT / "models" / "checkpoints" / "graphengine-demo-uncond.safetensors"
DEFAULT_UNTRAINED = ROOT / "build" / "demo-uncond" / "graphengine-demo-uncond-untrained.safetensors"


def build_models():
    from diffusers import DDPMScheduler, UNet2DModel

    return UNet2DModel(**UNET_CONFIG), DDPMScheduler(**SCHEDULER_CONFIG)


def single_shape_scene(rng: random.Random):
    """One shape on a plain background (never two objects)."""
    return sd.random_scene(rng, two_objects=False)


def render_small(scene, seed: int) -> Image.Image:
    image, _ = sd.render(scene, seed)
    return image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)


def training_batch(seed: int, step: int, batch: int) -> torch.Tensor:
    """[B, 3, 32, 32] in [-1, 1], determined by (seed, step)."""
    rng = random.Random(seed * 1_000_003 + step)
    images = [np.asarray(render_small(single_shape_scene(rng), rng.randrange(2**31))) for _ in range(batch)]
    pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float()
    return pixels / 127.5 - 1.0


def learning_rate(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))


def export(path: Path, unet, scheduler, step: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.safetensors")
    save_pixel_unet(tmp, unet, {"_class_name": type(scheduler).__name__, **dict(scheduler.config)},
                    extra_metadata={"graphengine.training_steps": str(step)})
    tmp.replace(path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=750)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1.5e-3)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--ema", type=float, default=0.99)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-every", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "demo-uncond")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--untrained-out", type=Path, default=DEFAULT_UNTRAINED)
    return parser.parse_args(argv)


def train(args: argparse.Namespace) -> None:
    """Run (or resume) the training described by `args` (see parse_args)."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    args.work.mkdir(parents=True, exist_ok=True)
    state_path, log_path = args.work / "state.pt", args.work / "train.log"

    unet, scheduler = build_models()
    if not args.untrained_out.is_file():
        export(args.untrained_out, unet, scheduler, 0)
    ema = copy.deepcopy(unet).requires_grad_(False)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=0.0)
    start = 0
    if state_path.is_file():
        state = torch.load(state_path, weights_only=True)
        unet.load_state_dict(state["unet"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        start = int(state["step"])
    alphas = scheduler.alphas_cumprod

    def log(message: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {message}"
        print(line, flush=True)
        with log_path.open("a") as f:
            f.write(line + "\n")

    log(f"start at step {start}/{args.steps}, {sum(p.numel() for p in unet.parameters())} params")
    losses: list[float] = []
    clock = time.perf_counter()
    for step in range(start, args.steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args.steps, args.lr, args.warmup)
        clean = training_batch(args.seed, step, args.batch)
        gen = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        noise = torch.randn(clean.shape, generator=gen)
        timesteps = torch.randint(0, len(alphas), (clean.shape[0],), generator=gen)
        a = alphas[timesteps].view(-1, 1, 1, 1)
        noisy = a.sqrt() * clean + (1 - a).sqrt() * noise
        target = clean if scheduler.config.prediction_type == "sample" else noise
        loss = F.mse_loss(unet(noisy, timesteps).sample, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema.parameters(), unet.parameters()):
                e.lerp_(p, 1 - decay)
        losses.append(loss.item())
        done = step + 1
        if done % args.save_every == 0 or done == args.steps:
            tmp = state_path.with_suffix(".tmp")
            torch.save({"unet": unet.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
                        "step": done}, tmp)
            tmp.replace(state_path)
            export(args.out, ema, scheduler, done)
            elapsed = time.perf_counter() - clock
            log(f"step {done} loss {sum(losses) / len(losses):.4f} lr {optimizer.param_groups[0]['lr']:.2e} "
                f"{elapsed / len(losses):.2f} s/step; exported {args.out.name}")
            losses, clock = [], time.perf_counter()
    (args.work / "done.json").write_text(json.dumps({"steps": args.steps, "seed": args.seed}))


if __name__ == "__main__":
    train(parse_args())
