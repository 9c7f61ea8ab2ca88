#!/usr/bin/env python
"""Train the bundled demo model: a tiny real latent-diffusion text-to-image model on coloured shapes.

Stages (each resumable; each writes a diffusers folder with save_pretrained into OUT/<stage>/):
  vae      AutoencoderKL, 64x64x3 -> 8x8x4, scaling_factor = 1/std of sampled latents
  decoder  the VAE decoder fine-tuned alone (encoder frozen, so the latent space and every UNet trained on it
           stay valid) with object pixels weighted up: sharper outlines, so shapes survive decoding. Its result
           replaces OUT/vae and the vae/ of any stage folder already trained.
  base     UNet2DConditionModel (4 ch) + CLIPTextModel, epsilon, SD scaled-linear schedule, 10% empty prompts,
           attribute words dropped at random, two-object captions naming their objects in either order
  inpaint  9-ch UNet fine-tuned from base: input [noisy latent 4, mask 1, masked-image latent 4]
  depth    5-ch UNet fine-tuned from base: input [noisy latent 4, depth 1 (latent size, [-1, 1])]

Conditioning conventions (those of diffusers' SD inpaint / depth2img pipelines, checked in their source):
  inpaint  mask 1 = repaint; masked image = image with the masked area set to 0 in [-1, 1] (0.5 gray)
           before VAE encoding; its latent is multiplied by scaling_factor. The mask is resized to latent
           size with nearest, bilinear or area at random during training, so any engine's resize works.
  depth    renderer "nearness" map (1 = near), bicubic-resized to latent size, then min-max normalized
           per image to [-1, 1]; 70% of its captions lose their position words, so the depth map has to
           place the objects. The inpaint/depth variants keep the base text encoder and VAE frozen.
  Load the depth folder with StableDiffusionDepth2ImgPipeline.from_pretrained(path,
  depth_estimator=None, feature_extractor=None): no depth estimator ships with the demo model.

Example:  python tools/train_demo_model.py --out build/demo --threads 2   (the default step counts; --steps 5 for a smoke run)
Training state (weights, EMA, optimizer, step) is checkpointed to OUT/ckpt/<stage>.pt; rerunning the
same command resumes. Every checkpoint also exports the EMA weights, so an interrupted stage still
leaves a usable model. All randomness is derived from (--seed, stage, step), so a resumed run sees
the same data and noise as an uninterrupted one.
"""

from __future__ import annotations

import os

# One thread by default and passive OpenMP waiting: the machine is shared (set before torch loads).
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import argparse  # noqa: E402
import copy  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from tqdm import tqdm  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import demo_eval  # noqa: E402
import shapes_data as sd  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
TOKENIZER_DIR = REPO_ROOT / "nodes" / "configs" / "tokenizer"
STAGES = ("vae", "decoder", "base", "inpaint", "depth")
STAGE_IDS = {"vae": 1, "base": 2, "inpaint": 3, "depth": 4, "decoder": 5}  # seeds data per stage: never renumber
DEFAULT_STEPS = {"vae": 1800, "decoder": 1500, "base": 6000, "inpaint": 450, "depth": 800}
DOWNSTREAM_STAGES = ("base", "inpaint", "depth")
CACHE_SCENES = 16384
LATENT_SCALE = 8
OBJECT_LOSS_WEIGHT = 3.0  # extra VAE reconstruction weight on object pixels
DEPTH_POSITION_DROP = 0.7  # depth stage: fraction of captions without position words
DECODER_OBJECT_WEIGHT = 8.0  # decoder stage: object pixels weigh more still (their outlines carry the shape)


# ----------------------------------------------------------------------------- model builders


def build_vae(scaling_factor: float = 1.0):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=sd.IMAGE_SIZE,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(16, 32, 64, 64), layers_per_block=1, norm_num_groups=16,
        scaling_factor=scaling_factor,
    )


def build_text_encoder():
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=49408, hidden_size=128, intermediate_size=512, num_hidden_layers=3, num_attention_heads=4,
        max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=128,
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
    )
    return CLIPTextModel(config)


