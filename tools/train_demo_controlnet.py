#!/usr/bin/env python
"""Train the bundled demo ControlNet: depth maps (or Canny edge maps) of shapes scenes steer where (and as what)
the demo model draws.

The bundled checkpoint's UNet, text encoder and VAE are loaded with the engine's loader and frozen. The ControlNet
is diffusers' ControlNetModel.from_unet(demo UNet) (its encoder copied from the UNet, zero convolutions, a small
hint encoder). Each batch renders training scenes (the base model's held-out scenes excluded) and their control:
`--control depth` (default) the renderer's nearness map as an 8-bit greyscale image (white = near, black = the
background: each shape a filled silhouette, as input/depth_map.png), `--control canny` the edge map of the engine's
Canny function (nodes/preprocessors.canny_edges, the thresholds the workflow's Canny node uses). Captions leave the
position out most of the time and are empty often, so the control, not the prompt, carries placement; timesteps
are drawn biased towards high noise (t = T(1 - u^p), p = --timestep-power), where the layout is decided.
The result is a single file in the original ControlNet layout (`control_model.*` keys, fp16, the diffusers config
in its `graphengine.config` metadata) at OUT/NAME.safetensors, which ControlNetLoader loads without hints.

Example:  python tools/train_demo_controlnet.py --out build/demo-controlnet --threads 2   (--steps 5 for a smoke run)
The bundled file: `--steps 600` stopped after its step-400 checkpoint, then resumed with `--steps 1200` (~50 min
on 2 shared CPU cores, 0.7-2.5 s/step at batch 8).
Training state (ControlNet, optimizer, step) is checkpointed to OUT/ckpt.pt; rerunning the same command resumes,
and a finished run is skipped. All randomness comes from (--seed, step), so a resumed run sees the same data and
noise as an uninterrupted one. Every evaluation samples held-out scenes with position-free prompts and their edge
maps as control (DPM++ 2M, CFG 5), with the ControlNet and without it: OUT/eval.jsonl, OUT/samples.png.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
for _path in (REPO_ROOT / "tools", REPO_ROOT):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import demo_eval  # noqa: E402
import shapes_data as sd  # noqa: E402
import train_demo_model as base_training  # noqa: E402
from train_demo_lora import load_base_model  # noqa: E402

DEFAULT_CHECKPOINT = REPO_ROOT / "models" / "checkpoints" / "graphengine-demo.safetensors"
CONTROLS = ("depth", "canny")
CONTROLNET_SEED_SALT = 7 * 10_007  # keeps the ControlNet's data streams apart from the base's and the LoRA's
# The Canny thresholds of training and of workflows/controlnet.json: low, because the grey levels of some colour
# pairs (red on blue) are close and the node's 0.4/0.8 defaults find no edge in half the scenes.
CANNY_LOW, CANNY_HIGH = 0.05, 0.1
HINT_CHANNELS = (16, 32, 64, 64)  # the hint encoder's widths (64x64 edges -> the 8x8 latent)


def step_generators(seed: int, step: int) -> tuple[random.Random, torch.Generator]:
    value = (seed * 1_000_003 + CONTROLNET_SEED_SALT + step) % (2**62)
    return random.Random(value), torch.Generator().manual_seed(value)


def edge_maps(pixels: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] pixels in [-1, 1] -> the engine Canny node's white-on-black edges, [B, 3, H, W] in [0, 1]."""
    from nodes.preprocessors import canny_edges

    image = ((pixels + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)
    return canny_edges(image, CANNY_LOW, CANNY_HIGH).permute(0, 3, 1, 2).contiguous()


def depth_hints(depth: np.ndarray) -> torch.Tensor:
    """[B, H, W] nearness in [0, 1] -> [B, 3, H, W] greyscale in [0, 1], quantized to 8 bits as a PNG holds it."""
    grey = torch.from_numpy(np.round(np.clip(depth, 0.0, 1.0) * 255) / 255).float()
    return grey[:, None].expand(-1, 3, -1, -1).contiguous()


def control_hints(control: str, pixels: torch.Tensor, depth: np.ndarray) -> torch.Tensor:
    """The ControlNet's input for rendered scenes: their depth map or their Canny edges."""
    return depth_hints(depth) if control == "depth" else edge_maps(pixels)


def scene_hints(scenes: list, seeds: list | None = None, control: str = "depth") -> torch.Tensor:
    """Control images of rendered scenes (canonical renders when `seeds` is None)."""
    seeds = seeds if seeds is not None else [None] * len(scenes)
    return control_hints(control, *base_training.render_scenes(scenes, seeds))


def without_positions(scene):
    return sd.SceneSpec(tuple(replace(o, position=None) for o in scene.objects), scene.background)


def build_controlnet(unet):
    from diffusers import ControlNetModel

    return ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=HINT_CHANNELS)


