"""SA-Solver: stochastic Adams predictor-corrector in data prediction (arXiv 2309.05019).

Defaults as ComfyUI's sa_solver / sa_solver_pece: predictor order 3, corrector order 4, stochasticity tau = 1
while the target sigma lies in [percent_to_sigma(0.8), percent_to_sigma(0.2)] (inclusive), else tau = 0 (ODE);
orders are lowered for the last steps when the schedule ends at 0.  Noise comes from the seeded generator and
is drawn only for stochastic predictor steps; the corrector re-uses the predictor's noise.
"""

from __future__ import annotations

import torch

from .stochastic_common import batch_sigma, generator_noise, log_snr_half, report


def exponential_moments(lam_s, lam_t, count: int, tau: float) -> torch.Tensor:
    """J_p = k * integral_{lam_s}^{lam_t} exp(k (u - lam_t)) u^p du for p < count, k = 1 + tau^2.

    Integration by parts: J_p = (lam_t^p - lam_s^p exp(-k h)) - (p / k) J_{p-1}.
    """
    k = 1 + tau**2
    decay = (-k * (lam_t - lam_s)).exp()
    moments = []
    for p in range(count):
        boundary = lam_t**p - lam_s**p * decay
        moments.append(boundary if p == 0 else boundary - (p / k) * moments[-1])
    return torch.stack(moments)


def adams_weights(sigma_next, nodes: torch.Tensor, lam_s, lam_t, tau: float) -> torch.Tensor:
    """Weights of the x0 predictions at ``nodes`` (half log-SNRs) for one stochastic Adams step lam_s -> lam_t.

    They integrate the Lagrange interpolant of x0 against the step's exponential kernel: solve V^T b = J, with
    V the Vandermonde matrix of the nodes, then scale by alpha_t = sigma_next * exp(lam_t).
    """
    count = nodes.shape[0]
    moments = exponential_moments(lam_s, lam_t, count, tau)
    vandermonde_t = torch.vander(nodes, count, increasing=True).T
    weights = torch.linalg.solve(vandermonde_t, moments)
    return sigma_next * lam_t.exp() * weights


def _weighted_sum(weights, predictions):
    total = predictions[0] * weights[0]
    for w, pred in zip(weights[1:], predictions[1:]):
        total = total + pred * w
    return total


def _tau_window(model, window):
    if window is not None:
        return window
    sampling = getattr(model, "model_sampling", None)
    if sampling is None:  # the pipeline's GuidedDenoiser keeps the diffusion model as `.model`
        sampling = getattr(getattr(model, "model", None), "model_sampling", None)
    if sampling is None:
        raise ValueError("sa_solver needs model.model_sampling.percent_to_sigma or the tau_sigma_window option")
    return float(sampling.percent_to_sigma(0.2)), float(sampling.percent_to_sigma(0.8))


@torch.no_grad()
def sample_sa_solver(model, x, sigmas, extra_args=None, callback=None, disable=None, s_noise=1.0,
                     noise_sampler=None, predictor_order=3, corrector_order=4, use_pece=False, eta=1.0,
                     tau_sigma_window=None):
    """``tau_sigma_window = (sigma_high, sigma_low)``: where tau = eta; defaults from percent 0.2 / 0.8."""
    if len(sigmas) <= 1:
        return x
    extra_args = {} if extra_args is None else extra_args
    noise_source = generator_noise(x, extra_args, noise_sampler)
    sigma_high, sigma_low = _tau_window(model, tau_sigma_window)

    def tau_at(sigma) -> float:
        return eta if eta > 0 and sigma_high >= float(sigma) >= sigma_low else 0.0

    lambdas = log_snr_half(sigmas)
    history_len = max(predictor_order, corrector_order)
    lower_order_at_end = float(sigmas[-1]) == 0
    x_pred = x
    h, tau, step_noise = 0.0, 0.0, 0.0
    predictions = []
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x_pred, batch_sigma(x, sigma), **extra_args)
        report(callback, i, x_pred, sigma, denoised)
        predictions = (predictions + [denoised])[-history_len:]

        p_order = min(predictor_order, len(predictions))
        c_order = 0 if i == 0 or (sigma_next == 0 and not use_pece) else min(corrector_order, len(predictions))
        if lower_order_at_end:
            p_order = min(p_order, len(sigmas) - 2 - i)
            c_order = min(c_order, len(sigmas) - 1 - i)

        if c_order == 0:
            x = x_pred
        else:
            weights = adams_weights(sigma, lambdas[i - c_order + 1:i + 1], lambdas[i - 1], lambdas[i], tau)
            x = sigma / sigmas[i - 1] * (-(tau**2) * h).exp() * x + _weighted_sum(weights, predictions[-c_order:])
            if tau > 0 and s_noise > 0:
                x = x + step_noise
            if use_pece:
                denoised = model(x, batch_sigma(x, sigma), **extra_args)
                predictions[-1] = denoised

        if sigma_next == 0:
            x_pred = denoised
            continue
        tau = tau_at(sigma_next)
        weights = adams_weights(sigma_next, lambdas[i - p_order + 1:i + 1], lambdas[i], lambdas[i + 1], tau)
        h = lambdas[i + 1] - lambdas[i]
        x_pred = sigma_next / sigma * (-(tau**2) * h).exp() * x + _weighted_sum(weights, predictions[-p_order:])
        if tau > 0 and s_noise > 0:
            step_noise = noise_source(sigma, sigma_next) * sigma_next * (-2 * tau**2 * h).expm1().neg().sqrt() * s_noise
            x_pred = x_pred + step_noise
    return x_pred


@torch.no_grad()
def sample_sa_solver_pece(model, x, sigmas, extra_args=None, callback=None, disable=None, s_noise=1.0,
                          noise_sampler=None, predictor_order=3, corrector_order=4, eta=1.0, tau_sigma_window=None):
    """SA-Solver in PECE mode: the corrected state is evaluated again and replaces the last prediction."""
    return sample_sa_solver(model, x, sigmas, extra_args, callback, disable, s_noise, noise_sampler,
                            predictor_order, corrector_order, use_pece=True, eta=eta,
                            tau_sigma_window=tau_sigma_window)