def build_unet(in_channels: int = 4):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=sd.IMAGE_SIZE // LATENT_SCALE, in_channels=in_channels, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(64, 128, 128), layers_per_block=1, cross_attention_dim=128, attention_head_dim=4,
    )


def widen_unet_input(base_unet, in_channels: int):
    """Copy of base_unet taking extra input channels; the new conv_in channels start at zero."""
    unet = build_unet(in_channels)
    state = base_unet.state_dict()
    weight = torch.zeros_like(unet.conv_in.weight)
    weight[:, : base_unet.config.in_channels] = state["conv_in.weight"]
    state["conv_in.weight"] = weight
    unet.load_state_dict(state)
    return unet


def training_noise_scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                         beta_schedule="scaled_linear", prediction_type="epsilon", clip_sample=False)


def load_tokenizer():
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR))


# ----------------------------------------------------------------------------- seeding and data


def step_seed(seed: int, stage: str, step: int) -> int:
    return (seed * 1_000_003 + STAGE_IDS[stage] * 10_007 + step) % (2**62)


def step_generators(seed: int, stage: str, step: int) -> tuple[random.Random, torch.Generator]:
    value = step_seed(seed, stage, step)
    return random.Random(value), torch.Generator().manual_seed(value)


def pixels_from_images(images) -> torch.Tensor:
    """List of PIL images -> float tensor [B, 3, H, W] in [-1, 1]."""
    array = np.stack([np.asarray(image, dtype=np.float32) for image in images]) / 127.5 - 1.0
    return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()


def render_batch(rng: random.Random, count: int, held_out: list) -> tuple[list, list, torch.Tensor, np.ndarray]:
    """(scenes, render seeds, pixels [-1, 1], depth [B, 64, 64]) of freshly sampled training scenes."""
    scenes = [sd.training_scene(rng, held_out) for _ in range(count)]
    seeds = [rng.randrange(2**31) for _ in range(count)]
    pixels, depths = render_scenes(scenes, seeds)
    return scenes, seeds, pixels, depths


def render_scenes(scenes: list, seeds: list) -> tuple[torch.Tensor, np.ndarray]:
    rendered = [sd.render(scene, seed) for scene, seed in zip(scenes, seeds)]
    return pixels_from_images([image for image, _ in rendered]), np.stack([depth for _, depth in rendered])


