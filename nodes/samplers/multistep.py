"""Linear multistep samplers on the probability-flow ODE dx/dsigma = eps(x, sigma).

All of them integrate a polynomial through the last few eps estimates over the next
sigma interval; they differ in the interpolation variable and the coefficients:
lms (sigma, numerical quadrature), ipndm (fixed Adams-Bashforth), ipndm_v (variable-step
Adams-Bashforth), deis (tAB-DEIS: polynomial in VP time), plms (PNDM's pseudo-LMS).
"""
from __future__ import annotations

import numpy as np
import torch

from .stepping import report, rows_of, to_d

# Adams-Bashforth weights for equally spaced steps, newest derivative first.
ADAMS_BASHFORTH = {
    1: (1.0,),
    2: (3 / 2, -1 / 2),
    3: (23 / 12, -16 / 12, 5 / 12),
    4: (55 / 24, -59 / 24, 37 / 24, -9 / 24),
}


def lagrange_basis(nodes, j: int):
    """Callable l_j(tau) of the Lagrange basis on `nodes`."""

    def basis(tau):
        value = 1.0
        for k, node in enumerate(nodes):
            if k != j:
                value = value * ((tau - node) / (nodes[j] - node))
        return value

    return basis


def lms_coefficients(sigmas: np.ndarray, i: int, order: int) -> list[float]:
    """Integrals over [sigma_i, sigma_i+1] of the Lagrange basis on sigma_i, sigma_i-1, ... (quadrature)."""
    from scipy import integrate

    nodes = [sigmas[i - k] for k in range(order)]
    return [integrate.quad(lagrange_basis(nodes, j), sigmas[i], sigmas[i + 1], epsrel=1e-4)[0] for j in range(order)]


def adams_bashforth_coefficients(nodes: list[float], start: float, end: float) -> list[float]:
    """Exact integrals over [start, end] of the Lagrange basis on `nodes` (variable-step AB)."""
    coefficients = []
    for j in range(len(nodes)):
        poly = np.polynomial.Polynomial([1.0])
        for k, node in enumerate(nodes):
            if k != j:
                poly = poly * np.polynomial.Polynomial([-node, 1.0]) / (nodes[j] - node)
        antiderivative = poly.integ()
        coefficients.append(float(antiderivative(end) - antiderivative(start)))
    return coefficients


def _weighted_sum(weights, tensors) -> torch.Tensor:
    total = None
    for w, t in zip(weights, tensors):
        total = w * t if total is None else total + w * t
    return total