# ----------------------------------------------------------------------------- export and evaluation


def export_file(ctx: dict, controlnet, step: int, evaluation: dict | None) -> Path:
    from nodes.controlnet.layout import controlnet_to_original

    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in controlnet.config.items()
              if not k.startswith("_")}
    record = {"control": ctx["control"], "trainer": "tools/train_demo_controlnet.py",
              "base_model": ctx["checkpoint"].name, "step": step,
              **{k: ctx[k] for k in ("steps", "runs", "seed", "lr", "batch", "p_position", "p_empty",
                                     "timestep_power")}}
    if ctx["control"] == "canny":
        record["canny_thresholds"] = [CANNY_LOW, CANNY_HIGH]
    metadata = {"graphengine.config": json.dumps({"controlnet": config}),
                "graphengine.controlnet_training": json.dumps(record)}
    if evaluation is not None:
        metadata["graphengine.controlnet_eval"] = json.dumps(evaluation)
    tensors = {k: v.detach().to("cpu", torch.float16).contiguous()
               for k, v in controlnet_to_original(controlnet.state_dict()).items()}
    path = ctx["out"] / f"{ctx['name']}.safetensors"
    tmp = path.with_suffix(".tmp")
    save_file(tensors, tmp, metadata=metadata)
    os.replace(tmp, path)
    return path


def controlnet_pipeline(base, controlnet):
    from diffusers import StableDiffusionControlNetPipeline

    return StableDiffusionControlNetPipeline(
        vae=base.vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer, unet=base.unet,
        controlnet=controlnet, scheduler=demo_eval.sampling_scheduler(), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)


@torch.no_grad()
def generate_controlled(pipeline, prompts: list[str], hints: torch.Tensor, steps: int) -> list[np.ndarray]:
    """As demo_eval.generate_images (DPM++ 2M, CFG 5, seeds 1000, 1001, ...), with `hints` as control."""
    pipeline = demo_eval._dpm_solver(pipeline)
    result = pipeline(prompts, image=hints, height=sd.IMAGE_SIZE, width=sd.IMAGE_SIZE, num_inference_steps=steps,
                      guidance_scale=demo_eval.GUIDANCE, generator=demo_eval._generators(len(prompts)),
                      output_type="np")
    return demo_eval._to_uint8(result.images)


def _rounded(summary: dict) -> dict:
    return {k: round(v, 4) for k, v in summary.items() if isinstance(v, float)} | {"count": summary["count"]}


@torch.no_grad()
def evaluate(ctx: dict, base, controlnet, step: int) -> dict:
    """Held-out scenes, prompts without positions, scored against the full scene: with the ControlNet vs without
    (the base model alone, measured once per run)."""
    scenes = ctx["eval"]
    prompts = [sd.caption(without_positions(s)) for s in scenes]
    controlnet.eval()
    hints = scene_hints(scenes, control=ctx["control"])
    controlled = generate_controlled(controlnet_pipeline(base, controlnet), prompts, hints, ctx["sample_steps"])
    controlnet.train()
    if ctx["base_images"] is None:
        pipeline = demo_eval.text_to_image_pipeline(base.vae, base.text_encoder, base.tokenizer, base.unet)
        ctx["base_images"] = demo_eval.generate_images(pipeline, prompts, ctx["sample_steps"])
    result = {"step": step}
    for label, images in (("controlnet", controlled), ("without", ctx["base_images"])):
        result[label] = _rounded(sd.summarize([sd.score(i, s) for i, s in zip(images, scenes)]))
    with open(ctx["out"] / "eval.jsonl", "a") as handle:
        handle.write(json.dumps(result) + "\n")
    demo_eval.log(f"[controlnet] eval at step {step}: pos_ok {result['controlnet']['pos_ok']:.2f} "
                  f"(without {result['without']['pos_ok']:.2f}), shape_ok {result['controlnet']['shape_ok']:.2f} "
                  f"(without {result['without']['shape_ok']:.2f})")
    hint_images = [np.asarray(h.permute(1, 2, 0).mul(255).round().byte()) for h in hints]
    demo_eval.save_grid([demo_eval.reference_images(scenes), hint_images, controlled, ctx["base_images"]],
                        ctx["out"] / "samples.png", examples=len(scenes), per_block=8)
    return result