def depth_condition(depth: torch.Tensor) -> torch.Tensor:
    """[B, H, W] nearness map -> [B, 1, H/8, W/8] in [-1, 1], exactly as diffusers' depth2img prepares it."""
    height, width = depth.shape[-2:]
    small = F.interpolate(depth[:, None].float(), size=(height // LATENT_SCALE, width // LATENT_SCALE),
                          mode="bicubic", align_corners=False)
    low, high = small.amin(dim=(1, 2, 3), keepdim=True), small.amax(dim=(1, 2, 3), keepdim=True)
    return 2.0 * (small - low) / (high - low).clamp_min(1e-6) - 1.0


def inpaint_mask(rng: random.Random, placed: list) -> np.ndarray:
    """A random [64, 64] training mask (1 = repaint): full, around an object, random box, or half image."""
    size, mask = sd.IMAGE_SIZE, np.zeros((sd.IMAGE_SIZE, sd.IMAGE_SIZE), dtype=np.float32)
    kind = rng.random()
    if kind < 0.25:
        mask[:] = 1.0
    elif kind < 0.6:
        obj = rng.choice(placed)
        half = obj.radius * 1.1 + rng.uniform(1.0, 8.0)
        x0, y0 = int(max(0, obj.center[0] - half)), int(max(0, obj.center[1] - half))
        mask[y0 : int(obj.center[1] + half) + 1, x0 : int(obj.center[0] + half) + 1] = 1.0
    elif kind < 0.85:
        w, h = rng.randint(12, 48), rng.randint(12, 48)
        x0, y0 = rng.randint(0, size - w), rng.randint(0, size - h)
        mask[y0 : y0 + h, x0 : x0 + w] = 1.0
    else:
        side = rng.choice(("left", "right", "top", "bottom"))
        half = size // 2
        region = {"left": np.s_[:, :half], "right": np.s_[:, half:], "top": np.s_[:half], "bottom": np.s_[half:]}
        mask[region[side]] = 1.0
    return mask


def latent_mask(mask: torch.Tensor, mode: str) -> torch.Tensor:
    """[B, 1, H, W] pixel mask -> latent size. Training mixes modes so any engine's resize works."""
    size = (mask.shape[-2] // LATENT_SCALE, mask.shape[-1] // LATENT_SCALE)
    if mode == "bilinear":
        return F.interpolate(mask, size=size, mode="bilinear", align_corners=False)
    return F.interpolate(mask, size=size, mode=mode)


def prompt_for(scene, rng: random.Random, empty_probability: float = 0.1, p_position: float = 0.2) -> str:
    """Training caption: attribute dropout, objects named in either order, and an empty prompt 10% of the time
    (for CFG). Scenes list the left/top object first; without the shuffle the model learns that the first-named
    object goes left or up whatever the position words say."""
    if rng.random() < empty_probability:
        return ""
    if len(scene.objects) > 1 and rng.random() < 0.5:
        scene = sd.SceneSpec(tuple(reversed(scene.objects)), scene.background)
    return sd.caption(sd.drop_attributes(scene, rng, p_position=p_position))


class PromptEncoder:
    """Tokenizes with the real CLIP BPE (memoized per caption) and runs the text encoder."""

    def __init__(self, tokenizer, text_encoder, device):
        self.tokenizer, self.text_encoder, self.device, self.ids = tokenizer, text_encoder, device, {}

    def token_ids(self, prompts: list[str]) -> torch.Tensor:
        missing = [p for p in dict.fromkeys(prompts) if p not in self.ids]
        if missing:
            ids = self.tokenizer(missing, padding="max_length", max_length=77, truncation=True,
                                 return_tensors="pt").input_ids
            self.ids.update(zip(missing, ids))
        return torch.stack([self.ids[p] for p in prompts]).to(self.device)

    def __call__(self, prompts: list[str]) -> torch.Tensor:
        return self.text_encoder(self.token_ids(prompts))[0]


def min_snr_weights(scheduler, timesteps: torch.Tensor, gamma: float = 5.0) -> torch.Tensor:
    alphas = scheduler.alphas_cumprod.to(timesteps.device)[timesteps]
    snr = alphas / (1 - alphas)
    return torch.clamp(snr, max=gamma) / snr


def denoising_loss(unet, scheduler, latents, extra_channels, hidden, gen) -> torch.Tensor:
    noise = torch.randn(latents.shape, generator=gen).to(latents.device)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), generator=gen)
    timesteps = timesteps.to(latents.device)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    model_input = noisy if extra_channels is None else torch.cat([noisy, extra_channels], dim=1)
    prediction = unet(model_input, timesteps, encoder_hidden_states=hidden).sample
    per_sample = F.mse_loss(prediction.float(), noise.float(), reduction="none").mean(dim=(1, 2, 3))
    return (per_sample * min_snr_weights(scheduler, timesteps)).mean()


# ----------------------------------------------------------------------------- training loop


def lr_at(step: int, total: int, peak: float, warmup: int, final_fraction: float = 0.1) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


@torch.no_grad()
def ema_update(ema_modules: dict, modules: dict, decay: float) -> None:
    for name, module in modules.items():
        ema_params = list(ema_modules[name].parameters())
        torch._foreach_lerp_(ema_params, [p.detach() for p in module.parameters()], 1.0 - decay)


