"""Ancestral samplers and the single-step DDPM / LCM samplers (generator noise, README §4 "G").

Each step goes deterministically from sigma to sigma_down and then adds fresh noise of std sigma_up
(``ancestral_split``); the step into sigma = 0 draws nothing.
"""

from __future__ import annotations

import torch

from .stochastic_common import (
    ancestral_split,
    batch_sigma,
    eps_direction,
    generator_noise,
    log_snr_half,
    report,
    sigma_of_log_snr_half,
)


@torch.no_grad()
def sample_euler_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None,
                           eta=1.0, s_noise=1.0, noise_sampler=None):
    extra_args = {} if extra_args is None else extra_args
    noise = generator_noise(x, extra_args, noise_sampler)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, batch_sigma(x, sigma), **extra_args)
        sigma_down, sigma_up = ancestral_split(sigma, sigma_next, eta)
        report(callback, i, x, sigma, denoised)
        if sigma_down == 0:
            x = denoised
            continue
        slope = eps_direction(x, sigma, denoised)
        x = x + slope * (sigma_down - sigma) + noise(sigma, sigma_next) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_dpm_2_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None,
                           eta=1.0, s_noise=1.0, noise_sampler=None):
    """DPM-Solver-2 (midpoint in log sigma) towards sigma_down, then fresh noise."""
    extra_args = {} if extra_args is None else extra_args
    noise = generator_noise(x, extra_args, noise_sampler)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, batch_sigma(x, sigma), **extra_args)
        sigma_down, sigma_up = ancestral_split(sigma, sigma_next, eta)
        report(callback, i, x, sigma, denoised)
        slope = eps_direction(x, sigma, denoised)
        if sigma_down == 0:
            x = x + slope * (sigma_down - sigma)
            continue
        sigma_mid = sigma.log().lerp(sigma_down.log(), 0.5).exp()
        x_mid = x + slope * (sigma_mid - sigma)
        denoised_mid = model(x_mid, batch_sigma(x, sigma_mid), **extra_args)
        x = x + eps_direction(x_mid, sigma_mid, denoised_mid) * (sigma_down - sigma)
        x = x + noise(sigma, sigma_next) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_dpmpp_2s_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None,
                              eta=1.0, s_noise=1.0, noise_sampler=None):
    """DPM-Solver++(2S) (single-step, second order, data prediction) towards sigma_down, then fresh noise."""
    extra_args = {} if extra_args is None else extra_args
    noise = generator_noise(x, extra_args, noise_sampler)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, batch_sigma(x, sigma), **extra_args)
        sigma_down, sigma_up = ancestral_split(sigma, sigma_next, eta)
        report(callback, i, x, sigma, denoised)
        if sigma_down == 0:
            x = x + eps_direction(x, sigma, denoised) * (sigma_down - sigma)
        else:
            lam, lam_down = log_snr_half(sigma), log_snr_half(sigma_down)
            h = lam_down - lam
            lam_mid = lam + 0.5 * h
            sigma_mid = sigma_of_log_snr_half(lam_mid)
            x_mid = (sigma_mid / sigma_of_log_snr_half(lam)) * x - (-h * 0.5).expm1() * denoised
            denoised_mid = model(x_mid, batch_sigma(x, sigma_mid), **extra_args)
            x = (sigma_of_log_snr_half(lam_down) / sigma_of_log_snr_half(lam)) * x - (-h).expm1() * denoised_mid
        if sigma_next > 0:
            x = x + noise(sigma, sigma_next) * s_noise * sigma_up
    return x


def _ddpm_step(x_scaled, sigma, sigma_next, eps, noise):
    """One DDPM posterior step in the variance-preserving space (x / sqrt(1 + sigma^2))."""
    abar = 1 / (sigma * sigma + 1)
    abar_next = 1 / (sigma_next * sigma_next + 1)
    alpha = abar / abar_next
    mean = (1.0 / alpha).sqrt() * (x_scaled - (1 - alpha) * eps / (1 - abar).sqrt())
    if sigma_next > 0:
        posterior_std = ((1 - alpha) * (1.0 - abar_next) / (1.0 - abar)).sqrt()
        mean = mean + posterior_std * noise(sigma, sigma_next)
    return mean


@torch.no_grad()
def sample_ddpm(model, x, sigmas, extra_args=None, callback=None, disable=None, noise_sampler=None):
    extra_args = {} if extra_args is None else extra_args
    noise = generator_noise(x, extra_args, noise_sampler)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, batch_sigma(x, sigma), **extra_args)
        report(callback, i, x, sigma, denoised)
        eps = (x - denoised) / sigma
        x = _ddpm_step(x / torch.sqrt(1.0 + sigma**2.0), sigma, sigma_next, eps, noise)
        if sigma_next != 0:
            x = x * torch.sqrt(1.0 + sigma_next**2.0)
    return x


@torch.no_grad()
def sample_lcm(model, x, sigmas, extra_args=None, callback=None, disable=None, noise_sampler=None):
    """Latent-consistency sampling: jump to x0, re-noise to the next sigma with fresh noise."""
    extra_args = {} if extra_args is None else extra_args
    noise = generator_noise(x, extra_args, noise_sampler)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, batch_sigma(x, sigma), **extra_args)
        report(callback, i, x, sigma, denoised)
        x = denoised
        if sigma_next > 0:
            x = noise(sigma, sigma_next) * sigma_next + x
    return x