# ----------------------------------------------------------------------------- training


def biased_timesteps(count: int, total: int, power: float, gen: torch.Generator) -> torch.Tensor:
    """t = T(1 - u^power), u uniform: power 1 is uniform, 3 (T2I-Adapter's cubic sampling) favours high noise."""
    unit = torch.rand(count, generator=gen)
    return ((1 - unit**power) * total).long().clamp(0, total - 1)


def controlled_loss(unet, controlnet, scheduler, latents, hint, hidden, gen, timestep_power: float = 1.0):
    """The denoising loss (min-SNR weighted, as the base model's) with the ControlNet's residuals in the UNet."""
    noise = torch.randn(latents.shape, generator=gen).to(latents.device)
    timesteps = biased_timesteps(latents.shape[0], scheduler.config.num_train_timesteps, timestep_power, gen)
    timesteps = timesteps.to(latents.device)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    down, mid = controlnet(noisy, timesteps, encoder_hidden_states=hidden, controlnet_cond=hint, return_dict=False)
    prediction = unet(noisy, timesteps, encoder_hidden_states=hidden, down_block_additional_residuals=down,
                      mid_block_additional_residual=mid).sample
    per_sample = F.mse_loss(prediction.float(), noise.float(), reduction="none").mean(dim=(1, 2, 3))
    return (per_sample * base_training.min_snr_weights(scheduler, timesteps)).mean()


