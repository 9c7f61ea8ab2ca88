"""Sigma schedules (ComfyUI's `scheduler` combo) and the KSampler step/denoise rules.

Every schedule is a pure function of the model sampling object and a step count and
returns a float32 vector that ends with 0 (linear_quadratic ends at 0 by itself).
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from .model_sampling import ModelSamplingDiscrete

# ComfyUI samplers that ask for one more step and drop the penultimate sigma.
DISCARD_PENULTIMATE_SAMPLERS = frozenset({"dpm_2", "dpm_2_ancestral", "uni_pc", "uni_pc_bh2"})


def _append_zero(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.cat([sigmas, sigmas.new_zeros([1])])


def normal_schedule(ms: ModelSamplingDiscrete, steps: int, sgm: bool = False) -> torch.Tensor:
    start = float(ms.timestep(ms.sigma_max))
    end = float(ms.timestep(ms.sigma_min))
    append_zero = True
    if sgm:
        timesteps = torch.linspace(start, end, steps + 1)[:-1]
    else:
        if math.isclose(float(ms.sigma(torch.tensor(end))), 0, abs_tol=1e-5):
            steps += 1
            append_zero = False
        timesteps = torch.linspace(start, end, steps)
    sigmas = ms.sigma(timesteps)
    return _append_zero(sigmas) if append_zero else sigmas


def sgm_uniform_schedule(ms: ModelSamplingDiscrete, steps: int) -> torch.Tensor:
    return normal_schedule(ms, steps, sgm=True)


def simple_schedule(ms: ModelSamplingDiscrete, steps: int) -> torch.Tensor:
    table = ms.sigmas
    stride = len(table) / steps
    picked = [float(table[-(1 + int(k * stride))]) for k in range(steps)]
    return _append_zero(torch.tensor(picked, dtype=torch.float32))


def karras_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022) eq. 5: interpolate sigma^(1/rho) linearly."""
    a = float(sigma_max) ** (1 / rho)
    b = float(sigma_min) ** (1 / rho)
    ramp = torch.linspace(0, 1, steps)
    return _append_zero((a + ramp * (b - a)) ** rho)


