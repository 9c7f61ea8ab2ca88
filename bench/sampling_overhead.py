"""Sampling overhead: our KSampler graph through the real Executor vs a hand-written CFG Euler loop, same UNet.

Run: python bench/sampling_overhead.py [--threads 1] [--repeats 7] [--size 128] [--steps 20]
     (prints a table; figures are medians over repeats on this machine).

Both sides use the tiny random-weight SD1.x-layout model of the tests (tests/nodes_sd/tiny.py), written once as an
original-layout single file that our graph loads through CheckpointLoaderSimple. The graph is run once first so the
loader, both CLIPTextEncodes and EmptyLatentImage are cached; every timed run changes only the seed, so only
KSampler (and the sink node that returns its LATENT) re-run. What is timed on each side:
  ours         Executor.execute(prompt) = validation + cache look-ups + KSampler (seeded noise, sigmas, 20 Euler
               steps with one batched [uncond, cond] UNet call each, latent rescale) + the sink node
  hand-written seeded noise + the same 20 Euler steps over the SAME UNet module and the SAME conditioning tensors
               (taken from the graph's CLIPTextEncode outputs), one batched [uncond, cond] call per step + rescale
  ksample()    the pipeline function called directly, no engine (splits engine cost from pipeline cost)
The three are interleaved in each repeat (order rotated) so that load from other jobs hits them alike; the
median of the per-repeat ours/hand-written ratios is printed beside the ratio of the medians. The final latents are
compared, so the work is the same. A forward hook on the UNet splits each run into time inside UNet.forward and
time outside it (the overhead, much less noisy than the wall-time ratio on a shared machine); --profile prints a
cProfile of one graph run.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import (ForwardClock, discrete_log_sigmas, euler_cfg, is_close, make_registry,  # noqa: E402
                           nearest_timestep, normal_schedule, seeded_noise, sunk, timed, txt2img_prompt)
from graphengine import Executor  # noqa: E402
from nodes.models import save_checkpoint  # noqa: E402
from nodes.samplers.pipeline import ksample  # noqa: E402

CKPT = "tiny_sd15.safetensors"
CFG = 7.0
TARGET = 1.03


def write_tiny_checkpoint(models_dir: Path) -> None:
    from tests.nodes_sd.tiny import tiny_text_encoder, tiny_unet, tiny_vae

    folder = models_dir / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    save_checkpoint(folder / CKPT, tiny_unet(), tiny_vae(), [tiny_text_encoder()], "sd15")


def profile_graph_run(executor: Executor, prompt: dict, top: int = 18) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    executor.execute(prompt)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--size", type=int, default=128, help="image side in pixels (latent = size / 8)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--profile", action="store_true", help="print the cProfile of one graph run anyway")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="bench_sampling_") as tmp:
        models_dir = Path(tmp) / "models"
        write_tiny_checkpoint(models_dir)
        executor = Executor(make_registry(models_dir))
        setup = executor.execute(txt2img_prompt(CKPT, seed=0, steps=args.steps, cfg=CFG, size=args.size,
                                                decode=False, sink_inputs=True))
        model, positive, negative = (sunk(setup, n) for n in ("out_model", "out_pos", "out_neg"))
        cond, uncond = positive[0][0], negative[0][0]
        latent_shape = (1, 4, args.size // 8, args.size // 8)

        log_sigmas = discrete_log_sigmas()
        sigmas = normal_schedule(log_sigmas, args.steps)
        timesteps = [nearest_timestep(log_sigmas, s) for s in sigmas[:-1]]
        scale = model.latent_scale_factor

        def graph_prompt(seed: int) -> dict:
            return txt2img_prompt(CKPT, seed=seed, steps=args.steps, cfg=CFG, size=args.size, decode=False)

        def handwritten(seed: int) -> torch.Tensor:
            return euler_cfg(model.unet, seeded_noise(latent_shape, seed), sigmas, timesteps, cond, uncond,
                             CFG) / scale

        def direct(seed: int) -> torch.Tensor:
            latent = {"samples": torch.zeros(latent_shape)}
            return ksample(model, seed=seed, steps=args.steps, cfg=CFG, sampler_name="euler", scheduler="normal",
                           positive=positive, negative=negative, latent=latent)["samples"]

        ours_latent = sunk(executor.execute(graph_prompt(1)))["samples"]
        same, diff = is_close(ours_latent, handwritten(1))
        if not same:
            raise SystemExit(f"the two sides disagree (max |diff| {diff:.3g}): they are not doing the same work")

        seeds = iter(range(100, 10**9))

        def run_ours() -> None:
            result = executor.execute(graph_prompt(next(seeds)))
            assert set(result.executed) == {"sample", "out"}, f"re-ran more than KSampler: {result.executed}"

        sides = {"ours": run_ours, "hand": lambda: handwritten(next(seeds)), "direct": lambda: direct(next(seeds))}
        samples: dict[str, list[float]] = {name: [] for name in sides}
        outside: dict[str, list[float]] = {name: [] for name in sides}  # wall time minus time in UNet.forward
        clock = ForwardClock(model.unet)
        order = list(sides)
        for r in range(args.repeats):
            for name in order[r % 3:] + order[:r % 3]:  # rotate so no side always runs first
                clock.read_and_reset()
                samples[name].append(timed(sides[name]))
                outside[name].append(samples[name][-1] - clock.read_and_reset())
        clock.close()
        t = {k: statistics.median(v) for k, v in samples.items()}
        fastest = {k: min(v) for k, v in samples.items()}
        t_out = {k: statistics.median(v) for k, v in outside.items()}
        paired = statistics.median(o / h for o, h in zip(samples["ours"], samples["hand"]))
        profile = profile_graph_run(executor, graph_prompt(7)) if args.profile else ""

    ratio = t["ours"] / t["hand"]
    latent = f"{args.size // 8}x{args.size // 8}"
    print(f"tiny SD1.x UNet ({sum(p.numel() for p in model.unet.parameters()) / 1e6:.2f} M params), "
          f"{args.size}x{args.size} px / {latent} latent, euler/normal, {args.steps} steps, cfg {CFG}, "
          f"negative prompt, batched [uncond, cond] UNet call; torch threads {args.threads}; "
          f"medians of {args.repeats}; max |latent diff| ours vs hand-written {diff:.2e}")
    print(f"{'measure':52s} {'value':>12s}")
    print(f"{'hand-written Euler loop (baseline)':52s} {t['hand'] * 1e3:10.1f} ms")
    print(f"{'ksample() called directly (no engine)':52s} {t['direct'] * 1e3:10.1f} ms")
    print(f"{'KSampler graph via Executor (only KSampler re-runs)':52s} {t['ours'] * 1e3:10.1f} ms")
    print(f"{'per step: hand-written':52s} {t['hand'] / args.steps * 1e3:10.2f} ms")
    print(f"{'per step: ours':52s} {t['ours'] / args.steps * 1e3:10.2f} ms")
    print(f"{'ksample() / hand-written':52s} {t['direct'] / t['hand']:10.3f} x")
    print(f"{f'ours / hand-written, ratio of medians (target <= {TARGET})':52s} {ratio:10.3f} x")
    print(f"{'ours / hand-written, median of paired ratios':52s} {paired:10.3f} x")
    print(f"{'ours / hand-written, ratio of fastest runs':52s} {fastest['ours'] / fastest['hand']:10.3f} x")
    print(f"{'time outside UNet.forward: hand-written':52s} {t_out['hand'] * 1e3:10.2f} ms")
    print(f"{'time outside UNet.forward: ksample()':52s} {t_out['direct'] * 1e3:10.2f} ms")
    print(f"{'time outside UNet.forward: ours':52s} {t_out['ours'] * 1e3:10.2f} ms")
    extra = (t_out["ours"] - t_out["hand"]) / t["hand"]
    print(f"{'(ours - hand-written) outside UNet / hand-written':52s} {extra * 100:10.2f} %")
    if profile:
        print(f"\ncProfile of one graph run (by own time):\n{profile}")


if __name__ == "__main__":
    main()
