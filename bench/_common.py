"""Shared pieces of the sampling benchmarks: the graph side (registry, txt2img prompt, a sink node that hands the
outputs back) and the hand-written side (discrete SD sigmas, the normal schedule and a CFG Euler loop written
from the formulas, not from the pipeline code), plus timing helpers."""

from __future__ import annotations

import math
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from graphengine import Node, NodeOutput, NodeRegistry, RuntimeConfig, Socket, build_registry  # noqa: E402

POSITIVE = "a photograph of a lighthouse on a cliff at sunset, detailed, warm light"
NEGATIVE = "blurry, low quality, watermark"


class BenchSink(Node):
    """Output node: returns its input untouched in the prompt's UI output, so the benchmark can read it."""

    OUTPUT_NODE = True
    value: Annotated[Any, Socket("*")]

    def execute(self, ctx) -> NodeOutput:
        return NodeOutput((), ui={"value": [self.value]})


def make_registry(models_dir: Path) -> NodeRegistry:
    registry = build_registry(RuntimeConfig(base_dir=models_dir.parent, models_dir=models_dir))
    registry.register(BenchSink, python_module="bench")
    return registry


def txt2img_prompt(ckpt: str, *, seed: int, steps: int, cfg: float, size: int, decode: bool,
                   sink_inputs: bool = False) -> dict:
    """Checkpoint -> 2 × CLIPTextEncode -> EmptyLatentImage -> KSampler (euler/normal) [-> VAEDecode] -> sink.

    With `sink_inputs` the MODEL and both CONDITIONINGs are sunk too (to hand them to the hand-written side)."""
    prompt = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": POSITIVE, "clip": ["ckpt", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": NEGATIVE, "clip": ["ckpt", 1]}},
        "empty": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "sample": {"class_type": "KSampler", "inputs": {
            "model": ["ckpt", 0], "seed": seed, "steps": steps, "cfg": cfg, "sampler_name": "euler",
            "scheduler": "normal", "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["empty", 0],
            "denoise": 1.0}},
    }
    result_source = ["sample", 0]
    if decode:
        prompt["decode"] = {"class_type": "VAEDecode", "inputs": {"samples": ["sample", 0], "vae": ["ckpt", 2]}}
        result_source = ["decode", 0]
    prompt["out"] = {"class_type": "BenchSink", "inputs": {"value": result_source}}
    if sink_inputs:
        prompt["out_model"] = {"class_type": "BenchSink", "inputs": {"value": ["ckpt", 0]}}
        prompt["out_pos"] = {"class_type": "BenchSink", "inputs": {"value": ["pos", 0]}}
        prompt["out_neg"] = {"class_type": "BenchSink", "inputs": {"value": ["neg", 0]}}
    return prompt


def sunk(result, node: str = "out") -> Any:
    assert result.ok, result.error
    return result.outputs[node]["value"][0]


# -- the hand-written side ---------------------------------------------------------------------------------------

def discrete_log_sigmas(timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> torch.Tensor:
    """log sigma_t of the SD "scaled_linear" DDPM table: sigma_t = sqrt((1 - abar_t) / abar_t), float64 math."""
    betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, timesteps, dtype=torch.float64) ** 2
    abar = torch.cumprod(1.0 - betas, dim=0)
    return (((1.0 - abar) / abar) ** 0.5).log().to(torch.float32)


def normal_schedule(log_sigmas: torch.Tensor, steps: int) -> torch.Tensor:
    """Timesteps evenly from the last table index to 0, log-linear interpolation of the table, then a final 0."""
    t = torch.linspace(len(log_sigmas) - 1, 0, steps)
    low, high, frac = t.floor().long(), t.ceil().long(), t.frac()
    sigmas = ((1 - frac) * log_sigmas[low] + frac * log_sigmas[high]).exp()
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def nearest_timestep(log_sigmas: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    return (sigma.log() - log_sigmas).abs().argmin()


@torch.no_grad()
def euler_cfg(unet: torch.nn.Module, noise: torch.Tensor, sigmas: torch.Tensor, timesteps: list[torch.Tensor],
              cond: torch.Tensor, uncond: torch.Tensor, cfg: float,
              on_step: Callable[[int], None] | None = None) -> torch.Tensor:
    """Euler (k-diffusion form) with CFG in x0 space; ONE batched UNet call per step, rows [uncond, cond].

    x starts at noise * sqrt(1 + sigma_0^2) (a pure-noise start); the UNet predicts eps from x / sqrt(sigma^2 + 1)."""
    context = torch.cat([uncond, cond])
    x = noise * (1.0 + sigmas[0] ** 2) ** 0.5
    for i in range(len(sigmas) - 1):
        sigma = sigmas[i]
        x_in = torch.cat([x, x]) / (sigma * sigma + 1.0) ** 0.5
        t = timesteps[i].to(torch.float32).expand(2)
        eps = unet(x_in, t, encoder_hidden_states=context, return_dict=False)[0]
        x0_uncond, x0_cond = (torch.cat([x, x]) - eps * sigma).chunk(2)
        x0 = x0_uncond + (x0_cond - x0_uncond) * cfg
        x = x + (x - x0) / sigma * (sigmas[i + 1] - sigma)
        if on_step is not None:
            on_step(i)
    return x


def seeded_noise(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed), dtype=torch.float32)


# -- measuring ---------------------------------------------------------------------------------------------------

def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median_time(fn: Callable[[], Any], repeats: int) -> float:
    return statistics.median(timed(fn) for _ in range(repeats))


class ForwardClock:
    """Seconds spent inside a module's forward (hooks), so time outside the network can be told apart."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.seconds = 0.0
        self._start = 0.0
        self._handles = [module.register_forward_pre_hook(self._enter), module.register_forward_hook(self._leave)]

    def _enter(self, *_: Any) -> None:
        self._start = time.perf_counter()

    def _leave(self, *_: Any) -> None:
        self.seconds += time.perf_counter() - self._start

    def read_and_reset(self) -> float:
        seconds, self.seconds = self.seconds, 0.0
        return seconds

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


def peak_rss_mib() -> float:
    """This process's peak resident set (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def is_close(a: torch.Tensor, b: torch.Tensor) -> tuple[bool, float]:
    diff = float((a - b).abs().max())
    return math.isfinite(diff) and diff <= 1e-3 * max(1.0, float(b.abs().max())), diff
