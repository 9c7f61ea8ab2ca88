"""The custom-sampling schedules as pure functions: ComfyUI's formulas and its published step tables.

Every function returns a float32 sigma vector, highest first; all but `laplace_sigmas` end with 0. The tables
(Align Your Steps, GITS, Optimal Steps) live in `schedule_tables.json` with their sources."""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import numpy as np
import torch

from ..samplers.schedules import calculate_sigmas

TABLES_FILE = Path(__file__).with_name("schedule_tables.json")


@functools.cache
def tables() -> dict:
    return json.loads(TABLES_FILE.read_text())


def _append_zero(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.cat([sigmas, sigmas.new_zeros([1])])


def _empty() -> torch.Tensor:
    return torch.zeros([0], dtype=torch.float32)


def basic_sigmas(model_sampling, scheduler: str, steps: int, denoise: float) -> torch.Tensor:
    """BasicScheduler: the named schedule over steps / denoise steps, keeping the last steps + 1 sigmas."""
    total = steps
    if denoise < 1.0:
        if denoise <= 0.0:
            return _empty()
        total = int(steps / denoise)
    return calculate_sigmas(model_sampling, scheduler, total).cpu()[-(steps + 1):]


def polyexponential_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float = 1.0) -> torch.Tensor:
    """log sigma = log sigma_min + ramp^rho (log sigma_max - log sigma_min), ramp from 1 down to 0."""
    ramp = torch.linspace(1, 0, steps) ** rho
    log_min = math.log(sigma_min)
    return _append_zero(torch.exp(ramp * (math.log(sigma_max) - log_min) + log_min))


def laplace_sigmas(steps: int, sigma_min: float, sigma_max: float, mu: float = 0.0, beta: float = 0.5) -> torch.Tensor:
    """Tiankai et al. (2024): log sigma at Laplace(mu, beta) quantiles, clamped to [sigma_min, sigma_max]; as in
    ComfyUI no final 0 is appended."""
    epsilon = 1e-5  # keeps log() finite at the ends
    x = torch.linspace(0, 1, steps)
    lam = mu - beta * torch.sign(0.5 - x) * torch.log(1 - 2 * torch.abs(0.5 - x) + epsilon)
    return torch.clamp(torch.exp(lam), min=sigma_min, max=sigma_max)


def vp_sigmas(steps: int, beta_d: float = 19.9, beta_min: float = 0.1, eps_s: float = 1e-3) -> torch.Tensor:
    """Continuous VP-SDE schedule: sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1), t from 1 to eps_s."""
    t = torch.linspace(1, eps_s, steps)
    return _append_zero(torch.sqrt(torch.special.expm1(beta_d * t**2 / 2 + beta_min * t)))


def sd_turbo_sigmas(model_sampling, steps: int, denoise: float) -> torch.Tensor:
    """SD-Turbo's timesteps 999, 899, … 99, starting 10 - int(10 denoise) entries in, `steps` of them, then 0."""
    start = 10 - int(10 * denoise)
    timesteps = torch.flip(torch.arange(1, 11) * 100 - 1, (0,))[start:start + steps]
    return _append_zero(model_sampling.sigma(timesteps.to(torch.float32)).to(torch.float32))


def loglinear_interp(levels: list[float] | np.ndarray, count: int) -> np.ndarray:
    """A decreasing sequence resampled to `count` points, linearly in log space (float64)."""
    xs = np.linspace(0, 1, len(levels))
    ys = np.log(np.asarray(levels, dtype=np.float64)[::-1])
    return np.exp(np.interp(np.linspace(0, 1, count), xs, ys))[::-1].copy()


def _tail(levels, total: int) -> torch.Tensor:
    """The last total + 1 levels with the final one set to 0 (float64 -> float32 like torch.FloatTensor)."""
    picked = np.array(levels[-(total + 1):], dtype=np.float64)
    picked[-1] = 0
    return torch.from_numpy(picked).to(torch.float32)


def _denoised_total(steps: int, denoise: float) -> int | None:
    """round(steps * denoise) for denoise < 1 (None: nothing to sample)."""
    if denoise < 1.0:
        return None if denoise <= 0.0 else round(steps * denoise)
    return steps


def tabled_sigmas(levels: list[float], steps: int, denoise: float) -> torch.Tensor:
    """Align Your Steps / Optimal Steps: the table itself when it has steps + 1 entries, else resampled."""
    total = _denoised_total(steps, denoise)
    if total is None:
        return _empty()
    if steps + 1 != len(levels):
        levels = loglinear_interp(levels, steps + 1)
    return _tail(levels, total)


def align_your_steps_sigmas(model_type: str, steps: int, denoise: float) -> torch.Tensor:
    return tabled_sigmas(tables()["align_your_steps"]["levels"][model_type], steps, denoise)


def optimal_steps_sigmas(model_type: str, steps: int, denoise: float) -> torch.Tensor:
    return tabled_sigmas(tables()["optimal_steps"]["levels"][model_type], steps, denoise)


def gits_coefficients() -> list[str]:
    return list(tables()["gits"]["levels"])


def gits_sigmas(coeff: float, steps: int, denoise: float) -> torch.Tensor:
    """GITS: the published schedule for `coeff` (a multiple of 0.05 in [0.80, 1.50]) and 2..20 steps; longer runs
    resample the 20-step one."""
    key = f"{round(coeff, 2):.2f}"
    by_steps = tables()["gits"]["levels"].get(key)
    if by_steps is None:
        raise ValueError(f"GITSScheduler: coeff must be one of {', '.join(gits_coefficients())}, got {coeff}")
    total = _denoised_total(steps, denoise)
    if total is None:
        return _empty()
    levels = by_steps[steps - 2] if steps <= 20 else loglinear_interp(by_steps[-1], steps + 1)
    return _tail(levels, total)
