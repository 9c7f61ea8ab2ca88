"""Full-size SD1.5 on the CPU (random weights, fp32): our KSampler graph vs a hand-written diffusers loop.

Run: python bench/sd15_cpu.py [--threads 1] [--size 256] [--steps 4] [--keep DIR]
     (prints a table; several GB of RAM and a few minutes).

Setup (its own subprocess): the SD1.5 UNet (~860M params), VAE and CLIP-L text encoder are built from
nodes/configs/sd15 with random weights and written twice from the same modules: as an original-layout single file
(`save_checkpoint`) that our graph loads through CheckpointLoaderSimple, and as diffusers folders
(`save_pretrained`) that the hand-written side loads with `from_pretrained`.
Each side then runs end to end in its OWN fresh subprocess, so that peak RSS (ru_maxrss) is its own:
  ours         Executor.execute(CheckpointLoaderSimple -> CLIPTextEncode x2 -> EmptyLatentImage -> KSampler (euler,
               normal, cfg 7) -> VAEDecode -> sink)
  hand-written from_pretrained x3, CLIPTokenizer + CLIPTextModel for both prompts, the CFG Euler loop of
               bench/_common.py (one batched [uncond, cond] UNet call per step), vae.decode
s/step is the sampling time over the steps (ours: from KSampler's start to its last progress event); the time
inside UNet2DConditionModel.forward is recorded the same way on both sides, so the loop's own cost shows apart
from contention. With --rounds N each side runs N times, alternating which goes first.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import (NEGATIVE, POSITIVE, ROOT, discrete_log_sigmas, euler_cfg, make_registry,  # noqa: E402
                           nearest_timestep, normal_schedule, peak_rss_mib, seeded_noise, sunk, txt2img_prompt)

CKPT = "sd15_random.safetensors"
CFG = 7.0
SEED = 42


def setup(models_dir: Path) -> dict:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from nodes.models import save_checkpoint
    from nodes.models.families import FAMILIES, read_config

    config_dir = FAMILIES["sd15"].config_dir
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(read_config(config_dir, "unet")).eval()
    vae = AutoencoderKL.from_config(read_config(config_dir, "vae")).eval()
    text_config = read_config(config_dir, "text_encoder")
    text_config.pop("architectures", None)
    text = CLIPTextModel(CLIPTextConfig.from_dict(text_config)).eval()
    (models_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    save_checkpoint(models_dir / "checkpoints" / CKPT, unet, vae, [text], "sd15")
    for name, module in (("unet", unet), ("vae", vae), ("text_encoder", text)):
        module.save_pretrained(models_dir / "diffusers" / name, safe_serialization=True)
    return {"unet_params": sum(p.numel() for p in unet.parameters()),
            "vae_params": sum(p.numel() for p in vae.parameters()),
            "text_params": sum(p.numel() for p in text.parameters())}


def run_ours(models_dir: Path, size: int, steps: int, image_out: Path) -> dict:
    from graphengine import Executor
    from graphengine.events import Executing, Progress

    start = time.perf_counter()
    executor = Executor(make_registry(models_dir))
    marks: list[float] = []

    def listen(event) -> None:
        if isinstance(event, Executing) and event.node == "sample":
            marks.append(time.perf_counter())
        elif isinstance(event, Progress) and event.node == "sample":
            marks.append(time.perf_counter())

    executor.events.subscribe(listen)
    result = executor.execute(txt2img_prompt(CKPT, seed=SEED, steps=steps, cfg=CFG, size=size, decode=True))
    total = time.perf_counter() - start
    torch.save(sunk(result), image_out)
    return {"total_s": total, "step_s": [b - a for a, b in zip(marks, marks[1:])]}


def run_handwritten(models_dir: Path, size: int, steps: int, image_out: Path) -> dict:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    start = time.perf_counter()
    folder = models_dir / "diffusers"
    unet = UNet2DConditionModel.from_pretrained(folder / "unet").eval()
    vae = AutoencoderKL.from_pretrained(folder / "vae").eval()
    text = CLIPTextModel.from_pretrained(folder / "text_encoder").eval()
    tokenizer = CLIPTokenizer.from_pretrained(ROOT / "nodes" / "configs" / "tokenizer")

    with torch.no_grad():
        def encode(prompt: str) -> torch.Tensor:
            ids = tokenizer(prompt, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
            return text(ids.input_ids).last_hidden_state

        cond, uncond = encode(POSITIVE), encode(NEGATIVE)
        log_sigmas = discrete_log_sigmas()
        sigmas = normal_schedule(log_sigmas, steps)
        timesteps = [nearest_timestep(log_sigmas, s) for s in sigmas[:-1]]
        marks = [time.perf_counter()]
        noise = seeded_noise((1, 4, size // 8, size // 8), SEED)
        latent = euler_cfg(unet, noise, sigmas, timesteps, cond, uncond, CFG,
                           on_step=lambda i: marks.append(time.perf_counter()))
        decoded = vae.decode(latent / vae.config.scaling_factor).sample
    image = ((decoded + 1.0) / 2.0).clamp(0.0, 1.0).movedim(1, -1)
    total = time.perf_counter() - start
    torch.save(image, image_out)
    return {"total_s": total, "step_s": [b - a for a, b in zip(marks, marks[1:])]}


def time_unet_forward(seconds: list[float]) -> None:
    """Record the wall time of every UNet2DConditionModel forward in this process (both sides alike)."""
    from diffusers import UNet2DConditionModel

    forward = UNet2DConditionModel.forward

    def timed_forward(self, *args, **kwargs):
        start = time.perf_counter()
        out = forward(self, *args, **kwargs)
        seconds.append(time.perf_counter() - start)
        return out

    UNet2DConditionModel.forward = timed_forward


def worker(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    forward_s: list[float] = []
    time_unet_forward(forward_s)
    models_dir = Path(args.models)
    if args.side == "setup":
        info = setup(models_dir)
    elif args.side == "ours":
        info = run_ours(models_dir, args.size, args.steps, models_dir / "ours.pt")
    else:
        info = run_handwritten(models_dir, args.size, args.steps, models_dir / "hand.pt")
    info["peak_rss_mib"] = peak_rss_mib()
    info["forward_s"] = forward_s
    print(json.dumps(info))


def spawn(side: str, models_dir: Path, args: argparse.Namespace) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    command = [sys.executable, __file__, "--side", side, "--models", str(models_dir), "--threads",
               str(args.threads), "--size", str(args.size), "--steps", str(args.steps)]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{side} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def per_step(run: dict) -> float:
    return sum(run["step_s"]) / len(run["step_s"])


def outside_unet(run: dict) -> float:
    """Sampling seconds per step not spent in UNet.forward (the sampling loop's own cost)."""
    return per_step(run) - sum(run["forward_s"]) / len(run["step_s"])


def report(args: argparse.Namespace, made: dict, ours: list[dict], hand: list[dict], image_diff: float) -> None:
    def med(runs: list[dict], measure) -> float:
        return statistics.median(measure(run) for run in runs)

    print(f"SD1.5 architecture, random weights (UNet {made['unet_params'] / 1e6:.0f} M, VAE "
          f"{made['vae_params'] / 1e6:.0f} M, CLIP-L {made['text_params'] / 1e6:.0f} M params), fp32 CPU, "
          f"{args.size}x{args.size}, euler/normal, {args.steps} steps, cfg {CFG}; torch threads {args.threads}; "
          f"{args.rounds} run(s) per side, each in a fresh subprocess, medians over runs; "
          f"max |pixel diff| ours vs hand-written {image_diff:.2e}")
    print(f"{'measure':40s} {'hand-written':>14s} {'ours':>14s} {'ours/hand':>10s}")
    rows = [
        ("s/step (sampling time / steps)", med(hand, per_step), med(ours, per_step), "s"),
        ("s/step outside UNet.forward", med(hand, outside_unet), med(ours, outside_unet), "s"),
        ("end to end incl. load + decode", med(hand, lambda r: r["total_s"]), med(ours, lambda r: r["total_s"]), "s"),
        ("peak RSS", med(hand, lambda r: r["peak_rss_mib"]) / 1024, med(ours, lambda r: r["peak_rss_mib"]) / 1024,
         "GiB"),
    ]
    for name, h, o, unit in rows:
        ratio = f"{o / h:9.3f} x" if name != "s/step outside UNet.forward" else f"{'-':>9s}  "
        print(f"{name:40s} {h:11.3f} {unit:3s}{o:11.3f} {unit:3s}{ratio}")
    for side, runs in (("hand-written", hand), ("ours", ours)):
        for i, run in enumerate(runs):
            steps = " ".join(f"{s:.2f}" for s in run["step_s"])
            print(f"run {i + 1} {side:13s} step seconds {steps}; end to end {run['total_s']:.1f} s; "
                  f"peak RSS {run['peak_rss_mib'] / 1024:.2f} GiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2,
                        help="runs per side, alternating hand/ours then ours/hand (each a fresh subprocess)")
    parser.add_argument("--keep", help="write the model files under DIR and keep them (default: a temporary folder)")
    parser.add_argument("--side", choices=["setup", "ours", "hand"], help=argparse.SUPPRESS)
    parser.add_argument("--models", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        worker(args)
        return
    with tempfile.TemporaryDirectory(prefix="bench_sd15_") as tmp:
        models_dir = Path(args.keep or tmp) / "models"
        made = spawn("setup", models_dir, args)
        runs: dict[str, list[dict]] = {"hand": [], "ours": []}
        for r in range(args.rounds):
            for side in ("hand", "ours") if r % 2 == 0 else ("ours", "hand"):
                runs[side].append(spawn(side, models_dir, args))
        image_diff = float((torch.load(models_dir / "ours.pt") - torch.load(models_dir / "hand.pt")).abs().max())
        report(args, made, runs["ours"], runs["hand"], image_diff)


if __name__ == "__main__":
    main()
