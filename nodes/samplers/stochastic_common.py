"""Helpers shared by the stochastic samplers (sigma algebra, noise-source selection, the denoiser protocol).

Denoiser protocol (what ``pipeline.py`` hands to a sampler as ``model``):

* ``model(x, sigma_batch, **extra_args) -> denoised`` - the CFG-combined x0 prediction.
* ``model(x, sigma_batch, **extra_args, return_uncond=True) -> (denoised, uncond_denoised)`` - only called by the
  samplers flagged ``needs_uncond_denoised`` (the *_cfg_pp family).  For those calls the wrapper must evaluate the
  negative conditioning even at cfg == 1 (ComfyUI disables its cfg-1 shortcut for these samplers) and combine with
  ``uncond + (cond - uncond) * cfg``; ``uncond_denoised`` is the negative prediction before any inpaint blending.
* ``extra_args["seed"]`` - the KSampler seed; seeds the per-step noise.  Missing -> non-reproducible global RNG.
* ``model.model_sampling.percent_to_sigma(p)`` - only sa_solver needs it (its stochastic window); a sampler option
  ``tau_sigma_window=(high, low)`` overrides it.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from .noise_samplers import GeneratorNoise, brownian_noise_for


def ancestral_split(sigma, sigma_next, eta: float = 1.0):
    """(sigma_down, sigma_up): deterministic target and fresh-noise std of an ancestral step of strength eta.

    sigma_up = min(sigma_next, eta * sqrt(sigma_next^2 (sigma^2 - sigma_next^2) / sigma^2)),
    sigma_down = sqrt(sigma_next^2 - sigma_up^2); with eta == 0 the step is the plain ODE step.
    """
    if not eta:
        return sigma_next, 0.0
    variance_fraction = sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2
    sigma_up = min(sigma_next, eta * variance_fraction**0.5)
    sigma_down = (sigma_next**2 - sigma_up**2) ** 0.5
    return sigma_down, sigma_up


def log_snr_half(sigma):
    """lambda = log(alpha/sigma) = -log(sigma) for the variance-exploding parameterisation (alpha = 1)."""
    return sigma.log().neg()


def sigma_of_log_snr_half(lam):
    return lam.neg().exp()


def eps_direction(x, sigma, denoised):
    """dx/dsigma of the probability-flow ODE: (x - x0) / sigma."""
    return (x - denoised) / sigma


def batch_sigma(x: torch.Tensor, sigma) -> torch.Tensor:
    """The per-row sigma vector a denoiser call receives."""
    return sigma * x.new_ones([x.shape[0]])


def report(callback, i, x, sigma, denoised):
    if callback is not None:
        callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": denoised})


def generator_noise(x, extra_args: dict, noise_sampler: Optional[Callable]):
    """The (G) source of the README: a generator seeded with the run's seed, unless one was injected."""
    if noise_sampler is not None:
        return noise_sampler
    return GeneratorNoise(x, extra_args.get("seed"))


def brownian_noise(x, sigmas, extra_args: dict, noise_sampler: Optional[Callable], on_cpu: bool):
    """The (B) source: a Brownian tree over the run's sigma range, unless one was injected."""
    if noise_sampler is not None:
        return noise_sampler
    return brownian_noise_for(x, sigmas, extra_args.get("seed"), on_cpu=on_cpu)


def denoise_with_uncond(model, x, sigma_batch, extra_args: dict):
    """(denoised, uncond_denoised) through the ``return_uncond`` protocol described in the module docstring."""
    result = model(x, sigma_batch, **extra_args, return_uncond=True)
    if not (isinstance(result, tuple) and len(result) == 2):
        raise TypeError("cfg_pp samplers need a denoiser that returns (denoised, uncond_denoised) "
                        "when called with return_uncond=True")
    return result


def needs_uncond(fn):
    """Mark a sampler as needing the uncond prediction (and the cfg == 1 shortcut switched off)."""
    fn.needs_uncond_denoised = True
    return fn
