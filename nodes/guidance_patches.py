"""More of ComfyUI's guidance patch nodes (TCFG, Mahiro, FreSca, Epsilon Scaling, PerpNeg): a MODEL in, a new MODEL
handle with one more guidance hook out (`nodes.samplers.guidance`), the cached base untouched. The formulas are pure
functions of the cond / uncond x0 predictions; PerpNeg also evaluates its empty prompt at each step."""

from __future__ import annotations

import math
from typing import Annotated

import torch
import torch.nn.functional as F

from graphengine import Float, Int, Node, Output

from .custom_sampling.guiders import perp_neg
from .samplers.guidance import CfgArgs, StatelessHook
from .types import Conditioning, Model


def tangential_damping(cond_score: torch.Tensor, uncond_score: torch.Tensor) -> torch.Tensor:
    """TCFG (arXiv 2503.18137): the uncond score projected onto the first right-singular vector of the
    [uncond; cond] score matrix, per batch item (its tangential part dropped)."""
    batch = cond_score.shape[0]
    cond_flat = cond_score.reshape(batch, 1, -1).float()
    uncond_flat = uncond_score.reshape(batch, 1, -1).float()
    _, _, vh = torch.linalg.svd(torch.cat((uncond_flat, cond_flat), dim=1), full_matrices=False)
    first = vh[:, 0:1, :]
    return ((uncond_flat @ first.transpose(-2, -1)) * first).reshape_as(uncond_score).to(uncond_score.dtype)


def tcfg_pre_cfg(args: CfgArgs) -> tuple[torch.Tensor, torch.Tensor]:
    if math.isclose(args.cond_scale, 1.0):  # no uncond pass ran (ComfyUI skips TCFG then)
        return args.cond_denoised, args.uncond_denoised
    damped = tangential_damping(args.x - args.cond_denoised, args.x - args.uncond_denoised)
    return args.cond_denoised, args.x - damped


def mahiro_post_cfg(args: CfgArgs) -> torch.Tensor:
    """Mahiro: mixes the guided x0 with the cond x0 scaled by cfg, by how similar the (signed square-root) uncond
    leap is to their average."""
    leap = args.cond_denoised * args.cond_scale
    uncond_leap = args.uncond_denoised * args.cond_scale
    cfg = args.denoised
    merge = (leap + cfg) / 2
    similarity = F.cosine_similarity(torch.sqrt(uncond_leap.abs()) * uncond_leap.sign(),
                                     torch.sqrt(merge.abs()) * merge.sign()).mean()
    weight = 2 * (similarity + 1)
    return (weight * cfg + (4 - weight) * leap) / 4


def fourier_filter(x: torch.Tensor, scale_low: float = 1.0, scale_high: float = 1.5,
                   freq_cutoff: int = 20) -> torch.Tensor:
    """Scales the centred low-frequency block (freq_cutoff indices each side of the centre, per spatial axis) by
    scale_low and the rest of the spectrum by scale_high."""
    dtype = x.dtype
    spectrum = torch.fft.fftshift(torch.fft.fftn(x.to(torch.float32), dim=(-2, -1)), dim=(-2, -1))
    mask = torch.full(spectrum.shape, float(scale_high), device=x.device)
    low = mask
    for dim in range(2, spectrum.ndim):
        centre = spectrum.shape[dim] // 2
        half = min(freq_cutoff, centre)
        low = low.narrow(dim, centre - half, half * 2)
    low[:] = scale_low
    spectrum = torch.fft.ifftshift(spectrum * mask, dim=(-2, -1))
    return torch.fft.ifftn(spectrum, dim=(-2, -1)).real.to(dtype)


def fresca_pre_cfg(scale_low: float, scale_high: float, freq_cutoff: int):
    def pre_cfg(args: CfgArgs) -> tuple[torch.Tensor, torch.Tensor]:
        if math.isclose(args.cond_scale, 1.0):
            return args.cond_denoised, args.uncond_denoised
        guidance = fourier_filter(args.cond_denoised - args.uncond_denoised, scale_low, scale_high, freq_cutoff)
        return guidance + args.uncond_denoised, args.uncond_denoised

    return pre_cfg