def train(ctx: dict) -> dict:
    device, total = ctx["device"], ctx["steps"]
    base = load_base_model(ctx["checkpoint"], device)
    torch.manual_seed(ctx["seed"])
    controlnet = build_controlnet(base.unet).to(device).train().requires_grad_(True)
    parameters = list(controlnet.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=ctx["lr"], weight_decay=0.0)
    ckpt_path, start, history, evaluation, runs = ctx["out"] / "ckpt.pt", 0, [], None, []
    if ckpt_path.exists():
        state = torch.load(ckpt_path, map_location=device, weights_only=True)
        controlnet.load_state_dict(state["controlnet"])
        optimizer.load_state_dict(state["optimizer"])
        start, history = state["step"], state["history"]
        # Earlier runs' (first step, --steps): resuming with a larger --steps stretches the lr schedule from there.
        runs = state.get("runs", [{"from": 0, "steps": start}])
        demo_eval.log(f"[controlnet] resumed from {ckpt_path} at step {start}")
    ctx["runs"] = runs if runs and runs[-1]["steps"] == total else runs + [{"from": start, "steps": total}]
    scheduler = base_training.training_noise_scheduler()
    encoder = base_training.PromptEncoder(base.tokenizer, base.text_encoder, device)
    held_out = sd.held_out_scenes()

    def step_loss(step: int) -> torch.Tensor:
        rng, gen = step_generators(ctx["seed"], step)
        scenes = [sd.training_scene(rng, held_out) for _ in range(ctx["batch"])]
        seeds = [rng.randrange(2**31) for _ in range(ctx["batch"])]
        pixels, depth = base_training.render_scenes(scenes, seeds)
        prompts = [base_training.prompt_for(s, rng, empty_probability=ctx["p_empty"], p_position=ctx["p_position"])
                   for s in scenes]
        with torch.no_grad():
            posterior = base.vae.encode(pixels.to(device)).latent_dist
            noise = torch.randn(posterior.mean.shape, generator=gen).to(device)
            latents = (posterior.mean + posterior.std * noise) * base.scaling_factor
            hidden = encoder(prompts)
        hint = control_hints(ctx["control"], pixels, depth).to(device)
        return controlled_loss(base.unet, controlnet, scheduler, latents, hint, hidden, gen, ctx["timestep_power"])

    window, started = [], time.perf_counter()
    t_window = time.perf_counter()
    for step in range(start, total):
        for group in optimizer.param_groups:
            group["lr"] = base_training.lr_at(step, total, ctx["lr"], ctx["warmup"])
        loss = step_loss(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        window.append(loss.item())
        done = step + 1
        if done % ctx["log_every"] == 0 or done == total:
            seconds = (time.perf_counter() - t_window) / len(window)
            history.append({"step": done, "loss": sum(window) / len(window), "s_per_step": round(seconds, 3)})
            demo_eval.log(f"[controlnet] step {done}/{total} loss {history[-1]['loss']:.4f} {seconds:.3f} s/step")
            window, t_window = [], time.perf_counter()
        if done % ctx["ckpt_every"] == 0 or done == total:
            base_training.save_atomic({"step": done, "controlnet": controlnet.state_dict(),
                                       "optimizer": optimizer.state_dict(), "history": history,
                                       "runs": ctx["runs"]}, ckpt_path)
            export_file(ctx, controlnet, done, None)
            if ctx["eval_every"] and (done % ctx["eval_every"] == 0 or done == total):
                evaluation = evaluate(ctx, base, controlnet, done)
                export_file(ctx, controlnet, done, evaluation)
            t_window = time.perf_counter()
    elapsed = time.perf_counter() - started
    info = {"steps": total, "resumed_from": start, "seconds_this_run": round(elapsed, 1), "history": history,
            "eval": evaluation}
    (ctx["out"] / "train_state.json").write_text(json.dumps(info, indent=1))
    demo_eval.log(f"[controlnet] done: {total - start} steps in {elapsed / 60:.1f} min -> "
                  f"{ctx['out'] / (ctx['name'] + '.safetensors')}")
    return info


# ----------------------------------------------------------------------------- CLI


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, help="the base model file")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "build" / "demo-controlnet")
    parser.add_argument("--control", choices=CONTROLS, default="depth", help="what the ControlNet is steered by")
    parser.add_argument("--name", help="file name without .safetensors (default: graphengine-demo-CONTROL)")
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--p-position", type=float, default=0.9, help="share of captions without position words")
    parser.add_argument("--p-empty", type=float, default=0.3, help="share of empty captions")
    parser.add_argument("--timestep-power", type=float, default=3.0,
                        help="timesteps T(1 - u^p): 1 uniform, >1 favours high noise")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="auto", help="auto (cuda when present), cpu or cuda")
    parser.add_argument("--ckpt-every", type=int, default=50)
    parser.add_argument("--eval-every", type=int, default=400,
                        help="evaluate at these checkpoints and the last (0: never)")
    parser.add_argument("--log-every", type=int, default=25)
    parser.add_argument("--eval-count", type=int, default=24, help="held-out scenes per evaluation")
    parser.add_argument("--sample-steps", type=int, default=demo_eval.SAMPLE_STEPS,
                        help="sampling steps of the evaluations")
    return parser.parse_args(argv)


def main(argv=None) -> dict | None:
    args = parse_args(argv)
    base_training.quiet_libraries()
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    state_file = out / "train_state.json"
    if state_file.exists() and json.loads(state_file.read_text())["steps"] == args.steps:
        demo_eval.log(f"[controlnet] already trained for {args.steps} steps, skipping")
        return None
    ctx = {"out": out, "checkpoint": args.checkpoint.resolve(), "name": args.name or f"graphengine-demo-{args.control}",
           "device": device, "control": args.control, "steps": args.steps, "batch": args.batch,
           "p_position": args.p_position, "p_empty": args.p_empty, "timestep_power": args.timestep_power, "lr": args.lr,
           "warmup": args.warmup, "seed": args.seed, "ckpt_every": args.ckpt_every, "eval_every": args.eval_every,
           "sample_steps": args.sample_steps, "log_every": args.log_every, "base_images": None,
           "eval": demo_eval.eval_scenes(args.eval_count)}
    demo_eval.log(f"[controlnet] device {device}, threads {args.threads}, seed {args.seed}, steps {args.steps}, "
                  f"batch {args.batch}, lr {args.lr}, control {args.control}")
    return train(ctx)


if __name__ == "__main__":
    main()