def save_atomic(obj, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def run_stage(ctx: dict, stage: str, modules: dict, param_groups: list, step_loss, export, plan: dict) -> None:
    """Generic loop: AdamW + warmup/cosine, grad clip 1, EMA, checkpoints with export, loss/timing log."""
    total, ckpt_path = plan["steps"], ctx["out"] / "ckpt" / f"{stage}.pt"
    ema_modules = {name: copy.deepcopy(m).requires_grad_(False) for name, m in modules.items()}
    optimizer = torch.optim.AdamW(param_groups, lr=plan["lr"], weight_decay=plan.get("weight_decay", 0.01))
    start, history = 0, []
    if ckpt_path.exists():
        state = torch.load(ckpt_path, map_location=ctx["device"], weights_only=True)
        for name in modules:
            modules[name].load_state_dict(state["modules"][name])
            ema_modules[name].load_state_dict(state["ema"][name])
        optimizer.load_state_dict(state["optimizer"])
        start, history = state["step"], state["history"]
        log(ctx, f"[{stage}] resumed from {ckpt_path} at step {start}")
    trainable = [p for group in param_groups for p in group["params"]]
    window, timed, t_window, cpu_window = [], 0, time.perf_counter(), time.process_time()
    t_stage = time.perf_counter()
    if start >= total:  # finished but interrupted before the final export
        export(ema_modules, start)
    bar = tqdm(total=total, initial=start, desc=stage, mininterval=20, ascii=True, file=sys.stderr)
    for step in range(start, total):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, total, plan["lr"], plan["warmup"])
        loss = step_loss(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        ema_update(ema_modules, modules, min(plan["ema"], (1 + step) / (10 + step)))
        window.append(loss.item())
        timed += 1
        bar.update(1)
        done = step + 1
        if done % ctx["log_every"] == 0 or done == total:
            seconds = (time.perf_counter() - t_window) / max(1, timed)
            cpu_seconds = (time.process_time() - cpu_window) / max(1, timed)
            history.append({"step": done, "loss": sum(window) / len(window), "s_per_step": round(seconds, 3),
                            "cpu_s_per_step": round(cpu_seconds, 3)})
            log(ctx, f"[{stage}] step {done}/{total} loss {history[-1]['loss']:.4f} "
                     f"lr {optimizer.param_groups[0]['lr']:.2e} {seconds:.3f} s/step (cpu {cpu_seconds:.3f})")
            window, timed, t_window, cpu_window = [], 0, time.perf_counter(), time.process_time()
        if done % ctx["ckpt_every"] == 0 or done == total:
            modules_state = {name: m.state_dict() for name, m in modules.items()}
            ema_state = {name: m.state_dict() for name, m in ema_modules.items()}
            save_atomic({"step": done, "total": total, "modules": modules_state, "ema": ema_state,
                         "optimizer": optimizer.state_dict(), "history": history}, ckpt_path)
            t_export = time.perf_counter()
            export(ema_modules, done)
            log(ctx, f"[{stage}] checkpoint at step {done} (export+eval {time.perf_counter() - t_export:.1f} s)")
            timed, t_window, cpu_window = 0, time.perf_counter(), time.process_time()  # timing excludes exports
    bar.close()
    elapsed = time.perf_counter() - t_stage
    info = {"stage": stage, "steps": total, "resumed_from": start, "seconds_this_run": round(elapsed, 1),
            "final_loss": history[-1]["loss"] if history else None, "history": history}
    (ctx["out"] / stage / "train_state.json").write_text(json.dumps(info, indent=1))
    log(ctx, f"[{stage}] done: {total - start} steps in {elapsed / 60:.1f} min")


def log(ctx: dict, message: str) -> None:
    demo_eval.log(message)


def stage_is_done(ctx: dict, stage: str, steps: int) -> bool:
    state_file = ctx["out"] / stage / "train_state.json"
    return state_file.exists() and json.loads(state_file.read_text())["steps"] == steps


# ----------------------------------------------------------------------------- stages


def measure_scaling_factor(vae, ctx: dict, count: int = 512) -> float:
    """1 / std of posterior samples of training images, as SD's scaling_factor is defined."""
    rng, gen = step_generators(ctx["seed"], "vae", 10**9)
    with torch.no_grad():
        _, _, pixels, _ = render_batch(rng, count, ctx["held_out"])
        posterior = vae.encode(pixels.to(ctx["device"])).latent_dist
        latents = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=gen).to(ctx["device"])
    return float(1.0 / latents.float().std())