def epsilon_scaled(args: CfgArgs, factor: float) -> torch.Tensor:
    """Epsilon scaling (arXiv 2308.15321, uniform schedule): the guided noise prediction divided by `factor`."""
    return args.x - (args.x - args.denoised) / factor


def perp_neg_cfg(empty_conditioning: list, neg_scale: float):
    """The cfg function of the PerpNeg patch: PerpNegGuider's combination, with the empty prompt's x0 evaluated
    at the step's x and sigma."""
    def cfg(args: CfgArgs) -> torch.Tensor:
        empty = args.evaluate(args.x, empty_conditioning)
        return perp_neg(args.cond_denoised, args.uncond_denoised, empty, neg_scale, args.cond_scale)

    return cfg


def _patched(model, node: str, hook: StatelessHook):
    if model is None:
        raise ValueError(f"{node}: the MODEL input is empty (the checkpoint has no diffusion model)")
    return (model.with_guidance(hook),)


class TCFG(Node):
    """TCFG – Tangential Damping CFG (2503.18137): aligns the negative with the positive prediction."""

    DISPLAY_NAME = "Tangential Damping CFG"
    CATEGORY = "advanced/guidance"
    RETURNS = (Output("MODEL", name="patched_model"),)

    model: Model

    def execute(self, ctx) -> tuple:
        return _patched(self.model, "TCFG", StatelessHook("pre_cfg", tcfg_pre_cfg))


class Mahiro(Node):
    """Scales the guidance more along the positive prompt's direction than away from the negative."""

    DISPLAY_NAME = "Mahiro is so cute that she deserves a better guidance function!! (。・ω・。)"
    CATEGORY = "_for_testing"
    EXPERIMENTAL = True
    RETURNS = (Output("MODEL", name="patched_model"),)

    model: Model

    def execute(self, ctx) -> tuple:
        return _patched(self.model, "Mahiro", StatelessHook("post_cfg", mahiro_post_cfg))


class FreSca(Node):
    """Applies frequency-dependent scaling to the guidance."""

    CATEGORY = "_for_testing"
    EXPERIMENTAL = True
    RETURNS = (Output("MODEL"),)

    model: Model
    scale_low: Annotated[float, Float(min=0, max=10, step=0.01,
                                      tooltip="Scaling factor for low-frequency components")] = 1.0
    scale_high: Annotated[float, Float(min=0, max=10, step=0.01,
                                       tooltip="Scaling factor for high-frequency components")] = 1.25
    freq_cutoff: Annotated[int, Int(min=1, max=10000, step=1, tooltip=(
        "Number of frequency indices around center to consider as low-frequency"))] = 20

    def execute(self, ctx) -> tuple:
        fn = fresca_pre_cfg(float(self.scale_low), float(self.scale_high), int(self.freq_cutoff))
        return _patched(self.model, "FreSca", StatelessHook("pre_cfg", fn))


class EpsilonScaling(Node):
    """Epsilon scaling: divides the guided noise prediction by a factor, against exposure bias."""

    NAME = "Epsilon Scaling"
    CATEGORY = "model_patches/unet"
    RETURNS = (Output("MODEL"),)

    model: Model
    scaling_factor: Annotated[float, Float(min=0.5, max=1.5, step=0.001, display="number")] = 1.005

    def execute(self, ctx) -> tuple:
        factor = float(self.scaling_factor) or 1e-9
        return _patched(self.model, "Epsilon Scaling",
                        StatelessHook("post_cfg", lambda args: epsilon_scaled(args, factor)))


class PerpNeg(Node):
    """Perp-Neg as a model patch: the negative prompt only removes what is perpendicular to the positive one."""

    DISPLAY_NAME = "Perp-Neg (DEPRECATED by PerpNegGuider)"
    CATEGORY = "_for_testing"
    DEPRECATED = True
    RETURNS = (Output("MODEL"),)

    model: Model
    empty_conditioning: Conditioning
    neg_scale: Annotated[float, Float(min=0.0, max=100.0, step=0.01)] = 1.0

    def execute(self, ctx) -> tuple:
        fn = perp_neg_cfg(list(self.empty_conditioning), float(self.neg_scale))
        return _patched(self.model, "PerpNeg", StatelessHook("cfg", fn))


NODE_CLASSES = [TCFG, Mahiro, FreSca, EpsilonScaling, PerpNeg]
