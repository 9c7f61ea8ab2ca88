"""Stochastic exponential-integrator samplers with generator noise: ER-SDE-Solver-3 and SEEDS-2 / SEEDS-3.

All work in data prediction with lambda = -log(sigma) (eps / v models, alpha = 1).
"""

from __future__ import annotations

import torch

from .stochastic_common import batch_sigma, generator_noise, log_snr_half, report, sigma_of_log_snr_half


def _h_phi_1(h):
    """h * phi_1(h) = exp(h) - 1."""
    return torch.expm1(h)


def _h_phi_2(h):
    """h * phi_2(h) = (exp(h) - 1 - h) / h."""
    return (torch.expm1(h) - h) / h


def er_sde_noise_scaler(lam):
    """Default ER-SDE noise-scale function  f(x) = x (exp(x^0.3) + 10)  (arXiv 2309.06169)."""
    return lam * ((lam**0.3).exp() + 10.0)


@torch.no_grad()
def sample_er_sde(model, x, sigmas, extra_args=None, callback=None, disable=None, s_noise=1.0, noise_sampler=None,
                  noise_scaler=None, max_stage=3):
    """Extended reverse-time SDE solver (VP ER-SDE-Solver-3), stages chosen by the available history.

    The stage-2/3 integrals of 1/f and (lambda - lambda_s)/f over [er_lambda_t, er_lambda_s] are Riemann sums over
    200 points, as in the reference implementation.
    """
    extra_args = {} if extra_args is None else extra_args
    noise = generator_noise(x, extra_args, noise_sampler)
    scaler = er_sde_noise_scaler if noise_scaler is None else noise_scaler
    points = 200.0
    point_index = torch.arange(0, points, dtype=torch.float32, device=x.device)
    er_lambdas = log_snr_half(sigmas).neg().exp()  # sigma / alpha
    old_denoised = None
    old_slope = None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, batch_sigma(x, sigma), **extra_args)
        report(callback, i, x, sigma, denoised)
        stage = min(max_stage, i + 1)
        if sigma_next == 0:
            x = denoised
        else:
            lam_s, lam_t = er_lambdas[i], er_lambdas[i + 1]
            alpha_s = sigma / lam_s
            alpha_t = sigma_next / lam_t
            ratio = scaler(lam_t) / scaler(lam_s)
            x = (alpha_t / alpha_s) * ratio * x + alpha_t * (1 - ratio) * denoised
            if stage >= 2:
                dt = lam_t - lam_s
                step = -dt / points
                grid = lam_t + point_index * step
                scaled_grid = scaler(grid)
                integral_1 = torch.sum(1 / scaled_grid) * step
                slope = (denoised - old_denoised) / (lam_s - er_lambdas[i - 1])
                x = x + alpha_t * (dt + integral_1 * scaler(lam_t)) * slope
                if stage >= 3:
                    integral_2 = torch.sum((grid - lam_s) / scaled_grid) * step
                    curvature = (slope - old_slope) / ((lam_s - er_lambdas[i - 2]) / 2)
                    x = x + alpha_t * ((dt**2) / 2 + integral_2 * scaler(lam_t)) * curvature
                old_slope = slope
            if s_noise > 0:
                noise_std = (lam_t**2 - lam_s**2 * ratio**2).sqrt().nan_to_num(nan=0.0)
                x = x + alpha_t * noise(sigma, sigma_next) * s_noise * noise_std
        old_denoised = denoised
    return x


def _sub_step(x, sigma, sigma_sub, alpha_sub, r_h, r_h_eta, combined):
    """Exponential step from sigma to an intermediate point lambda + r h, data prediction ``combined``."""
    return sigma_sub / sigma * (-r_h).exp() * x - alpha_sub * _h_phi_1(-r_h_eta) * combined