def train_vae(ctx: dict, steps: int) -> None:
    torch.manual_seed(ctx["seed"])
    vae = build_vae().to(ctx["device"])
    device = ctx["device"]

    def step_loss(step):
        rng, gen = step_generators(ctx["seed"], "vae", step)
        _, _, pixels, depth = render_batch(rng, ctx["vae_batch"], ctx["held_out"])
        pixels = pixels.to(device)
        # Objects cover ~10% of the pixels; weighting them up keeps small objects' colours from being
        # averaged away (with a plain loss the background dominates and small shapes come out off-colour).
        weights = 1.0 + OBJECT_LOSS_WEIGHT * torch.from_numpy(depth > 0).float()[:, None].to(device)
        # bf16 autocast: ~1.6x faster on this CPU (avx512_bf16); the loss is computed in fp32.
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=ctx["vae_bf16"]):
            posterior = vae.encode(pixels).latent_dist
            noise = torch.randn(posterior.mean.shape, generator=gen).to(device)
            recon = vae.decode(posterior.mean + posterior.std * noise).sample.float()
        diff = recon - pixels
        edge = (recon.diff(dim=-1) - pixels.diff(dim=-1)).abs().mean() + (recon.diff(dim=-2) - pixels.diff(dim=-2)).abs().mean()
        kl = posterior.kl().mean() / posterior.mean[0].numel()
        return (weights * diff.abs()).mean() + (weights * diff.pow(2)).mean() + 0.5 * edge + 1e-4 * kl

    def export(ema, done):
        model = ema["vae"]
        model.register_to_config(scaling_factor=measure_scaling_factor(model, ctx))
        model.save_pretrained(ctx["out"] / "vae")
        demo_eval.evaluate_vae(model, ctx, done)

    plan = {"steps": steps, "lr": 1e-3, "warmup": 100, "ema": 0.998, "weight_decay": 0.0}
    run_stage(ctx, "vae", {"vae": vae}, [{"params": list(vae.parameters())}], step_loss, export, plan)


def train_decoder(ctx: dict, steps: int) -> None:
    """Sharpen the VAE decoder with the encoder frozen: latents (and every UNet trained on them) stay valid."""
    vae = load_vae(ctx)
    device = ctx["device"]
    decoder = torch.nn.ModuleDict({"decoder": vae.decoder, "post_quant_conv": vae.post_quant_conv})
    decoder.requires_grad_(True).train()

    def step_loss(step):
        rng, gen = step_generators(ctx["seed"], "decoder", step)
        _, _, pixels, depth = render_batch(rng, ctx["vae_batch"], ctx["held_out"])
        pixels = pixels.to(device)
        weights = 1.0 + DECODER_OBJECT_WEIGHT * torch.from_numpy(depth > 0).float()[:, None].to(device)
        with torch.no_grad():
            posterior = vae.encode(pixels).latent_dist
            latents = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=gen).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=ctx["vae_bf16"]):
            recon = vae.decode(latents).sample.float()
        diff = recon - pixels
        edge = ((weights[..., 1:] * (recon.diff(dim=-1) - pixels.diff(dim=-1)).abs()).mean()
                + (weights[..., 1:, :] * (recon.diff(dim=-2) - pixels.diff(dim=-2)).abs()).mean())
        return (weights * diff.abs()).mean() + (weights * diff.pow(2)).mean() + edge

    def export(ema, done):
        model = copy.deepcopy(vae)
        model.decoder.load_state_dict(ema["decoder"]["decoder"].state_dict())
        model.post_quant_conv.load_state_dict(ema["decoder"]["post_quant_conv"].state_dict())
        model.eval()
        demo_eval.evaluate_vae(model, ctx, done, stage="decoder")
        if done == steps:  # the encoder is unchanged, so trained downstream stages take the new decoder as is
            for folder in [ctx["out"] / "vae"] + [ctx["out"] / s / "vae" for s in DOWNSTREAM_STAGES]:
                if folder.is_dir():
                    model.save_pretrained(folder)

    plan = {"steps": steps, "lr": 3e-4, "warmup": 50, "ema": 0.998, "weight_decay": 0.0}
    run_stage(ctx, "decoder", {"decoder": decoder}, [{"params": list(decoder.parameters())}], step_loss, export, plan)


