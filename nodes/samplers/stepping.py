"""Small helpers shared by the sampler modules."""
from __future__ import annotations

import torch


def rows_of(x: torch.Tensor) -> torch.Tensor:
    """Ones with one entry per batch row: sigma * rows_of(x) is the per-row sigma vector."""
    return x.new_ones([x.shape[0]])


def report(callback, i, x, sigma, denoised, sigma_hat=None) -> None:
    """Invoke a k-diffusion style step callback (no-op when callback is None)."""
    if callback is not None:
        hat = sigma if sigma_hat is None else sigma_hat
        callback({"i": i, "x": x, "sigma": sigma, "sigma_hat": hat, "denoised": denoised})


def to_d(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """ODE derivative dx/dsigma = (x - x0) / sigma (the eps estimate)."""
    return (x - denoised) / sigma