def exponential_sigmas(steps: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Sigmas evenly spaced in log sigma."""
    log_sigmas = torch.linspace(math.log(float(sigma_max)), math.log(float(sigma_min)), steps)
    return _append_zero(log_sigmas.exp())


def karras_schedule(ms: ModelSamplingDiscrete, steps: int, rho: float = 7.0) -> torch.Tensor:
    return karras_sigmas(steps, float(ms.sigma_min), float(ms.sigma_max), rho)


def exponential_schedule(ms: ModelSamplingDiscrete, steps: int) -> torch.Tensor:
    return exponential_sigmas(steps, float(ms.sigma_min), float(ms.sigma_max))


def ddim_uniform_schedule(ms: ModelSamplingDiscrete, steps: int) -> torch.Tensor:
    table = ms.sigmas
    stride = max(len(table) // steps, 1)
    picked = [float(table[i]) for i in range(1, len(table), stride)]
    picked.reverse()
    return _append_zero(torch.tensor(picked, dtype=torch.float32))


def beta_schedule(ms: ModelSamplingDiscrete, steps: int, alpha: float = 0.6, beta: float = 0.6) -> torch.Tensor:
    """Timesteps at Beta(alpha, beta) quantiles (Lee et al. 2024), consecutive duplicates dropped."""
    from scipy.stats import beta as beta_distribution

    last = len(ms.sigmas) - 1
    quantiles = 1 - np.linspace(0, 1, steps, endpoint=False)
    indices = np.rint(beta_distribution.ppf(quantiles, alpha, beta) * last)
    picked: list[float] = []
    previous = -1
    for index in indices:
        if int(index) != previous:
            picked.append(float(ms.sigmas[int(index)]))
            previous = int(index)
    return _append_zero(torch.tensor(picked, dtype=torch.float32))


def linear_quadratic_schedule(ms: ModelSamplingDiscrete, steps: int, threshold_noise: float = 0.025) -> torch.Tensor:
    """Mochi's schedule: linear in noise level for the first half, then quadratic to 1; x sigma_max."""
    sigma_max = float(ms.sigma_max)
    if steps == 1:
        return torch.tensor([sigma_max, 0.0], dtype=torch.float32)
    linear_steps = steps // 2
    quadratic_steps = steps - linear_steps
    levels = [i * threshold_noise / linear_steps for i in range(linear_steps)]
    gap = linear_steps - threshold_noise * steps
    quad_coef = gap / (linear_steps * quadratic_steps**2)
    lin_coef = threshold_noise / linear_steps - 2 * gap / quadratic_steps**2
    const = quad_coef * linear_steps**2
    levels += [quad_coef * i**2 + lin_coef * i + const for i in range(linear_steps, steps)]
    levels.append(1.0)
    return torch.tensor([1.0 - v for v in levels], dtype=torch.float32) * sigma_max


def kl_optimal_schedule(ms: ModelSamplingDiscrete, steps: int) -> torch.Tensor:
    """tan of the linear interpolation between atan(sigma_max) and atan(sigma_min) (NaN for 1 step)."""
    weights = torch.arange(steps, dtype=torch.float32) / (steps - 1) if steps > 1 else torch.full([1], float("nan"))
    lo = math.atan(float(ms.sigma_min))
    hi = math.atan(float(ms.sigma_max))
    return _append_zero(torch.tan(weights * lo + (1 - weights) * hi))


ScheduleFn = Callable[[ModelSamplingDiscrete, int], torch.Tensor]

# Name -> function, in ComfyUI's combo order.
SCHEDULERS: dict[str, ScheduleFn] = {
    "simple": simple_schedule,
    "sgm_uniform": sgm_uniform_schedule,
    "karras": karras_schedule,
    "exponential": exponential_schedule,
    "ddim_uniform": ddim_uniform_schedule,
    "beta": beta_schedule,
    "normal": normal_schedule,
    "linear_quadratic": linear_quadratic_schedule,
    "kl_optimal": kl_optimal_schedule,
}


def calculate_sigmas(model_sampling: ModelSamplingDiscrete, scheduler: str, steps: int) -> torch.Tensor:
    try:
        schedule = SCHEDULERS[scheduler]
    except KeyError:
        raise ValueError(f"unknown scheduler {scheduler!r}; known: {', '.join(SCHEDULERS)}") from None
    return schedule(model_sampling, int(steps))


def ksampler_sigmas(
    model_sampling: ModelSamplingDiscrete, scheduler: str, steps: int, denoise: float = 1.0, sampler_name: str = ""
) -> torch.Tensor:
    """The sigma vector KSampler hands to the sampler (denoise -> more steps, keep the tail)."""
    partial = denoise is not None and denoise <= 0.9999
    if partial and denoise <= 0.0:
        return torch.zeros([0], dtype=torch.float32)
    total = int(steps / denoise) if partial else steps
    if sampler_name in DISCARD_PENULTIMATE_SAMPLERS:
        sigmas = calculate_sigmas(model_sampling, scheduler, total + 1)
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    else:
        sigmas = calculate_sigmas(model_sampling, scheduler, total)
    if partial:
        sigmas = sigmas[-(steps + 1):]
    return sigmas


def advanced_trim(
    sigmas: torch.Tensor, start_step: int | None, last_step: int | None, force_full_denoise: bool
) -> torch.Tensor | None:
    """KSamplerAdvanced's start/end trimming; None means "skip sampling, return the input"."""
    if last_step is not None and last_step < len(sigmas) - 1:
        sigmas = sigmas[: last_step + 1].clone()
        if force_full_denoise:
            sigmas[-1] = 0
    if start_step is not None:
        if start_step < len(sigmas) - 1:
            sigmas = sigmas[start_step:]
        else:
            return None
    return sigmas
