"""The bundled demo TAESD decoder against the demo VAE: preview fidelity and cost, with latent2rgb as the baseline.

Run: python bench/taesd_quality.py [--decoder models/vae_approx/taedemo_decoder.safetensors] [--repeats 20]

On the held-out scenes (never trained on) it encodes each image with the demo VAE and compares, against the VAE's
own decode of the same latent (the image sampling would end with), in PSNR dB:
- the TAESD decoder (what `--preview-method auto|taesd` sends for the demo models),
- latent2rgb: the best linear map from the 4 latent channels to RGB (least squares, fitted here on training scenes,
  since the demo latent space has no published factors), upsampled 8× as the editor shows it,
for clean latents and for latents pushed towards noise as a sampler's early x0 predictions are. Decode cost is the
TAESD decode's time over the VAE decode's, both measured in this run (one image of 64×64, one thread)."""

from __future__ import annotations

import argparse
import json
import random
import statistics
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
from train_demo_taesd import HELD_OUT_RENDER_SEED, latents_and_targets, load_vae, psnr  # noqa: E402

from nodes.taesd import load_decoder  # noqa: E402

LATENT_SCALE = 8
NOISE = 0.4  # the perturbation of the "early x0" rows (model units)


def fit_latent2rgb(latents: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """[5, 3] least-squares map (4 channels + bias) from model-unit latents to the target pooled to latent size."""
    pooled = F.avg_pool2d(targets, LATENT_SCALE)
    inputs = torch.cat([latents, torch.ones_like(latents[:, :1])], dim=1).movedim(1, -1).reshape(-1, 5)
    return torch.linalg.lstsq(inputs, pooled.movedim(1, -1).reshape(-1, 3)).solution


def latent2rgb(latents: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    inputs = torch.cat([latents, torch.ones_like(latents[:, :1])], dim=1).movedim(1, -1)
    rgb = (inputs @ factors).movedim(-1, 1)
    return F.interpolate(rgb, scale_factor=LATENT_SCALE, mode="nearest")


def held_out(vae, scale: float, noise: float) -> tuple[torch.Tensor, torch.Tensor]:
    scenes = sd.held_out_scenes()
    rng = random.Random(HELD_OUT_RENDER_SEED)
    pixels, _ = render_scenes(scenes, [rng.randrange(2**31) for _ in scenes])
    gen = torch.Generator().manual_seed(HELD_OUT_RENDER_SEED)
    with torch.no_grad():
        latents = vae.encode(pixels).latent_dist.mean * scale
        latents = latents + noise * torch.randn(latents.shape, generator=gen)
        return latents, vae.decode(latents / scale).sample.clamp(-1.0, 1.0)


def seconds(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--decoder", type=Path, default=ROOT / "models" / "vae_approx" / "taedemo_decoder.safetensors")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    vae, scale = load_vae()
    taesd = load_decoder(args.decoder)
    rng, gen = random.Random(99), torch.Generator().manual_seed(99)
    fit = [latents_and_targets(vae, scale, render_batch(rng, 32, sd.held_out_scenes())[2], gen, perturb=True)
           for _ in range(4)]
    factors = fit_latent2rgb(torch.cat([f[0] for f in fit]), torch.cat([f[1] for f in fit]))
    report: dict[str, object] = {"decoder": args.decoder.name, "bytes": args.decoder.stat().st_size}
    for label, noise in (("clean", 0.0), ("early_x0", NOISE)):
        latents, reference = held_out(vae, scale, noise)
        with torch.no_grad():
            report[label] = {"images": len(latents),
                             "taesd_psnr_db": round(psnr(taesd.decode(latents).sample, reference), 2),
                             "latent2rgb_psnr_db": round(psnr(latent2rgb(latents, factors), reference), 2)}
    one = held_out(vae, scale, 0.0)[0][:1]
    with torch.no_grad():
        vae_s = seconds(lambda: vae.decode(one / scale), args.repeats)
        taesd_s = seconds(lambda: taesd.decode(one), args.repeats)
    report["taesd_decode_time_over_vae"] = round(taesd_s / vae_s, 3)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