@torch.no_grad()
def sample_lms(model, x, sigmas, extra_args=None, callback=None, disable=None, order=4):
    """Linear multistep in sigma with quadrature coefficients; the step to sigma 0 returns x0."""
    extra_args = extra_args or {}
    s_in = rows_of(x)
    # float32 numpy nodes: the Lagrange integrand is then evaluated in float32 (numpy's scalar
    # promotion rules), which is what ComfyUI's numbers reflect (matters for ill-conditioned schedules).
    sigmas_np = sigmas.detach().cpu().numpy()
    history: list[torch.Tensor] = []  # newest first
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        history = [to_d(x, sigmas[i], denoised)] + history[: order - 1]
        report(callback, i, x, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        coefficients = lms_coefficients(sigmas_np, i, min(i + 1, order))
        x = x + _weighted_sum(coefficients, history)
    return x


@torch.no_grad()
def sample_ipndm(model, x, sigmas, extra_args=None, callback=None, disable=None, max_order=4):
    """Improved PNDM (Zhang & Chen 2023): fixed Adams-Bashforth weights on eps, lower orders to warm up.

    The step to sigma 0 returns x0.
    """
    extra_args = extra_args or {}
    s_in = rows_of(x)
    history: list[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * s_in, **extra_args)
        report(callback, i, x, sigma, denoised)
        history = [to_d(x, sigma, denoised)] + history[: max_order - 1]
        if sigma_next == 0:
            x = denoised
            continue
        weights = ADAMS_BASHFORTH[len(history)]
        x = x + (sigma_next - sigma) * _weighted_sum(weights, history)
    return x


def ipndm_v_weights(h: list[float]) -> list[float]:
    """Step-size dependent weights of ipndm_v, newest derivative first, in units of the step h[0].

    h = [h_n, h_n-1, ...] are the current and previous sigma steps.  Orders 1-2 are the exact
    variable-step Adams-Bashforth weights; orders 3-4 reproduce ComfyUI's numbers, which are
    not the exact AB3/AB4 integrals for uneven steps (order 4 is not AB4 even for even steps;
    its weights need not sum to 1).  Identified from the golden trajectories.
    """
    order = len(h)
    if order == 1:
        return [1.0]
    ratio = h[0] / h[1]
    if order == 2:
        return [(2 + ratio) / 2, -ratio / 2]
    h0, h1, h2 = h[0], h[1], h[2]
    temp1 = (1 - h0 / (3 * (h0 + h1)) * (h0 * (h0 + h1)) / (h1 * (h1 + h2))) / 2
    if order == 3:
        return [(2 + ratio) / 2 + temp1, -ratio / 2 - (1 + h1 / h2) * temp1, temp1 * h1 / h2]
    h3 = h[3]
    temp2 = (
        (1 - h0 / (3 * (h0 + h1))) / 2 + (1 - h0 / (2 * (h0 + h1))) * h0 / (6 * (h0 + h1 + h2))
    ) * (h0 * (h0 + h1) * (h0 + h1 + h2)) / (h1 * (h1 + h2) * (h1 + h2 + h3))
    spread = h1 * (h1 + h2) / (h2 * (h2 + h3))
    return [
        (2 + ratio) / 2 + temp1 + temp2,
        -ratio / 2 - (1 + h1 / h2) * temp1 - (1 + h1 / h2 + spread) * temp2,
        temp1 * h1 / h2 + (h1 / h2 + spread * (1 + h2 / h3)) * temp2,
        -temp2 * spread * h1 / h2,
    ]


@torch.no_grad()
def sample_ipndm_v(model, x, sigmas, extra_args=None, callback=None, disable=None, max_order=4):
    """iPNDM with step-size dependent weights; the step to sigma 0 returns x0."""
    extra_args = extra_args or {}
    s_in = rows_of(x)
    history: list[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * s_in, **extra_args)
        report(callback, i, x, sigma, denoised)
        history = [to_d(x, sigma, denoised)] + history[: max_order - 1]
        if sigma_next == 0:
            x = denoised
            continue
        steps = [sigmas[i + 1 - k] - sigmas[i - k] for k in range(len(history))]
        x = x + (sigma_next - sigma) * _weighted_sum(ipndm_v_weights(steps), history)
    return x


def _vp_fit(sigma_min: float = 0.002, sigma_max: float = 80.0, eps_s: float = 1e-3):
    """EDM's VP-SDE fit: beta_d, beta_min so that sigma(eps_s) = sigma_min and sigma(1) = sigma_max."""
    log_min = torch.log(torch.tensor(sigma_min) ** 2 + 1)
    log_max = torch.log(torch.tensor(sigma_max) ** 2 + 1)
    beta_d = 2 * (log_min / eps_s - log_max) / (eps_s - 1)
    beta_min = log_max - 0.5 * beta_d
    return beta_d, beta_min


def sigma_to_vp_time(sigmas: torch.Tensor, beta_d: torch.Tensor, beta_min: torch.Tensor) -> torch.Tensor:
    """Invert sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1)."""
    return ((beta_min**2 + 2 * beta_d * (sigmas**2 + 1).log()).sqrt() - beta_min) / beta_d


def deis_coefficients(sigmas: torch.Tensor, max_order: int, n_quad: int = 10000) -> list[list[torch.Tensor]]:
    """tAB-DEIS weights: integrals of dsigma/dt times the Lagrange basis in VP time t.

    The integrals are Riemann sums on `n_quad` points (as the reference implementation does;
    the sum's bias is part of the method's numbers).
    """
    beta_d, beta_min = _vp_fit()
    beta_0, beta_1 = beta_min, beta_d + beta_min
    times = sigma_to_vp_time(sigmas.detach().cpu().to(torch.float32), beta_d, beta_min)
    all_coefficients: list[list[torch.Tensor]] = []
    for i in range(len(times) - 1):
        order = min(i, max_order - 1)
        if order == 0:
            all_coefficients.append([])
            continue
        t_cur, t_next = times[i], times[i + 1]
        taus = torch.linspace(t_cur, t_next, n_quad)
        dtau = (t_next - t_cur) / n_quad
        log_alpha = -0.5 * taus**2 * (beta_1 - beta_0) - taus * beta_0
        alpha = log_alpha.exp()
        d_log_alpha = -taus * (beta_1 - beta_0) - beta_0
        dsigma_dt = -0.5 * d_log_alpha / torch.sqrt(alpha * (1 - alpha))
        nodes = [times[i - k] for k in range(order + 1)]
        all_coefficients.append(
            [torch.sum(dsigma_dt * lagrange_basis(nodes, j)(taus)) * dtau for j in range(order + 1)]
        )
    return all_coefficients


@torch.no_grad()
def sample_deis(model, x, sigmas, extra_args=None, callback=None, disable=None, max_order=3):
    """DEIS (Zhang & Chen 2023), tAB variant; Euler for the first step and the step to sigma 0."""
    extra_args = extra_args or {}
    s_in = rows_of(x)
    coefficients = deis_coefficients(sigmas, max_order)
    history: list[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * s_in, **extra_args)
        report(callback, i, x, sigma, denoised)
        history = [to_d(x, sigma, denoised)] + history[: max_order - 1]
        if sigma_next <= 0 or len(history) == 1:
            x = x + (sigma_next - sigma) * history[0]
        else:
            x = x + _weighted_sum([c.to(x.dtype) for c in coefficients[i]], history)
    return x


@torch.no_grad()
def sample_plms(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """PLMS (Liu et al. 2022, "Pseudo Numerical Methods for Diffusion Models").

    The transfer step x -> x0 + sigma_next * eps is DDIM in sigma space; eps is combined with
    fixed 4th-order Adams-Bashforth weights after a pseudo improved-Euler first step.
    """
    extra_args = extra_args or {}
    s_in = rows_of(x)
    history: list[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * s_in, **extra_args)
        report(callback, i, x, sigma, denoised)
        eps = to_d(x, sigma, denoised)
        if not history:
            if sigma_next > 0:
                x_trial = x + (sigma_next - sigma) * eps
                eps_trial = to_d(x_trial, sigma_next, model(x_trial, sigma_next * s_in, **extra_args))
                eps_prime = (eps + eps_trial) / 2
            else:
                eps_prime = eps
        else:
            eps_prime = _weighted_sum(ADAMS_BASHFORTH[min(len(history) + 1, 4)], [eps] + history)
        history = [eps] + history[:2]
        x = x + (sigma_next - sigma) * eps_prime
    return x

