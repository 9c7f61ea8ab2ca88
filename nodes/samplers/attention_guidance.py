"""Perturbed-Attention Guidance and Self-Attention Guidance as post-cfg hooks (ComfyUI's semantics).

PAG (Ahn et al. 2024): the cond is evaluated again with the middle block's self-attention map replaced by the
identity, and `scale · (cond_x0 − perturbed_x0)` is added to the cfg result (also at cfg == 1).

SAG (Hong et al. 2023): while the uncond is evaluated, the middle block's first self-attention map is recorded; the
keys that receive more than THRESHOLD of attention summed over the queries (averaged over heads) mark the patches to
degrade. The uncond x0 is blurred (Gaussian, BLUR_KERNEL wide, `blur_sigma`) where that mask, upsampled to the latent
by nearest neighbour, is set, re-noised with the uncond's own noise (`degraded + x − uncond_x0`) and evaluated as the
uncond again; `scale · (degraded − degraded_x0)` is added to the cfg result. In eps terms that is the paper's
`s · (eps_uncond − eps_degraded)`. The uncond is evaluated even at cfg == 1; latents of 4 or fewer rows or columns
are left alone (too small for the blur's reflect padding).

The hooks are data: the module patches (`nodes.model_patches.mid_attention`) come in from the node."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .guidance import CfgArgs, StartedHook

THRESHOLD = 1.0
BLUR_KERNEL = 9


# -- SAG's mask and blur ---------------------------------------------------------------------------------------------

def attention_grid(tokens: int, height: int, width: int) -> tuple[int, int]:
    """(rows, cols) of the token grid behind `tokens` attention tokens of a height × width latent: rows is the
    divisor of `tokens` nearest to sqrt(tokens · height / width), the larger one on a tie (ComfyUI's search, which
    stops short of some sizes, e.g. 2 tokens; here the nearest divisor is always found)."""
    target = round(math.sqrt(tokens * height / width))
    divisors = [d for d in range(1, tokens + 1) if tokens % d == 0]
    rows = min(divisors, key=lambda d: (abs(d - target), -d))
    return rows, tokens // rows


def attended_mask(attention: torch.Tensor, height: int, width: int, threshold: float = THRESHOLD) -> torch.Tensor:
    """[B, 1, height, width] 0/1 mask of the latent patches whose key receives more than `threshold` attention
    summed over the queries (averaged over the heads) of an attention map [B, heads, queries, keys]."""
    received = attention.mean(dim=1).sum(dim=1)  # [B, keys]
    rows, cols = attention_grid(received.shape[-1], height, width)
    mask = (received > threshold).to(attention.dtype).reshape(-1, 1, rows, cols)
    return F.interpolate(mask, size=(height, width), mode="nearest")


def gaussian_blur(x: torch.Tensor, sigma: float, kernel_size: int = BLUR_KERNEL) -> torch.Tensor:
    """x [B, C, H, W] convolved per channel with a normalised kernel_size² Gaussian of `sigma` (reflect padding).
    sigma 0 leaves x as it is (ComfyUI's kernel is 0/0 there)."""
    if sigma <= 0:
        return x
    half = (kernel_size - 1) / 2
    offsets = torch.linspace(-half, half, kernel_size, dtype=torch.float32)
    weights = torch.exp(-0.5 * (offsets / sigma) ** 2)
    weights = weights / weights.sum()
    kernel = torch.outer(weights, weights).to(x.device, x.dtype)
    channels = x.shape[1]
    pad = kernel_size // 2
    padded = F.pad(x, [pad, pad, pad, pad], mode="reflect")
    return F.conv2d(padded, kernel.expand(channels, 1, kernel_size, kernel_size), groups=channels)


def blurred_where(x0: torch.Tensor, mask: torch.Tensor, sigma: float) -> torch.Tensor:
    """x0 blurred where mask is 1, unchanged where it is 0."""
    return gaussian_blur(x0, sigma) * mask + x0 * (1 - mask)


# -- the hooks -------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PerturbedAttentionGuidance:
    """PAG as a post-cfg hook; `perturbation` is the module patch that makes the perturbed model."""

    scale: float
    perturbation: Any
    stage: str = "post_cfg"

    def start(self) -> Callable[[CfgArgs], torch.Tensor]:
        return self.guide

    def guide(self, args: CfgArgs) -> torch.Tensor:
        if self.scale == 0:
            return args.denoised
        perturbed = args.evaluate(args.x, "cond", self.perturbation)
        return args.denoised + (args.cond_denoised - perturbed) * self.scale


@dataclass(frozen=True)
class SelfAttentionGuidance:
    """SAG as a post-cfg hook; `recorder()` makes the run's attention recorder, a module patch held while the
    uncond is evaluated, with `attention(batch)` -> the recorded [batch, heads, n, n] map or None."""

    scale: float
    blur_sigma: float
    recorder: Callable[[], Any]
    stage: str = "post_cfg"

    def start(self) -> StartedHook:
        recorder = self.recorder()

        def guide(args: CfgArgs) -> torch.Tensor:
            uncond_x0 = args.uncond_denoised
            height, width = uncond_x0.shape[-2:]
            attention = recorder.attention(uncond_x0.shape[0])
            if min(height, width) <= BLUR_KERNEL // 2 or attention is None:
                return args.denoised
            mask = attended_mask(attention, height, width).to(uncond_x0.device, uncond_x0.dtype)
            degraded = blurred_where(uncond_x0, mask, self.blur_sigma)
            degraded_x0 = args.evaluate(degraded + args.x - uncond_x0, "uncond")
            return args.denoised + (degraded - degraded_x0) * self.scale

        return StartedHook(guide, uncond_patch=recorder)
