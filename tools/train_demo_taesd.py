"""Distil a tiny TAESD preview decoder (`diffusers.AutoencoderTiny` decoder) from the bundled demo model's VAE.

    python tools/train_demo_taesd.py [--steps 1500] [--out models/vae_approx/taedemo_decoder.safetensors]

Student input: model-unit latents (VAE latent × scaling factor) of training scenes, half of them perturbed towards
noise as a sampler's x0 predictions are; target: the demo VAE's decode of the same latent. The pool of latents and
targets is computed once (the VAE is the slow part); each step trains on random 4×4 latent crops (32×32 pixels) of
it, which a fully convolutional decoder learns as well as whole images, at a quarter of the cost. Seeded and
resumable (pool and state in --work, state saved every --save-every steps). At the end it reports the PSNR of the student's decode against the VAE's
on held-out scenes (the README quotes it) and writes the fp16 decoder with its config in the file's metadata."""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "tools"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import shapes_data as sd  # noqa: E402
from train_demo_model import render_batch, render_scenes  # noqa: E402

from nodes.taesd import CONFIG_KEY, build_tiny  # noqa: E402

CHECKPOINT = ROOT / "models" / "checkpoints" / "graphengine-demo.safetensors"
STUDENT = {"latent_channels": 4, "decoder_block_out_channels": [24, 24, 24, 24], "num_decoder_blocks": [1, 1, 1, 1]}
HELD_OUT_RENDER_SEED = 1234
POOL_BATCH = 32
CROP = 4  # latent pixels (8× that in image pixels)


def load_vae() -> tuple[torch.nn.Module, float]:
    from nodes.models.single_file import load_checkpoint

    loaded = load_checkpoint(CHECKPOINT, dtype=torch.float32)
    return loaded.vae.eval().requires_grad_(False), float(loaded.latent_scale_factor)


def latents_and_targets(vae, scale: float, pixels: torch.Tensor, gen: torch.Generator,
                        perturb: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(model-unit latents, VAE decode in [-1, 1]) of a batch of images."""
    with torch.no_grad():
        posterior = vae.encode(pixels).latent_dist
        latents = (posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=gen)) * scale
        if perturb:  # half the batch moves towards noise, as early x0 predictions do
            sigma = torch.rand(latents.shape[0], 1, 1, 1, generator=gen) * 0.6
            sigma[: latents.shape[0] // 2] = 0.0
            latents = latents + sigma * torch.randn(latents.shape, generator=gen)
        target = vae.decode(latents / scale).sample.clamp(-1.0, 1.0)
    return latents, target


def psnr(decoded: torch.Tensor, reference: torch.Tensor) -> float:
    """PSNR in dB of images in [-1, 1] compared in 0..1."""
    mse = F.mse_loss((decoded.clamp(-1, 1) + 1) / 2, (reference + 1) / 2).item()
    return 10.0 * torch.log10(torch.tensor(1.0 / max(mse, 1e-10))).item()


def held_out_psnr(student, vae, scale: float) -> float:
    scenes = sd.held_out_scenes()
    rng = random.Random(HELD_OUT_RENDER_SEED)
    pixels, _ = render_scenes(scenes, [rng.randrange(2**31) for _ in scenes])
    latents, target = latents_and_targets(vae, scale, pixels, torch.Generator().manual_seed(HELD_OUT_RENDER_SEED),
                                          perturb=False)
    with torch.no_grad():
        return psnr(student.decode(latents).sample, target)


def training_pool(vae, scale: float, size: int, seed: int, path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(latents, targets) of `size` training scenes, cached in `path`."""
    if path.is_file():
        pool = torch.load(path, map_location="cpu", weights_only=True)
        return pool["latents"], pool["targets"]
    held_out, rng, gen = sd.held_out_scenes(), random.Random(seed), torch.Generator().manual_seed(seed)
    parts = [latents_and_targets(vae, scale, render_batch(rng, POOL_BATCH, held_out)[2], gen, perturb=True)
             for _ in range(size // POOL_BATCH)]
    latents, targets = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"latents": latents, "targets": targets.half()}, path)
    return latents, targets


def crops(latents: torch.Tensor, targets: torch.Tensor, batch: int, gen: torch.Generator):
    """`batch` random CROP×CROP latent crops and their 8× larger target crops."""
    index = torch.randint(0, latents.shape[0], (batch,), generator=gen)
    top = torch.randint(0, latents.shape[-2] - CROP + 1, (batch,), generator=gen)
    left = torch.randint(0, latents.shape[-1] - CROP + 1, (batch,), generator=gen)
    z = torch.stack([latents[i, :, t:t + CROP, l:l + CROP] for i, t, l in zip(index, top, left)])
    x = torch.stack([targets[i, :, 8 * t:8 * (t + CROP), 8 * l:8 * (l + CROP)] for i, t, l in zip(index, top, left)])
    return z, x.float()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--pool", type=int, default=1024, help="training scenes encoded once")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-every", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (one leaves a shared machine usable)")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "taesd")
    parser.add_argument("--out", type=Path, default=ROOT / "models" / "vae_approx" / "taedemo_decoder.safetensors")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    vae, scale = load_vae()
    student = build_tiny(STUDENT)
    optimizer = torch.optim.AdamW(student.decoder.parameters(), lr=args.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.steps)
    state_path = args.work / "state.pt"
    step = 0
    if state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        student.decoder.load_state_dict(state["decoder"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        step = state["step"]
        print(f"resumed at step {step}")
    pool_latents, pool_targets = training_pool(vae, scale, args.pool, args.seed, args.work / "pool.pt")
    start = time.time()
    while step < args.steps:
        # Each step's crops depend only on (seed, step): a resumed run sees the same batches.
        latents, target = crops(pool_latents, pool_targets, args.batch, torch.Generator().manual_seed(args.seed + step))
        decoded = student.decode(latents).sample
        loss = F.l1_loss(decoded, target) + F.mse_loss(decoded, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        step += 1
        if step % 25 == 0:
            print(f"step {step} loss {loss.item():.4f} ({time.time() - start:.0f} s)", flush=True)
        if step % args.save_every == 0 or step == args.steps:
            args.work.mkdir(parents=True, exist_ok=True)
            torch.save({"decoder": student.decoder.state_dict(), "optimizer": optimizer.state_dict(),
                        "schedule": schedule.state_dict(), "step": step}, state_path)
    student.eval()
    score = held_out_psnr(student, vae, scale)
    from safetensors.torch import save_file

    args.out.parent.mkdir(parents=True, exist_ok=True)
    weights = {f"decoder.{k}": v.half().contiguous() for k, v in student.decoder.state_dict().items()}
    save_file(weights, str(args.out), metadata={CONFIG_KEY: json.dumps(STUDENT),
                                                "graphengine.heldout_psnr_db": f"{score:.2f}"})
    print(json.dumps({"steps": step, "held_out_psnr_db": round(score, 2), "file": str(args.out),
                      "bytes": args.out.stat().st_size}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
