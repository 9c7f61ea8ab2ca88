"""DPM-Solver++ SDE samplers driven by Brownian-tree noise (README §4 "B").

``X`` builds the tree on the CPU, ``X_gpu`` on the latent's device; on a CPU latent they are identical.
Lambda is the half log-SNR, -log(sigma) for the eps / v models.
"""

from __future__ import annotations

import torch

from .stochastic_common import (
    ancestral_split,
    batch_sigma,
    brownian_noise,
    log_snr_half,
    report,
    sigma_of_log_snr_half,
)


def _one_minus_exp(t):
    """1 - exp(t), accurate for small t."""
    return t.expm1().neg()


@torch.no_grad()
def _dpmpp_sde(model, x, sigmas, extra_args, callback, eta, s_noise, noise_sampler, r, on_cpu):
    """DPM-Solver++ (stochastic, single-step, two evaluations per step at lambda + r h and lambda + h)."""
    if len(sigmas) <= 1:
        return x
    extra_args = {} if extra_args is None else extra_args
    noise = brownian_noise(x, sigmas, extra_args, noise_sampler, on_cpu)
    weight_mid = 1 / (2 * r)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, batch_sigma(x, sigma), **extra_args)
        report(callback, i, x, sigma, denoised)
        if sigma_next == 0:
            x = denoised
            continue
        lam, lam_next = log_snr_half(sigma), log_snr_half(sigma_next)
        h = lam_next - lam
        lam_mid = lam + r * h
        sigma_mid = sigma_of_log_snr_half(lam_mid)
        alpha = sigma * lam.exp()
        alpha_mid = sigma_mid * lam_mid.exp()
        alpha_next = sigma_next * lam_next.exp()

        # stage 1: ancestral step to the intermediate point
        sd, su = ancestral_split(lam.neg().exp(), lam_mid.neg().exp(), eta)
        h_mid = sd.log().neg() - lam
        x_mid = (alpha_mid / alpha) * (-h_mid).exp() * x - alpha_mid * (-h_mid).expm1() * denoised
        if eta > 0 and s_noise > 0:
            x_mid = x_mid + alpha_mid * noise(sigma, sigma_mid) * s_noise * su
        denoised_mid = model(x_mid, batch_sigma(x, sigma_mid), **extra_args)

        # stage 2: full step with the blended prediction
        sd, su = ancestral_split(lam.neg().exp(), lam_next.neg().exp(), eta)
        h_full = sd.log().neg() - lam
        blended = (1 - weight_mid) * denoised + weight_mid * denoised_mid
        x = (alpha_next / alpha) * (-h_full).exp() * x - alpha_next * (-h_full).expm1() * blended
        if eta > 0 and s_noise > 0:
            x = x + alpha_next * noise(sigma, sigma_next) * s_noise * su
    return x


def sample_dpmpp_sde(model, x, sigmas, extra_args=None, callback=None, disable=None,
                     eta=1.0, s_noise=1.0, noise_sampler=None, r=1 / 2):
    return _dpmpp_sde(model, x, sigmas, extra_args, callback, eta, s_noise, noise_sampler, r, on_cpu=True)


def sample_dpmpp_sde_gpu(model, x, sigmas, extra_args=None, callback=None, disable=None,
                         eta=1.0, s_noise=1.0, noise_sampler=None, r=1 / 2):
    return _dpmpp_sde(model, x, sigmas, extra_args, callback, eta, s_noise, noise_sampler, r, on_cpu=False)


@torch.no_grad()
def _dpmpp_multistep_sde(model, x, sigmas, extra_args, callback, eta, s_noise, noise_sampler, order,
                         solver_type, on_cpu):
    """DPM-Solver++(2M / 3M) SDE: multistep data-prediction update plus exact-variance Brownian noise."""
    if len(sigmas) <= 1:
        return x
    if solver_type not in ("heun", "midpoint"):
        raise ValueError("solver_type must be 'heun' or 'midpoint'")
    extra_args = {} if extra_args is None else extra_args
    noise = brownian_noise(x, sigmas, extra_args, noise_sampler, on_cpu)
    history = []  # (denoised, h) of earlier steps, newest first
    h = None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, batch_sigma(x, sigma), **extra_args)
        report(callback, i, x, sigma, denoised)
        if sigma_next == 0:
            x = denoised
        else:
            lam, lam_next = log_snr_half(sigma), log_snr_half(sigma_next)
            h = lam_next - lam
            h_eta = h * (eta + 1)
            alpha_next = sigma_next * lam_next.exp()
            x = sigma_next / sigma * (-h * eta).exp() * x + alpha_next * _one_minus_exp(-h_eta) * denoised
            x = x + _multistep_correction(denoised, history, h, h_eta, alpha_next, order, solver_type)
            if eta > 0 and s_noise > 0:
                x = x + noise(sigma, sigma_next) * sigma_next * _one_minus_exp(-2 * h * eta).sqrt() * s_noise
        history = ([(denoised, h)] + history)[: order - 1]
    return x


def _multistep_correction(denoised, history, h, h_eta, alpha_next, order, solver_type):
    """Higher-order term from the previous x0 predictions (history: [(x0, h) newest first])."""
    have_two = len(history) >= 2 and history[1][1] is not None
    have_one = len(history) >= 1 and history[0][1] is not None
    if order == 3 and have_two:
        (den_1, h_1), (den_2, h_2) = history[0], history[1]
        r0, r1 = h_1 / h, h_2 / h
        d1_0 = (denoised - den_1) / r0
        d1_1 = (den_1 - den_2) / r1
        d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
        d2 = (d1_0 - d1_1) / (r0 + r1)
        phi_2 = h_eta.neg().expm1() / h_eta + 1
        phi_3 = phi_2 / h_eta - 0.5
        return (alpha_next * phi_2) * d1 - (alpha_next * phi_3) * d2
    if not have_one:
        return 0.0
    den_1, h_1 = history[0]
    r = h_1 / h
    if order == 3:
        phi_2 = h_eta.neg().expm1() / h_eta + 1
        return (alpha_next * phi_2) * ((denoised - den_1) / r)
    if solver_type == "heun":
        return alpha_next * (_one_minus_exp(-h_eta) / (-h_eta) + 1) * (1 / r) * (denoised - den_1)
    return 0.5 * alpha_next * _one_minus_exp(-h_eta) * (1 / r) * (denoised - den_1)


def _multistep_sampler(order, solver_type, on_cpu):
    def sample(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0,
               noise_sampler=None, solver_type=solver_type):
        return _dpmpp_multistep_sde(model, x, sigmas, extra_args, callback, eta, s_noise, noise_sampler, order,
                                    solver_type, on_cpu)

    return sample


sample_dpmpp_2m_sde = _multistep_sampler(2, "midpoint", on_cpu=True)
sample_dpmpp_2m_sde_gpu = _multistep_sampler(2, "midpoint", on_cpu=False)
sample_dpmpp_2m_sde_heun = _multistep_sampler(2, "heun", on_cpu=True)
sample_dpmpp_2m_sde_heun_gpu = _multistep_sampler(2, "heun", on_cpu=False)
sample_dpmpp_3m_sde = _multistep_sampler(3, "midpoint", on_cpu=True)
sample_dpmpp_3m_sde_gpu = _multistep_sampler(3, "midpoint", on_cpu=False)