@torch.no_grad()
def sample_seeds_2(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0,
                   noise_sampler=None, r=0.5, solver_type="phi_1"):
    """SEEDS-2 (arXiv 2305.14267): two evaluations per step; the Brownian path of each sub-interval is shared."""
    if solver_type not in ("phi_1", "phi_2"):
        raise ValueError("solver_type must be 'phi_1' or 'phi_2'")
    extra_args = {} if extra_args is None else extra_args
    noise = generator_noise(x, extra_args, noise_sampler)
    add_noise = eta > 0 and s_noise > 0
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, batch_sigma(x, sigma), **extra_args)
        report(callback, i, x, sigma, denoised)
        if sigma_next == 0:
            x = denoised
            continue
        lam, lam_next = log_snr_half(sigma), log_snr_half(sigma_next)
        h = lam_next - lam
        h_eta = h * (eta + 1)
        lam_1 = torch.lerp(lam, lam_next, r)
        sigma_1 = sigma_of_log_snr_half(lam_1)
        alpha_1 = sigma_1 * lam_1.exp()
        alpha_next = sigma_next * lam_next.exp()

        x_1 = _sub_step(x, sigma, sigma_1, alpha_1, r * h * eta, r * h_eta, denoised)
        if add_noise:
            path = (-2 * r * h * eta).expm1().neg().sqrt() * noise(sigma, sigma_1)
            x_1 = x_1 + path * sigma_1 * s_noise
        denoised_1 = model(x_1, batch_sigma(x, sigma_1), **extra_args)

        if solver_type == "phi_1":
            x = _sub_step(x, sigma, sigma_next, alpha_next, h * eta, h_eta, torch.lerp(denoised, denoised_1, 1 / (2 * r)))
        else:
            b2 = _h_phi_2(-h_eta) / r
            b1 = _h_phi_1(-h_eta) - b2
            x = sigma_next / sigma * (-h * eta).exp() * x - alpha_next * (b1 * denoised + b2 * denoised_1)
        if add_noise:
            decay = (r - 1) * h * eta
            path = path * decay.exp() + decay.mul(2).expm1().neg().sqrt() * noise(sigma_1, sigma_next)
            x = x + path * sigma_next * s_noise
    return x


@torch.no_grad()
def sample_seeds_3(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0,
                   noise_sampler=None, r_1=1.0 / 3, r_2=2.0 / 3):
    """SEEDS-3 (arXiv 2305.14267): three evaluations per step at lambda, lambda + r_1 h, lambda + r_2 h."""
    extra_args = {} if extra_args is None else extra_args
    noise = generator_noise(x, extra_args, noise_sampler)
    add_noise = eta > 0 and s_noise > 0
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, batch_sigma(x, sigma), **extra_args)
        report(callback, i, x, sigma, denoised)
        if sigma_next == 0:
            x = denoised
            continue
        lam, lam_next = log_snr_half(sigma), log_snr_half(sigma_next)
        h = lam_next - lam
        h_eta = h * (eta + 1)
        lam_1, lam_2 = torch.lerp(lam, lam_next, r_1), torch.lerp(lam, lam_next, r_2)
        sigma_1, sigma_2 = sigma_of_log_snr_half(lam_1), sigma_of_log_snr_half(lam_2)
        alpha_1, alpha_2 = sigma_1 * lam_1.exp(), sigma_2 * lam_2.exp()
        alpha_next = sigma_next * lam_next.exp()

        x_1 = _sub_step(x, sigma, sigma_1, alpha_1, r_1 * h * eta, r_1 * h_eta, denoised)
        if add_noise:
            path = (-2 * r_1 * h * eta).expm1().neg().sqrt() * noise(sigma, sigma_1)
            x_1 = x_1 + path * sigma_1 * s_noise
        denoised_1 = model(x_1, batch_sigma(x, sigma_1), **extra_args)

        a_2 = r_2 / r_1 * _h_phi_2(-r_2 * h_eta)
        a_1 = _h_phi_1(-r_2 * h_eta) - a_2
        x_2 = sigma_2 / sigma * (-r_2 * h * eta).exp() * x - alpha_2 * (a_1 * denoised + a_2 * denoised_1)
        if add_noise:
            decay = (r_1 - r_2) * h * eta
            path = path * decay.exp() + decay.mul(2).expm1().neg().sqrt() * noise(sigma_1, sigma_2)
            x_2 = x_2 + path * sigma_2 * s_noise
        denoised_2 = model(x_2, batch_sigma(x, sigma_2), **extra_args)

        b_3 = _h_phi_2(-h_eta) / r_2
        b_1 = _h_phi_1(-h_eta) - b_3
        x = sigma_next / sigma * (-h * eta).exp() * x - alpha_next * (b_1 * denoised + b_3 * denoised_2)
        if add_noise:
            decay = (r_2 - 1) * h * eta
            path = path * decay.exp() + decay.mul(2).expm1().neg().sqrt() * noise(sigma_2, sigma_next)
            x = x + path * sigma_next * s_noise
    return x
