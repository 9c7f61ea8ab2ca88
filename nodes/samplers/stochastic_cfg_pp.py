"""CFG++ samplers (arXiv 2406.08070): the step re-noises with the *unconditional* x0 prediction.

Each model call goes through ``denoise_with_uncond`` (see ``stochastic_common``), so the pipeline evaluates the
negative conditioning even at cfg == 1.  For the eps / v models handled here alpha = sigma * exp(lambda) is 1 up
to rounding; it is kept in the formulas so the arithmetic follows the reference.
"""

from __future__ import annotations

import torch

from .stochastic_common import (
    ancestral_split,
    batch_sigma,
    denoise_with_uncond,
    eps_direction,
    generator_noise,
    log_snr_half,
    needs_uncond,
    report,
    sigma_of_log_snr_half,
)


@needs_uncond
@torch.no_grad()
def sample_euler_ancestral_cfg_pp(model, x, sigmas, extra_args=None, callback=None, disable=None,
                                  eta=1.0, s_noise=1.0, noise_sampler=None):
    extra_args = {} if extra_args is None else extra_args
    noise = generator_noise(x, extra_args, noise_sampler)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised, uncond = denoise_with_uncond(model, x, batch_sigma(x, sigma), extra_args)
        report(callback, i, x, sigma, denoised)
        if sigma_next == 0:
            x = denoised
            continue
        alpha = sigma * log_snr_half(sigma).exp()
        alpha_next = sigma_next * log_snr_half(sigma_next).exp()
        slope = eps_direction(x, sigma, alpha * uncond)
        sigma_down, sigma_up = ancestral_split(sigma / alpha, sigma_next / alpha_next, eta)
        x = alpha_next * denoised + (alpha_next * sigma_down) * slope
        if eta > 0 and s_noise > 0:
            x = x + alpha_next * noise(sigma, sigma_next) * s_noise * sigma_up
    return x


@needs_uncond
@torch.no_grad()
def sample_euler_cfg_pp(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """Deterministic CFG++ Euler: x_next = x0 + sigma_next * (x - x0_uncond) / sigma."""
    return sample_euler_ancestral_cfg_pp(model, x, sigmas, extra_args, callback, disable, eta=0.0, s_noise=0.0)


@needs_uncond
@torch.no_grad()
def sample_dpmpp_2s_ancestral_cfg_pp(model, x, sigmas, extra_args=None, callback=None, disable=None,
                                     eta=1.0, s_noise=1.0, noise_sampler=None):
    """DPM-Solver++(2S) ancestral, CFG++ form of ComfyUI 0.3.64 (the golden version).

    Both sub-steps start from x shifted by the guidance (x0 - x0_uncond) and use the *guided* predictions; the
    final shift uses the uncond prediction of the midpoint evaluation (the latest one), which is what the
    reference does and the golden numbers confirm (the newer ComfyUI formulation differs by ~3e-2 relative).
    """
    extra_args = {} if extra_args is None else extra_args
    noise = generator_noise(x, extra_args, noise_sampler)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised, uncond = denoise_with_uncond(model, x, batch_sigma(x, sigma), extra_args)
        sigma_down, sigma_up = ancestral_split(sigma, sigma_next, eta)
        report(callback, i, x, sigma, denoised)
        if sigma_down == 0:
            x = denoised + eps_direction(x, sigma, uncond) * sigma_down
        else:
            lam, lam_down = log_snr_half(sigma), log_snr_half(sigma_down)
            h = lam_down - lam
            lam_mid = lam + 0.5 * h
            sigma_mid = sigma_of_log_snr_half(lam_mid)
            start = sigma_of_log_snr_half(lam)
            x_mid = (sigma_mid / start) * (x + (denoised - uncond)) - (-h * 0.5).expm1() * denoised
            denoised_mid, uncond_mid = denoise_with_uncond(model, x_mid, batch_sigma(x, sigma_mid), extra_args)
            x = (sigma_of_log_snr_half(lam_down) / start) * (x + (denoised - uncond_mid)) - (-h).expm1() * denoised_mid
        if sigma_next > 0:
            x = x + noise(sigma, sigma_next) * s_noise * sigma_up
    return x


@needs_uncond
@torch.no_grad()
def sample_dpmpp_2m_cfg_pp(model, x, sigmas, extra_args=None, callback=None, disable=None):
    extra_args = {} if extra_args is None else extra_args
    old_uncond = None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised, uncond = denoise_with_uncond(model, x, batch_sigma(x, sigma), extra_args)
        report(callback, i, x, sigma, denoised)
        h = log_snr_half(sigma_next) - log_snr_half(sigma)
        decay = torch.exp(-h)
        if old_uncond is None or sigma_next == 0:
            mix = -decay * uncond
        else:
            r = (log_snr_half(sigma) - log_snr_half(sigmas[i - 1])) / h
            mix = -decay * uncond - torch.expm1(-h) * (1 / (2 * r)) * (denoised - old_uncond)
        x = denoised + mix + decay * x
        old_uncond = uncond
    return x


@needs_uncond
@torch.no_grad()
def sample_gradient_estimation_cfg_pp(model, x, sigmas, extra_args=None, callback=None, disable=None, ge_gamma=2.0):
    """Gradient-estimation sampler (CFG++ flavour): Euler plus (gamma - 1) times the change of the slope."""
    extra_args = {} if extra_args is None else extra_args
    old_slope = None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised, uncond = denoise_with_uncond(model, x, batch_sigma(x, sigma), extra_args)
        slope = eps_direction(x, sigma, uncond)
        report(callback, i, x, sigma, denoised)
        dt = sigma_next - sigma
        if sigma_next == 0:
            x = denoised
        else:
            x = denoised + slope * sigma_next
            if i >= 1:
                x = x + (ge_gamma - 1) * (slope - old_slope) * dt
        old_slope = slope
    return x