def encoder_fingerprint(vae) -> float:
    """Identifies the latent space: the encoder side only, so a decoder fine-tune keeps cached latents."""
    return float(sum(p.double().sum() for module in (vae.encoder, vae.quant_conv) for p in module.parameters()))


def load_vae(ctx: dict):
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(ctx["out"] / "vae").to(ctx["device"]).requires_grad_(False).eval()


def scene_from_json(data: dict) -> "sd.SceneSpec":
    return sd.SceneSpec(tuple(sd.ShapeSpec(**o) for o in data["objects"]), data.get("background"))


def build_latent_cache(ctx: dict, vae) -> dict:
    """Encode the training scenes once: posterior mean/std (fp16), depth maps, scene specs, render seeds."""
    path = ctx["out"] / "cache" / "latents.pt"
    fingerprint = encoder_fingerprint(vae)
    count = ctx["cache_scenes"]
    if path.exists():
        cache = torch.load(path, weights_only=True)  # tensors and plain values only: scenes are stored as JSON
        if cache.get("vae_fingerprint") == fingerprint and cache["mean"].shape[0] == count and "seeds" in cache:
            cache["scenes"] = [scene_from_json(s) for s in json.loads(cache["scenes"])]
            return cache
    path.parent.mkdir(parents=True, exist_ok=True)
    started, means, stds, depths, scenes, seeds = time.perf_counter(), [], [], [], [], []
    batch = 256
    for index in tqdm(range(0, count, batch), desc="encode cache", mininterval=20, ascii=True, file=sys.stderr):
        rng, _ = step_generators(ctx["seed"], "base", 10**8 + index)
        batch_scenes, batch_seeds, pixels, depth = render_batch(rng, min(batch, count - index), ctx["held_out"])
        with torch.no_grad():
            posterior = vae.encode(pixels.to(ctx["device"])).latent_dist
        means.append(posterior.mean.half().cpu())
        stds.append(posterior.std.half().cpu())
        depths.append(torch.from_numpy(depth).half())
        scenes.extend(batch_scenes)
        seeds.extend(batch_seeds)
    cache = {"vae_fingerprint": fingerprint, "mean": torch.cat(means), "std": torch.cat(stds),
             "depth": torch.cat(depths), "scenes": json.dumps([dataclasses.asdict(s) for s in scenes]),
             "seeds": seeds}
    save_atomic(cache, path)
    cache["scenes"] = scenes
    log(ctx, f"[cache] encoded {count} scenes in {time.perf_counter() - started:.0f} s")
    return cache


def cached_batch(ctx: dict, cache: dict, rng: random.Random, gen: torch.Generator, size: int):
    """(latents x scaling, indices) of `size` random cached scenes, resampling the posterior."""
    index = torch.tensor([rng.randrange(cache["mean"].shape[0]) for _ in range(size)])
    mean, std = cache["mean"][index].float(), cache["std"][index].float()
    latents = (mean + std * torch.randn(mean.shape, generator=gen)) * ctx["scaling_factor"]
    return latents.to(ctx["device"]), index.tolist()


def train_base(ctx: dict, steps: int) -> None:
    vae = load_vae(ctx)
    ctx["scaling_factor"] = vae.config.scaling_factor
    cache = build_latent_cache(ctx, vae)
    torch.manual_seed(ctx["seed"] + 1)
    unet, text_encoder = build_unet(4).to(ctx["device"]), build_text_encoder().to(ctx["device"])
    scheduler, tokenizer = training_noise_scheduler(), load_tokenizer()
    encoder = PromptEncoder(tokenizer, text_encoder, ctx["device"])
    # The text encoder stays at its random init for the first part: the prototype learned positions
    # faster with a frozen encoder and backgrounds faster with joint training.
    frozen_until = int(steps * ctx["text_encoder_frozen_fraction"])

    def step_loss(step):
        rng, gen = step_generators(ctx["seed"], "base", step)
        latents, index = cached_batch(ctx, cache, rng, gen, ctx["unet_batch"])
        prompts = [prompt_for(cache["scenes"][i], rng) for i in index]
        if step < frozen_until:
            with torch.no_grad():
                hidden = encoder(prompts)
        else:
            hidden = encoder(prompts)
        return denoising_loss(unet, scheduler, latents, None, hidden, gen)

    def export(ema, done):
        pipeline = demo_eval.text_to_image_pipeline(vae, ema["text_encoder"], tokenizer, ema["unet"])
        demo_eval.save_pipeline(pipeline, ctx["out"] / "base")
        demo_eval.evaluate_text_to_image(pipeline, ctx, "base", done)

    groups = [{"params": list(unet.parameters())}, {"params": list(text_encoder.parameters())}]
    plan = {"steps": steps, "lr": 5e-4, "warmup": 200, "ema": 0.999}
    run_stage(ctx, "base", {"unet": unet, "text_encoder": text_encoder}, groups, step_loss, export, plan)


