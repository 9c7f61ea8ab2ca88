"""RES multistep (second-order exponential multistep, arXiv 2308.02157) with ancestral noise and CFG++ variants.

res_multistep (eta = 0, plain CFG) belongs to the deterministic set; the three variants here share its core:
res_multistep_ancestral (eta = 1), res_multistep_cfg_pp (eta = 0, CFG++), res_multistep_ancestral_cfg_pp.
With eta = 0 a noise tensor is still drawn for every step with sigma_next > 0 and multiplied by 0, as ComfyUI does.
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


def _phi1(t):
    return torch.expm1(t) / t


def _phi2(t):
    return (_phi1(t) - 1.0) / t


def _multistep_weights(sigma, sigma_prev, sigma_down, old_sigma_down):
    """(h, b1, b2): exponential-integrator weights for the current and the previous x0 prediction."""
    lam, lam_old = log_snr_half(sigma), log_snr_half(old_sigma_down)
    lam_next, lam_prev = log_snr_half(sigma_down), log_snr_half(sigma_prev)
    h = lam_next - lam
    c2 = (lam_prev - lam_old) / h
    phi1, phi2 = _phi1(-h), _phi2(-h)
    b1 = torch.nan_to_num(phi1 - phi2 / c2, nan=0.0)
    b2 = torch.nan_to_num(phi2 / c2, nan=0.0)
    return h, b1, b2


def res_multistep_core(model, x, sigmas, extra_args=None, callback=None, s_noise=1.0, noise_sampler=None,
                       eta=1.0, cfg_pp=False):
    extra_args = {} if extra_args is None else extra_args
    noise = generator_noise(x, extra_args, noise_sampler)
    old_denoised = None
    old_sigma_down = None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        if cfg_pp:
            denoised, uncond = denoise_with_uncond(model, x, batch_sigma(x, sigma), extra_args)
        else:
            denoised = model(x, batch_sigma(x, sigma), **extra_args)
            uncond = None
        sigma_down, sigma_up = ancestral_split(sigma, sigma_next, eta)
        report(callback, i, x, sigma, denoised)
        if sigma_down == 0 or old_denoised is None:
            if cfg_pp:
                x = denoised + eps_direction(x, sigma, uncond) * sigma_down
            else:
                x = x + eps_direction(x, sigma, denoised) * (sigma_down - sigma)
        else:
            h, b1, b2 = _multistep_weights(sigma, sigmas[i - 1], sigma_down, old_sigma_down)
            if cfg_pp:
                x = x + (denoised - uncond)
                x = sigma_of_log_snr_half(h) * x + h * (b1 * uncond + b2 * old_denoised)
            else:
                x = sigma_of_log_snr_half(h) * x + h * (b1 * denoised + b2 * old_denoised)
        if sigma_next > 0:
            x = x + noise(sigma, sigma_next) * s_noise * sigma_up
        old_denoised = uncond if cfg_pp else denoised
        old_sigma_down = sigma_down
    return x


@torch.no_grad()
def sample_res_multistep_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None,
                                   eta=1.0, s_noise=1.0, noise_sampler=None):
    return res_multistep_core(model, x, sigmas, extra_args, callback, s_noise, noise_sampler, eta=eta, cfg_pp=False)


@needs_uncond
@torch.no_grad()
def sample_res_multistep_cfg_pp(model, x, sigmas, extra_args=None, callback=None, disable=None,
                                s_noise=1.0, noise_sampler=None):
    return res_multistep_core(model, x, sigmas, extra_args, callback, s_noise, noise_sampler, eta=0.0, cfg_pp=True)


@needs_uncond
@torch.no_grad()
def sample_res_multistep_ancestral_cfg_pp(model, x, sigmas, extra_args=None, callback=None, disable=None,
                                          eta=1.0, s_noise=1.0, noise_sampler=None):
    return res_multistep_core(model, x, sigmas, extra_args, callback, s_noise, noise_sampler, eta=eta, cfg_pp=True)
