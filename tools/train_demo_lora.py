#!/usr/bin/env python
"""Train the bundled demo LoRA: teach the demo model shapes in the corners ("in the top left corner").

The bundled checkpoint's UNet, text encoder and VAE are loaded with the engine's loader and frozen; low-rank
adapters (tools/lora_adapters.py) wrap every Linear of the UNet's transformer blocks and of the text encoder's
layers. Each batch mixes corner scenes (tools/corner_concept.py; the evaluation set's combinations excluded)
with ordinary training scenes of the base model (the regularisation that keeps unrelated prompts intact),
rendered and VAE-encoded on the fly. The result is a kohya/sd-scripts LoRA file (fp16, with ss_* and
graphengine.* metadata) at OUT/NAME.safetensors.

Example:  python tools/train_demo_lora.py --out build/demo-lora --threads 2      (--steps 5 for a smoke run)
Training state (adapters, optimizer, step) is checkpointed to OUT/ckpt.pt; rerunning the same command
resumes, and a finished run is skipped. All randomness comes from (--seed, step), so a resumed run sees the
same data and noise as an uninterrupted one. Every checkpoint exports the file and evaluates it, merged at
strength 0, 0.5 and 1 (W + s * alpha / rank * up @ down), on the concept's evaluation prompts and on the base
model's held-out prompts (DPM++ 2M, 20 steps, CFG 5, as the base trainer): OUT/eval.jsonl, OUT/samples.png.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
for _path in (REPO_ROOT / "tools", REPO_ROOT):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import corner_concept as concept  # noqa: E402
import demo_eval  # noqa: E402
import lora_adapters as lora  # noqa: E402
import shapes_data as sd  # noqa: E402
import train_demo_model as base_training  # noqa: E402

DEFAULT_CHECKPOINT = REPO_ROOT / "models" / "checkpoints" / "graphengine-demo.safetensors"
DEFAULT_NAME = "graphengine-demo-corners"
LORA_SEED_SALT = 6 * 10_007  # keeps the LoRA's data streams apart from the base stages' (train_demo_model.step_seed)
EVAL_STRENGTHS = (0.0, 0.5, 1.0)
UNRELATED_STRENGTHS = (0.0, 1.0)


@dataclass
class BaseModel:
    unet: torch.nn.Module
    text_encoder: torch.nn.Module
    vae: torch.nn.Module
    tokenizer: object
    scaling_factor: float


def load_base_model(path: Path, device: torch.device) -> BaseModel:
    """The bundled checkpoint through the engine's single-file loader, fp32, frozen."""
    from nodes.models.single_file import load_checkpoint

    loaded = load_checkpoint(path, dtype=torch.float32)
    encoder = loaded.text_encoders[0]
    for module in (loaded.unet, encoder.model, loaded.vae):
        module.to(device).requires_grad_(False).eval()
    return BaseModel(loaded.unet, encoder.model, loaded.vae, encoder.tokenizer, loaded.latent_scale_factor)


def step_generators(seed: int, step: int) -> tuple[random.Random, torch.Generator]:
    value = (seed * 1_000_003 + LORA_SEED_SALT + step) % (2**62)
    return random.Random(value), torch.Generator().manual_seed(value)


def training_prompts(rng: random.Random, corner_scenes: list, ordinary_scenes: list) -> list[str]:
    """Corner captions always keep their position (the concept) and are never empty; ordinary ones as in base."""
    corner = [base_training.prompt_for(s, rng, empty_probability=0.0, p_position=0.0) for s in corner_scenes]
    return corner + [base_training.prompt_for(s, rng) for s in ordinary_scenes]


# ----------------------------------------------------------------------------- export and evaluation


def export_file(ctx: dict, adapters: dict, step: int, evaluation: dict | None) -> Path:
    record = {"concept": "shapes in the four corners", "trigger_words": list(concept.TRIGGER_WORDS),
              "trainer": "tools/train_demo_lora.py", "base_model": ctx["checkpoint"].name, "step": step,
              **{k: ctx[k] for k in ("steps", "runs", "seed", "rank", "alpha", "lr", "batch", "concept_fraction")}}
    metadata = {
        "ss_network_module": "networks.lora", "ss_network_dim": str(ctx["rank"]),
        "ss_network_alpha": str(float(ctx["alpha"])), "ss_base_model_version": "sd_v1", "ss_v2": "False",
        "ss_sd_model_name": ctx["checkpoint"].name, "ss_resolution": f"({sd.IMAGE_SIZE}, {sd.IMAGE_SIZE})",
        "ss_steps": str(step), "ss_seed": str(ctx["seed"]), "ss_learning_rate": str(ctx["lr"]),
        "ss_output_name": ctx["name"], "ss_training_comment": "graphengine demo LoRA: " + ", ".join(
            concept.TRIGGER_WORDS),
        "graphengine.lora_training": json.dumps(record),
    }
    if evaluation is not None:
        metadata["graphengine.lora_eval"] = json.dumps(evaluation)
    path = ctx["out"] / f"{ctx['name']}.safetensors"
    tmp = path.with_suffix(".tmp")
    save_file(lora.kohya_state_dict(adapters, torch.float16), tmp, metadata=metadata)
    os.replace(tmp, path)
    return path


