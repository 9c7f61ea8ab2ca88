"""Deterministic samplers (ComfyUI names), k-diffusion calling convention.

`model(x, sigma_batch, **extra_args)` returns the x0 prediction; every sampler returns the
final x.  The state follows the probability-flow ODE dx/dsigma = (x - x0(x, sigma)) / sigma.
Multistep families live in `multistep.py`, DPM-Solver in `dpm_solver.py`, UniPC in `unipc.py`.
The cfg++ variants (which need the uncond x0) are in the stochastic tables (`stochastic*.py`).
"""
from __future__ import annotations

import torch

from .dpm_solver import sample_dpm_adaptive, sample_dpm_fast
from .multistep import (
    sample_deis,
    sample_ipndm,
    sample_ipndm_v,
    sample_lms,
    sample_plms,
)
from .stepping import report, rows_of, to_d
from .unipc import sample_uni_pc, sample_uni_pc_bh2


@torch.no_grad()
def sample_euler(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """Euler steps (Karras et al. 2022, Alg. 2 without churn)."""
    extra_args = extra_args or {}
    s_in = rows_of(x)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        report(callback, i, x, sigmas[i], denoised)
        x = x + to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
    return x


@torch.no_grad()
def sample_heun(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """Heun's 2nd-order method (Karras et al. 2022, Alg. 2); Euler for the step to sigma 0."""
    extra_args = extra_args or {}
    s_in = rows_of(x)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * s_in, **extra_args)
        report(callback, i, x, sigma, denoised)
        d = to_d(x, sigma, denoised)
        dt = sigma_next - sigma
        if sigma_next == 0:
            x = x + d * dt
            continue
        x_euler = x + d * dt
        d_next = to_d(x_euler, sigma_next, model(x_euler, sigma_next * s_in, **extra_args))
        x = x + (d + d_next) / 2 * dt
    return x


@torch.no_grad()
def sample_heunpp2(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """Heun++: average the slopes at up to three successive sigmas, weighted by sigma / (k sigma_0)."""
    extra_args = extra_args or {}
    s_in = rows_of(x)
    s_end = sigmas[-1]
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * s_in, **extra_args)
        report(callback, i, x, sigma, denoised)
        d = to_d(x, sigma, denoised)
        dt = sigma_next - sigma
        if sigma_next == s_end:
            x = x + d * dt
            continue
        x_2 = x + d * dt
        d_2 = to_d(x_2, sigma_next, model(x_2, sigma_next * s_in, **extra_args))
        if sigmas[i + 2] == s_end:
            w2 = sigma_next / (2 * sigmas[0])
            x = x + (d * (1 - w2) + d_2 * w2) * dt
            continue
        sigma_after = sigmas[i + 2]
        x_3 = x_2 + d_2 * (sigma_after - sigma_next)
        d_3 = to_d(x_3, sigma_after, model(x_3, sigma_after * s_in, **extra_args))
        w2 = sigma_next / (3 * sigmas[0])
        w3 = sigma_after / (3 * sigmas[0])
        x = x + ((1 - w2 - w3) * d + w2 * d_2 + w3 * d_3) * dt
    return x


@torch.no_grad()
def sample_dpm_2(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """DPM-Solver-2 as in Karras et al. 2022: slope at the geometric-mean sigma; Euler to sigma 0."""
    extra_args = extra_args or {}
    s_in = rows_of(x)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * s_in, **extra_args)
        report(callback, i, x, sigma, denoised)
        d = to_d(x, sigma, denoised)
        if sigma_next == 0:
            x = x + d * (sigma_next - sigma)
            continue
        sigma_mid = sigma.log().lerp(sigma_next.log(), 0.5).exp()
        x_mid = x + d * (sigma_mid - sigma)
        d_mid = to_d(x_mid, sigma_mid, model(x_mid, sigma_mid * s_in, **extra_args))
        x = x + d_mid * (sigma_next - sigma)
    return x


@torch.no_grad()
def sample_dpmpp_2m(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """DPM-Solver++(2M) (Lu et al. 2022), data prediction, lambda = -log sigma."""
    extra_args = extra_args or {}
    s_in = rows_of(x)
    old_denoised = None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * s_in, **extra_args)
        report(callback, i, x, sigma, denoised)
        t, t_next = -sigma.log(), -sigma_next.log()
        h = t_next - t
        if old_denoised is None or sigma_next == 0:
            estimate = denoised
        else:
            r = (t - (-sigmas[i - 1].log())) / h
            estimate = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
        x = (t_next.neg().exp() / t.neg().exp()) * x - torch.expm1(-h) * estimate
        old_denoised = denoised
    return x


def _phi1(t: torch.Tensor) -> torch.Tensor:
    return torch.expm1(t) / t


def _phi2(t: torch.Tensor) -> torch.Tensor:
    return (_phi1(t) - 1.0) / t


@torch.no_grad()
def sample_res_multistep(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """RES 2nd-order exponential multistep (Zhang et al. 2023, arXiv:2308.02157), eta = 0.

    x_next = (sigma_next / sigma) x + h (b1 x0 + b2 x0_prev) with phi-function weights; Euler for
    the first step and the step to sigma 0.
    """
    extra_args = extra_args or {}
    s_in = rows_of(x)
    old_denoised = None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * s_in, **extra_args)
        report(callback, i, x, sigma, denoised)
        if sigma_next == 0 or old_denoised is None:
            x = x + to_d(x, sigma, denoised) * (sigma_next - sigma)
        else:
            t, t_next, t_prev = -sigma.log(), -sigma_next.log(), -sigmas[i - 1].log()
            h = t_next - t
            c2 = (t_prev - t) / h
            phi1, phi2 = _phi1(-h), _phi2(-h)
            b1 = torch.nan_to_num(phi1 - phi2 / c2, nan=0.0)
            b2 = torch.nan_to_num(phi2 / c2, nan=0.0)
            x = torch.exp(-h) * x + h * (b1 * denoised + b2 * old_denoised)
        old_denoised = denoised
    return x


@torch.no_grad()
def sample_gradient_estimation(model, x, sigmas, extra_args=None, callback=None, disable=None, ge_gamma=2.0):
    """Gradient estimation (Permenter & Yuan 2024): d_bar = gamma d + (1 - gamma) d_prev.

    Euler for the first step and for the step to sigma 0.
    """
    extra_args = extra_args or {}
    s_in = rows_of(x)
    old_d = None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * s_in, **extra_args)
        report(callback, i, x, sigma, denoised)
        d = to_d(x, sigma, denoised)
        dt = sigma_next - sigma
        if old_d is None or sigma_next == 0:
            x = x + d * dt
        else:
            x = x + (ge_gamma * d + (1 - ge_gamma) * old_d) * dt
        old_d = d
    return x


ODE_SAMPLERS = {
    "euler": sample_euler,
    "heun": sample_heun,
    "heunpp2": sample_heunpp2,
    "dpm_2": sample_dpm_2,
    "lms": sample_lms,
    "dpm_fast": sample_dpm_fast,
    "dpm_adaptive": sample_dpm_adaptive,
    "dpmpp_2m": sample_dpmpp_2m,
    "ipndm": sample_ipndm,
    "ipndm_v": sample_ipndm_v,
    "deis": sample_deis,
    "res_multistep": sample_res_multistep,
    "gradient_estimation": sample_gradient_estimation,
    "ddim": sample_euler,  # DDIM == Euler in sigma space; the pipeline adds the seed+1 inpaint noise
    "uni_pc": sample_uni_pc,
    "uni_pc_bh2": sample_uni_pc_bh2,
    "plms": sample_plms,
}