def load_base(ctx: dict):
    from diffusers import StableDiffusionPipeline

    pipeline = StableDiffusionPipeline.from_pretrained(ctx["out"] / "base", safety_checker=None,
                                                       requires_safety_checker=False, dtype=torch.float32)
    for module in (pipeline.vae, pipeline.text_encoder, pipeline.unet):
        module.to(ctx["device"]).requires_grad_(False).eval()
    ctx["scaling_factor"] = pipeline.vae.config.scaling_factor
    return pipeline


def train_inpaint(ctx: dict, steps: int) -> None:
    base = load_base(ctx)
    vae, device, scale = base.vae, ctx["device"], base.vae.config.scaling_factor
    cache = build_latent_cache(ctx, vae)
    unet = widen_unet_input(base.unet, 9).to(device).requires_grad_(True).train()
    scheduler, encoder = training_noise_scheduler(), PromptEncoder(base.tokenizer, base.text_encoder, device)

    def step_loss(step):
        rng, gen = step_generators(ctx["seed"], "inpaint", step)
        latents, index = cached_batch(ctx, cache, rng, gen, ctx["unet_batch"])
        scenes, seeds = [cache["scenes"][i] for i in index], [cache["seeds"][i] for i in index]
        pixels, _ = render_scenes(scenes, seeds)
        masks = [inpaint_mask(rng, sd.layout(scene, seed)) for scene, seed in zip(scenes, seeds)]
        masks = torch.from_numpy(np.stack(masks))[:, None]
        masked = pixels * (masks < 0.5)  # masked area -> 0 in [-1, 1], i.e. 0.5 gray (SD inpainting convention)
        with torch.no_grad():
            posterior = vae.encode(masked.to(device)).latent_dist
            noise = torch.randn(posterior.mean.shape, generator=gen).to(device)
            masked_latents = (posterior.mean + posterior.std * noise) * scale
            hidden = encoder([prompt_for(scene, rng) for scene in scenes])
        mask_small = latent_mask(masks, rng.choice(("nearest", "bilinear", "area"))).to(device)
        return denoising_loss(unet, scheduler, latents, torch.cat([mask_small, masked_latents], 1), hidden, gen)

    def export(ema, done):
        pipeline = demo_eval.inpaint_pipeline(base, ema["unet"])
        demo_eval.save_pipeline(pipeline, ctx["out"] / "inpaint")
        demo_eval.evaluate_inpaint(pipeline, ctx, done)

    plan = {"steps": steps, "lr": 3e-4, "warmup": 20, "ema": 0.995}
    run_stage(ctx, "inpaint", {"unet": unet}, [{"params": list(unet.parameters())}], step_loss, export, plan)