def merged_pipeline(base: BaseModel, tensors: dict, strength: float):
    """A text-to-image pipeline of copies of the base UNet and text encoder with the LoRA merged at `strength`."""
    unet, text_encoder = copy.deepcopy(base.unet), copy.deepcopy(base.text_encoder)
    lora.merge_kohya({lora.UNET_PREFIX: unet, lora.TEXT_ENCODER_PREFIX: text_encoder}, tensors, strength)
    return demo_eval.text_to_image_pipeline(base.vae, text_encoder, base.tokenizer, unet)


def _rounded(summary: dict) -> dict:
    return {k: round(v, 4) for k, v in summary.items() if isinstance(v, float)} | {"count": summary["count"]}


@torch.no_grad()
def evaluate(ctx: dict, base: BaseModel, tensors: dict, step: int) -> dict:
    """Concept prompts at every strength, the base's held-out prompts without and with the LoRA at 1.
    Strength 0 is the base model: measured once per run and reused."""
    concept_scenes, unrelated_scenes = ctx["concept_eval"], ctx["unrelated_eval"]
    images, result = {}, {"step": step, "concept": {}, "unrelated": {}}
    for strength in sorted(set(EVAL_STRENGTHS) | set(UNRELATED_STRENGTHS)):
        cached = ctx["base_images"] if strength == 0.0 else None
        if cached is None:
            pipeline = merged_pipeline(base, tensors, strength)
            prompts = [sd.caption(s) for s in concept_scenes + unrelated_scenes]
            cached = demo_eval.generate_images(pipeline, prompts, ctx["sample_steps"])
            if strength == 0.0:
                ctx["base_images"] = cached
        concept_images, unrelated_images = cached[: len(concept_scenes)], cached[len(concept_scenes):]
        images[strength] = concept_images
        result["concept"][str(strength)] = _rounded(sd.summarize(
            [concept.score_concept(i, s) for i, s in zip(concept_images, concept_scenes)]))
        if strength in UNRELATED_STRENGTHS:
            result["unrelated"][str(strength)] = _rounded(sd.summarize(
                [sd.score(i, s) for i, s in zip(unrelated_images, unrelated_scenes)]))
    with open(ctx["out"] / "eval.jsonl", "a") as handle:
        handle.write(json.dumps(result) + "\n")
    shown = " ".join(f"{s}: {v['all_ok']:.2f}" for s, v in result["concept"].items())
    unrelated = " ".join(f"{s}: {v['all_ok']:.2f}" for s, v in result["unrelated"].items())
    demo_eval.log(f"[lora] eval at step {step}: concept all_ok by strength {shown}; unrelated all_ok {unrelated}")
    columns = [demo_eval.reference_images(concept_scenes)] + [images[s] for s in EVAL_STRENGTHS]
    demo_eval.save_grid(columns, ctx["out"] / "samples.png", examples=len(concept_scenes), per_block=7)
    return result


# ----------------------------------------------------------------------------- training


def restore(adapters: dict, tensors: dict) -> None:
    with torch.no_grad():
        for prefix, by_path in adapters.items():
            for path, adapter in by_path.items():
                name = lora.kohya_name(prefix, path)
                adapter.down.weight.copy_(tensors[f"{name}.lora_down.weight"])
                adapter.up.weight.copy_(tensors[f"{name}.lora_up.weight"])


