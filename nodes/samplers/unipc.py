"""UniPC (Zhao et al. 2023): multistep predictor-corrector with data prediction.

Works in the variance-preserving frame x_vp = x / sqrt(1 + sigma^2) with alpha = 1/sqrt(1+sigma^2),
std = sigma * alpha and lambda = log(alpha / std).  Variants: bh1 (B(h) = h), bh2 (B(h) = e^h - 1).
A final sigma of 0 is replaced by 0.001 (lambda must stay finite).
Callbacks carry the state in the VP frame (x / sqrt(1 + sigma^2)), as ComfyUI's do.
"""
from __future__ import annotations

import torch

from .stepping import rows_of

FINAL_SIGMA = 0.001


def vp_log_alpha(sigma: torch.Tensor) -> torch.Tensor:
    return 0.5 * torch.log(1 / (sigma * sigma + 1))


def vp_alpha(sigma: torch.Tensor) -> torch.Tensor:
    return torch.exp(vp_log_alpha(sigma))


def vp_std(sigma: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(1.0 - torch.exp(2.0 * vp_log_alpha(sigma)))


def vp_lambda(sigma: torch.Tensor) -> torch.Tensor:
    log_alpha = vp_log_alpha(sigma)
    return log_alpha - 0.5 * torch.log(1.0 - torch.exp(2.0 * log_alpha))


def _coefficients(rks: torch.Tensor, h: torch.Tensor, order: int, variant: str):
    """UniPC's R matrix (powers of r_k) and b vector (phi-function moments over B(h))."""
    hh = -h
    h_phi_1 = torch.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1
    b_h = hh if variant == "bh1" else torch.expm1(hh)
    factorial = 1
    rows, b = [], []
    for i in range(1, order + 1):
        rows.append(torch.pow(rks, i - 1))
        b.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    return torch.stack(rows), torch.stack(b), h_phi_1, b_h


def unipc_step(eval_x0, x, prev_x0, prev_sigmas, sigma, order: int, variant: str, use_corrector: bool):
    """One UniP predictor (+ UniC corrector) step from prev_sigmas[-1] to sigma.

    Returns (x_next, x0 at x_next or None when the corrector is off).
    """
    sigma_prev = prev_sigmas[-1]
    x0_prev = prev_x0[-1]
    lambda_prev = vp_lambda(sigma_prev)
    h = vp_lambda(sigma) - lambda_prev
    alpha_t = torch.exp(vp_log_alpha(sigma))
    rks, diffs = [], []
    for k in range(1, order):
        rk = (vp_lambda(prev_sigmas[-(k + 1)]) - lambda_prev) / h
        rks.append(rk)
        diffs.append((prev_x0[-(k + 1)] - x0_prev) / rk)
    rks.append(torch.ones_like(h))
    r_matrix, b, h_phi_1, b_h = _coefficients(torch.stack(rks), h, order, variant)

    x_linear = vp_std(sigma) / vp_std(sigma_prev) * x - alpha_t * h_phi_1 * x0_prev
    if diffs:
        rhos_p = torch.tensor([0.5]) if order == 2 else torch.linalg.solve(r_matrix[:-1, :-1], b[:-1])
        pred_res = sum(rho * d for rho, d in zip(rhos_p, diffs))
        x_next = x_linear - alpha_t * b_h * pred_res
    else:
        x_next = x_linear
    if not use_corrector:
        return x_next, None
    rhos_c = torch.tensor([0.5]) if order == 1 else torch.linalg.solve(r_matrix, b)
    x0_next = eval_x0(x_next, sigma)
    corr_res = sum(rho * d for rho, d in zip(rhos_c[:-1], diffs)) if diffs else 0
    x_next = x_linear - alpha_t * b_h * (corr_res + rhos_c[-1] * (x0_next - x0_prev))
    return x_next, x0_next


@torch.no_grad()
def _sample_unipc(model, x, sigmas, extra_args, callback, variant: str):
    extra_args = extra_args or {}
    s_in = rows_of(x)
    sigmas = sigmas.clone()
    if sigmas[-1] == 0:
        sigmas[-1] = FINAL_SIGMA

    def eval_x0(x_vp, sigma):
        return model(x_vp / vp_alpha(sigma), sigma * s_in, **extra_args)

    steps = len(sigmas) - 1
    order = max(1, min(3, len(sigmas) - 2))
    x = x / torch.sqrt(1.0 + sigmas[0] ** 2.0)
    prev_sigmas = [sigmas[0]]
    prev_x0 = [eval_x0(x, sigmas[0])]
    if callback is not None:
        callback({"i": 0, "x": x, "sigma": sigmas[0], "sigma_hat": sigmas[0], "denoised": prev_x0[-1]})
    for step in range(1, steps + 1):
        step_order = min(order, step, steps + 1 - step)
        use_corrector = step != steps
        x, x0 = unipc_step(eval_x0, x, prev_x0, prev_sigmas, sigmas[step], step_order, variant, use_corrector)
        prev_sigmas = (prev_sigmas + [sigmas[step]])[-order:]
        if step < steps:
            x0 = eval_x0(x, sigmas[step]) if x0 is None else x0
            prev_x0 = (prev_x0 + [x0])[-order:]
        # ComfyUI reports steps 0 .. steps-1; the last report comes after the final two updates.
        if callback is not None and (step < steps - 1 or (step == steps and steps > 1)):
            i = min(step, steps - 1)
            callback({"i": i, "x": x, "sigma": sigmas[step], "sigma_hat": sigmas[step], "denoised": prev_x0[-1]})
    return x / vp_alpha(sigmas[-1])


def sample_uni_pc(model, x, sigmas, extra_args=None, callback=None, disable=None):
    return _sample_unipc(model, x, sigmas, extra_args, callback, "bh1")


def sample_uni_pc_bh2(model, x, sigmas, extra_args=None, callback=None, disable=None):
    return _sample_unipc(model, x, sigmas, extra_args, callback, "bh2")
