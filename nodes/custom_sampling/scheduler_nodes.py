"""ComfyUI's scheduler nodes: a SIGMAS vector from a model's schedule, a formula or a published table."""

from __future__ import annotations

from typing import Annotated

from graphengine import Combo, Float, Int, Node, Output

from ..samplers.names import SCHEDULER_NAMES
from ..samplers.schedules import beta_schedule, exponential_sigmas, karras_sigmas
from .. import costs
from ..types import Model
from . import schedules

CATEGORY = "sampling/custom_sampling/schedulers"
Steps = Annotated[int, Int(min=1, max=10000)]
Denoise = Annotated[float, Float(min=0.0, max=1.0, step=0.01)]
SigmaMax = Annotated[float, Float(min=0.0, max=5000.0, step=0.01, round=False)]
Shape = Annotated[float, Float(min=0.0, max=100.0, step=0.01, round=False)]
SD_SIGMA_MAX = 14.614642
SD_SIGMA_MIN = 0.0291675


class Scheduler(Node):
    """Base of the scheduler nodes (not registered): steps + 1 sigmas out."""

    CATEGORY = CATEGORY
    RETURNS = (Output("SIGMAS"),)

    @classmethod
    def estimate(cls, inputs, upstream, services=None):
        steps = inputs.get("steps")
        return costs.sigmas(steps + 1 if isinstance(steps, int) else None)


class SigmaRange(Scheduler):
    """Base of the schedulers that take an explicit sigma range (not registered)."""

    steps: Steps = 20
    sigma_max: SigmaMax = SD_SIGMA_MAX
    sigma_min: SigmaMax = SD_SIGMA_MIN


def positive_sigma_range(inputs: dict) -> str | bool:
    """Log-spaced schedules need sigma_min > 0 and sigma_max > 0."""
    for name in ("sigma_min", "sigma_max"):
        value = inputs.get(name)
        if isinstance(value, (int, float)) and value <= 0:
            return f"{name} must be above 0 for a log-spaced schedule, got {value}"
    return True


class BasicScheduler(Scheduler):
    """Sigmas of one of KSampler's schedulers for the model; denoise < 1 keeps only the last steps."""

    model: Model
    scheduler: Annotated[str, Combo(list(SCHEDULER_NAMES))]
    steps: Steps = 20
    denoise: Denoise = 1.0

    def execute(self, ctx) -> tuple:
        return (schedules.basic_sigmas(self.model.model_sampling, self.scheduler, self.steps, self.denoise),)


class KarrasScheduler(SigmaRange):
    """Karras et al. (2022) sigmas: evenly spaced in sigma^(1/rho)."""

    rho: Shape = 7.0

    def execute(self, ctx) -> tuple:
        return (karras_sigmas(self.steps, self.sigma_min, self.sigma_max, self.rho),)


class ExponentialScheduler(SigmaRange):
    """Sigmas evenly spaced in log sigma."""

    @classmethod
    def validate_inputs(cls, inputs, services=None):
        return positive_sigma_range(inputs)

    def execute(self, ctx) -> tuple:
        return (exponential_sigmas(self.steps, self.sigma_min, self.sigma_max),)


class PolyexponentialScheduler(SigmaRange):
    """Sigmas spaced in log sigma along a power ramp (rho 1 = exponential)."""

    rho: Shape = 1.0

    @classmethod
    def validate_inputs(cls, inputs, services=None):
        return positive_sigma_range(inputs)

    def execute(self, ctx) -> tuple:
        return (schedules.polyexponential_sigmas(self.steps, self.sigma_min, self.sigma_max, self.rho),)


class LaplaceScheduler(SigmaRange):
    """Sigmas at Laplace quantiles in log sigma, dense around exp(mu)."""

    mu: Annotated[float, Float(min=-10.0, max=10.0, step=0.1, round=False)] = 0.0
    beta: Annotated[float, Float(min=0.0, max=10.0, step=0.1, round=False)] = 0.5

    def execute(self, ctx) -> tuple:
        return (schedules.laplace_sigmas(self.steps, self.sigma_min, self.sigma_max, self.mu, self.beta),)


class SDTurboScheduler(Scheduler):
    """SD-Turbo's few-step sigmas (timesteps 999, 899, …); denoise skips the first ones."""

    model: Model
    steps: Annotated[int, Int(min=1, max=10)] = 1
    denoise: Annotated[float, Float(min=0, max=1.0, step=0.01)] = 1.0

    def execute(self, ctx) -> tuple:
        return (schedules.sd_turbo_sigmas(self.model.model_sampling, self.steps, self.denoise),)


class BetaSamplingScheduler(Scheduler):
    """Sigmas at Beta(alpha, beta) quantiles of the model's timesteps."""

    model: Model
    steps: Steps = 20
    alpha: Annotated[float, Float(min=0.0, max=50.0, step=0.01, round=False)] = 0.6
    beta: Annotated[float, Float(min=0.0, max=50.0, step=0.01, round=False)] = 0.6

    def execute(self, ctx) -> tuple:
        return (beta_schedule(self.model.model_sampling, self.steps, self.alpha, self.beta),)


class VPScheduler(Scheduler):
    """Sigmas of the continuous variance-preserving SDE."""

    steps: Steps = 20
    beta_d: SigmaMax = 19.9
    beta_min: SigmaMax = 0.1
    eps_s: Annotated[float, Float(min=0.0, max=1.0, step=0.0001, round=False)] = 0.001

    def execute(self, ctx) -> tuple:
        return (schedules.vp_sigmas(self.steps, self.beta_d, self.beta_min, self.eps_s),)


class AlignYourStepsScheduler(Scheduler):
    """NVIDIA's Align Your Steps sigmas for SD1, SDXL or SVD (resampled when steps is not 10)."""

    model_type: Annotated[str, Combo(["SD1", "SDXL", "SVD"])]
    steps: Steps = 10
    denoise: Denoise = 1.0

    def execute(self, ctx) -> tuple:
        return (schedules.align_your_steps_sigmas(self.model_type, self.steps, self.denoise),)


class GITSScheduler(Scheduler):
    """GITS sigmas (geometry-inspired time scheduling) for a coefficient between 0.80 and 1.50."""

    coeff: Annotated[float, Float(min=0.80, max=1.50, step=0.05)] = 1.20
    steps: Annotated[int, Int(min=2, max=1000)] = 10
    denoise: Denoise = 1.0

    @classmethod
    def validate_inputs(cls, inputs, services=None):
        coeff = inputs.get("coeff")
        if isinstance(coeff, (int, float)) and f"{round(coeff, 2):.2f}" not in schedules.gits_coefficients():
            return f"coeff must be a multiple of 0.05 between 0.80 and 1.50, got {coeff}"
        return True

    def execute(self, ctx) -> tuple:
        return (schedules.gits_sigmas(self.coeff, self.steps, self.denoise),)


class OptimalStepsScheduler(Scheduler):
    """Optimal Steps sigmas published for FLUX, Wan and Chroma (resampled to the step count)."""

    model_type: Annotated[str, Combo(["FLUX", "Wan", "Chroma"])]
    steps: Annotated[int, Int(min=3, max=1000)] = 20
    denoise: Denoise = 1.0

    def execute(self, ctx) -> tuple:
        return (schedules.optimal_steps_sigmas(self.model_type, self.steps, self.denoise),)


NODE_CLASSES = [BasicScheduler, KarrasScheduler, ExponentialScheduler, PolyexponentialScheduler, LaplaceScheduler,
                VPScheduler, BetaSamplingScheduler, SDTurboScheduler, AlignYourStepsScheduler, GITSScheduler,
                OptimalStepsScheduler]
