"""DPM-Solver (Lu et al. 2022) single-step solvers in lambda = -log sigma, noise prediction.

dpm_fast: a fixed budget of network evaluations split into 3rd-order steps on a uniform
lambda grid.  dpm_adaptive: embedded 2nd/3rd-order pair with an integral step-size controller.
Both only use the first and last non-zero sigma of the schedule and stop there (no jump to 0).
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from .stepping import rows_of

EpsFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def _sigma(t: torch.Tensor) -> torch.Tensor:
    return t.neg().exp()


def _lambda(sigma: torch.Tensor) -> torch.Tensor:
    return sigma.log().neg()


def _eps_fn(model, x_like: torch.Tensor, extra_args: dict) -> EpsFn:
    """(x, lambda) -> (eps, x0)."""
    s_in = rows_of(x_like)

    def eps_at(x: torch.Tensor, t: torch.Tensor):
        sigma = _sigma(t)
        denoised = model(x, sigma * s_in, **extra_args)
        return (x - denoised) / sigma, denoised

    return eps_at


def dpm_solver_1(x, t, t_next, eps):
    return x - _sigma(t_next) * torch.expm1(t_next - t) * eps


def dpm_solver_2(eps_at: EpsFn, x, t, t_next, eps, r1=0.5):
    """Second-order step; returns (x_next, eps at the intermediate point)."""
    h = t_next - t
    s1 = t + r1 * h
    u1 = x - _sigma(s1) * torch.expm1(r1 * h) * eps
    eps_r1, _ = eps_at(u1, s1)
    x_next = x - _sigma(t_next) * torch.expm1(h) * eps - _sigma(t_next) / (2 * r1) * torch.expm1(h) * (eps_r1 - eps)
    return x_next, eps_r1


def dpm_solver_3(eps_at: EpsFn, x, t, t_next, eps, r1=1 / 3, r2=2 / 3, eps_r1=None):
    h = t_next - t
    s1 = t + r1 * h
    s2 = t + r2 * h
    if eps_r1 is None:
        u1 = x - _sigma(s1) * torch.expm1(r1 * h) * eps
        eps_r1, _ = eps_at(u1, s1)
    u2 = (
        x
        - _sigma(s2) * torch.expm1(r2 * h) * eps
        - _sigma(s2) * (r2 / r1) * (torch.expm1(r2 * h) / (r2 * h) - 1) * (eps_r1 - eps)
    )
    eps_r2, _ = eps_at(u2, s2)
    return x - _sigma(t_next) * torch.expm1(h) * eps - _sigma(t_next) / r2 * (torch.expm1(h) / h - 1) * (eps_r2 - eps)


def _end_sigmas(sigmas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    sigma_min = sigmas[-1] if sigmas[-1] != 0 else sigmas[-2]
    if sigma_min <= 0 or sigmas[0] <= 0:
        raise ValueError("dpm_fast / dpm_adaptive need non-zero start and end sigmas")
    return sigmas[0], sigma_min


def fast_step_orders(nfe: int) -> list[int]:
    """Split `nfe` evaluations into 3rd-order steps, finishing with lower orders."""
    steps = nfe // 3 + 1
    if nfe % 3 == 0:
        return [3] * (steps - 2) + [2, 1]
    return [3] * (steps - 1) + [nfe % 3]


@torch.no_grad()
def sample_dpm_fast(model, x, sigmas, extra_args=None, callback=None, disable=None):
    extra_args = extra_args or {}
    if len(sigmas) <= 1:
        return x
    sigma_max, sigma_min = _end_sigmas(sigmas)
    eps_at = _eps_fn(model, x, extra_args)
    orders = fast_step_orders(len(sigmas) - 1)
    ts = torch.linspace(float(_lambda(sigma_max)), float(_lambda(sigma_min)), len(orders) + 1)
    for i, order in enumerate(orders):
        t, t_next = ts[i], ts[i + 1]
        eps, denoised = eps_at(x, t)
        if callback is not None:
            callback({"i": i, "x": x, "sigma": _sigma(t), "sigma_hat": _sigma(t), "denoised": denoised})
        if order == 1:
            x = dpm_solver_1(x, t, t_next, eps)
        elif order == 2:
            x, _ = dpm_solver_2(eps_at, x, t, t_next, eps)
        else:
            x = dpm_solver_3(eps_at, x, t, t_next, eps)
    return x


@torch.no_grad()
def sample_dpm_adaptive(
    model,
    x,
    sigmas,
    extra_args=None,
    callback=None,
    disable=None,
    rtol=0.05,
    atol=0.0078,
    h_init=0.05,
    accept_safety=0.81,
):
    """Order-3 adaptive DPM-Solver; error from the embedded (r1 = 1/3) 2nd-order solution."""
    extra_args = extra_args or {}
    if len(sigmas) <= 1:
        return x
    order = 3
    sigma_max, sigma_min = _end_sigmas(sigmas)
    eps_at = _eps_fn(model, x, extra_args)
    t_end = _lambda(sigma_min)
    s = _lambda(sigma_max)
    atol_t, rtol_t = torch.tensor(atol), torch.tensor(rtol)
    h = h_init
    x_prev = x
    attempt = 0
    while s < t_end - 1e-5:
        t = torch.minimum(t_end, s + h)
        eps, denoised = eps_at(x, s)
        x_low, eps_r1 = dpm_solver_2(eps_at, x, s, t, eps, r1=1 / 3)
        x_high = dpm_solver_3(eps_at, x, s, t, eps, eps_r1=eps_r1)
        delta = torch.maximum(atol_t, rtol_t * torch.maximum(x_low.abs(), x_prev.abs()))
        error = torch.linalg.norm((x_low - x_high) / delta) / x.numel() ** 0.5
        # Integral-only controller with an arctan limiter on the step factor.
        factor = 1 + math.atan((1 / (float(error) + 1e-8)) ** (1 / order) - 1)
        if factor >= accept_safety:
            x_prev = x_low
            x = x_high
            s = t
        h *= factor
        if callback is not None:
            callback({"i": attempt, "x": x, "sigma": _sigma(s), "sigma_hat": _sigma(s), "denoised": denoised})
        attempt += 1
    return x