def train_depth(ctx: dict, steps: int) -> None:
    base = load_base(ctx)
    cache = build_latent_cache(ctx, base.vae)
    unet = widen_unet_input(base.unet, 5).to(ctx["device"]).requires_grad_(True).train()
    scheduler, encoder = training_noise_scheduler(), PromptEncoder(base.tokenizer, base.text_encoder, ctx["device"])

    def step_loss(step):
        rng, gen = step_generators(ctx["seed"], "depth", step)
        latents, index = cached_batch(ctx, cache, rng, gen, ctx["unet_batch"])
        with torch.no_grad():
            # Position words are mostly dropped: the depth map, not the caption, must say where objects go.
            hidden = encoder([prompt_for(cache["scenes"][i], rng, p_position=DEPTH_POSITION_DROP) for i in index])
        condition = depth_condition(cache["depth"][index]).to(ctx["device"])
        return denoising_loss(unet, scheduler, latents, condition, hidden, gen)

    def export(ema, done):
        pipeline = demo_eval.depth_pipeline(base, ema["unet"])
        demo_eval.save_pipeline(pipeline, ctx["out"] / "depth")
        demo_eval.evaluate_depth(pipeline, ctx, done)

    plan = {"steps": steps, "lr": 3e-4, "warmup": 20, "ema": 0.995}
    run_stage(ctx, "depth", {"unet": unet}, [{"params": list(unet.parameters())}], step_loss, export, plan)


# ----------------------------------------------------------------------------- CLI


def parse_steps(values: list[str]) -> dict:
    steps = dict(DEFAULT_STEPS)
    for value in values:
        if "=" in value:
            stage, count = value.split("=", 1)
            if stage not in steps:
                raise SystemExit(f"unknown stage {stage!r} in --steps (stages: {', '.join(STAGES)})")
            steps[stage] = int(count)
        else:
            steps = {stage: int(value) for stage in steps}
    return steps


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "build" / "demo")
    parser.add_argument("--stages", default=",".join(STAGES), help="comma-separated subset of " + ",".join(STAGES))
    parser.add_argument("--steps", nargs="*", default=[], help="N for every stage, or stage=N pairs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="auto", help="auto (cuda when present), cpu or cuda")
    parser.add_argument("--vae-batch", type=int, default=32)
    parser.add_argument("--unet-batch", type=int, default=64)
    parser.add_argument("--cache-scenes", type=int, default=CACHE_SCENES)
    parser.add_argument("--vae-bf16", action=argparse.BooleanOptionalAction, default=True,
                        help="bf16 autocast for VAE training steps")
    parser.add_argument("--text-encoder-frozen-fraction", type=float, default=0.3)
    parser.add_argument("--ckpt-every", type=int, default=200)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--eval-prompts", type=int, default=56, help="held-out prompts sampled at each checkpoint")
    return parser.parse_args(argv)


def quiet_libraries() -> None:
    """Keep the log readable: no per-load/per-save progress bars or info chatter from the HF libraries."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    for library in (diffusers_logging, transformers_logging):
        library.set_verbosity_error()
        library.disable_progress_bar()


def main(argv=None) -> None:
    args = parse_args(argv)
    quiet_libraries()
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    out = args.out.resolve()
    (out / "ckpt").mkdir(parents=True, exist_ok=True)
    ctx = {"out": out, "seed": args.seed, "device": device, "held_out": sd.held_out_scenes(),
           "vae_batch": args.vae_batch, "unet_batch": args.unet_batch, "cache_scenes": args.cache_scenes,
           "vae_bf16": args.vae_bf16,
           "text_encoder_frozen_fraction": args.text_encoder_frozen_fraction, "ckpt_every": args.ckpt_every,
           "log_every": args.log_every, "eval_prompts": args.eval_prompts}
    steps = parse_steps(args.steps)
    stages = [s for s in STAGES if s in args.stages.split(",")]
    log(ctx, f"device {device}, threads {args.threads}, seed {args.seed}, steps {steps}, stages {stages}")
    trainers = {"vae": train_vae, "decoder": train_decoder, "base": train_base, "inpaint": train_inpaint,
                "depth": train_depth}
    for stage in stages:
        if stage_is_done(ctx, stage, steps[stage]):
            log(ctx, f"[{stage}] already trained for {steps[stage]} steps, skipping")
            continue
        (out / stage).mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        trainers[stage](ctx, steps[stage])
        log(ctx, f"[{stage}] stage wall time {(time.perf_counter() - started) / 60:.1f} min")
    log(ctx, "all requested stages finished")


if __name__ == "__main__":
    main()