def train(ctx: dict) -> dict:
    device, total = ctx["device"], ctx["steps"]
    base = load_base_model(ctx["checkpoint"], device)
    unet, text_encoder = copy.deepcopy(base.unet), copy.deepcopy(base.text_encoder)
    torch.manual_seed(ctx["seed"])
    adapters = {lora.UNET_PREFIX: lora.add_adapters(unet, lora.UNET_TARGETS, ctx["rank"], ctx["alpha"]),
                lora.TEXT_ENCODER_PREFIX: lora.add_adapters(text_encoder, lora.TEXT_ENCODER_TARGETS, ctx["rank"],
                                                            ctx["alpha"])}
    parameters = [p for by_path in adapters.values() for p in lora.adapter_parameters(by_path)]
    for p in parameters:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(parameters, lr=ctx["lr"], weight_decay=0.0)
    ckpt_path, start, history, evaluation, runs = ctx["out"] / "ckpt.pt", 0, [], None, []
    if ckpt_path.exists():
        state = torch.load(ckpt_path, map_location=device, weights_only=True)
        restore(adapters, state["adapters"])
        optimizer.load_state_dict(state["optimizer"])
        start, history = state["step"], state["history"]
        # Earlier runs' (first step, --steps): resuming with a larger --steps stretches the lr schedule from there.
        runs = state.get("runs", [{"from": 0, "steps": start}])
        demo_eval.log(f"[lora] resumed from {ckpt_path} at step {start}")
    ctx["runs"] = runs if runs and runs[-1]["steps"] == total else runs + [{"from": start, "steps": total}]
    scheduler = base_training.training_noise_scheduler()
    encoder = base_training.PromptEncoder(base.tokenizer, text_encoder, device)
    corner_count = round(ctx["batch"] * ctx["concept_fraction"])
    base_held_out = sd.held_out_scenes()

    def step_loss(step: int) -> torch.Tensor:
        rng, gen = step_generators(ctx["seed"], step)
        corner = [concept.training_corner_scene(rng, ctx["concept_held_out"]) for _ in range(corner_count)]
        ordinary = [sd.training_scene(rng, base_held_out) for _ in range(ctx["batch"] - corner_count)]
        seeds = [rng.randrange(2**31) for _ in range(ctx["batch"])]
        pixels, _ = base_training.render_scenes(corner + ordinary, seeds)
        with torch.no_grad():
            posterior = base.vae.encode(pixels.to(device)).latent_dist
            noise = torch.randn(posterior.mean.shape, generator=gen).to(device)
            latents = (posterior.mean + posterior.std * noise) * base.scaling_factor
        hidden = encoder(training_prompts(rng, corner, ordinary))
        return base_training.denoising_loss(unet, scheduler, latents, None, hidden, gen)

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
            demo_eval.log(f"[lora] step {done}/{total} loss {history[-1]['loss']:.4f} {seconds:.3f} s/step")
            window, t_window = [], time.perf_counter()
        if done % ctx["ckpt_every"] == 0 or done == total:
            base_training.save_atomic({"step": done, "adapters": lora.kohya_state_dict(adapters, torch.float32),
                                       "optimizer": optimizer.state_dict(), "history": history,
                                       "runs": ctx["runs"]}, ckpt_path)
            path = export_file(ctx, adapters, done, None)
            if ctx["eval_every"] and (done % ctx["eval_every"] == 0 or done == total):
                evaluation = evaluate(ctx, base, load_file(path), done)
                export_file(ctx, adapters, done, evaluation)
            t_window = time.perf_counter()
    elapsed = time.perf_counter() - started
    info = {"steps": total, "resumed_from": start, "seconds_this_run": round(elapsed, 1), "history": history,
            "eval": evaluation}
    (ctx["out"] / "train_state.json").write_text(json.dumps(info, indent=1))
    demo_eval.log(f"[lora] done: {total - start} steps in {elapsed / 60:.1f} min -> "
                  f"{ctx['out'] / (ctx['name'] + '.safetensors')}")
    return info


# ----------------------------------------------------------------------------- CLI


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, help="the base model file")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "build" / "demo-lora")
    parser.add_argument("--name", default=DEFAULT_NAME, help="file name (without .safetensors) of the LoRA")
    parser.add_argument("--steps", type=int, default=900)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--concept-fraction", type=float, default=0.5, help="share of corner scenes per batch")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=4.0)
    parser.add_argument("--lr", type=float, default=1.5e-3)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="auto", help="auto (cuda when present), cpu or cuda")
    parser.add_argument("--ckpt-every", type=int, default=50)
    parser.add_argument("--eval-every", type=int, default=150,
                        help="evaluate at these checkpoints and the last (0: never)")
    parser.add_argument("--log-every", type=int, default=25)
    parser.add_argument("--eval-concept", type=int, default=len(concept.concept_eval_scenes()),
                        help="concept prompts per evaluation (spread over the set)")
    parser.add_argument("--eval-unrelated", type=int, default=56, help="base held-out prompts per evaluation")
    parser.add_argument("--sample-steps", type=int, default=demo_eval.SAMPLE_STEPS,
                        help="sampling steps of the evaluations")
    return parser.parse_args(argv)


def _spread(scenes: list, count: int) -> list:
    if count >= len(scenes):
        return scenes
    return [scenes[int(i * len(scenes) / count)] for i in range(count)]


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
        demo_eval.log(f"[lora] already trained for {args.steps} steps, skipping")
        return None
    ctx = {"out": out, "checkpoint": args.checkpoint.resolve(), "name": args.name, "device": device,
           "steps": args.steps, "batch": args.batch, "concept_fraction": args.concept_fraction, "rank": args.rank,
           "alpha": args.alpha, "lr": args.lr, "warmup": args.warmup, "seed": args.seed,
           "ckpt_every": args.ckpt_every, "eval_every": args.eval_every, "sample_steps": args.sample_steps,
           "log_every": args.log_every, "base_images": None,
           "concept_held_out": concept.concept_eval_scenes(),
           "unrelated_eval": demo_eval.eval_scenes(args.eval_unrelated)}
    ctx["concept_eval"] = _spread(ctx["concept_held_out"], args.eval_concept)
    demo_eval.log(f"[lora] device {device}, threads {args.threads}, seed {args.seed}, steps {args.steps}, "
                  f"rank {args.rank}, alpha {args.alpha}, batch {args.batch}")
    return train(ctx)


if __name__ == "__main__":
    main()
