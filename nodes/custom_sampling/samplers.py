"""SAMPLER values (a sampler function with its options) and ComfyUI's sampler nodes, plus the two samplers only
these nodes offer (LCM with upscaling, Euler CFG++ "alternative")."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Callable, ClassVar

import numpy as np
import torch

from graphengine import Boolean, Combo, Float, Int, Node, Output

from ..imageio import common_upscale
from ..samplers.names import SAMPLER_NAMES, get_sampler
from ..samplers.stochastic_common import batch_sigma, denoise_with_uncond, needs_uncond, report
from ..types import Model

CATEGORY = "sampling/custom_sampling/samplers"
Eta = Annotated[float, Float(min=0.0, max=100.0, step=0.01, round=False)]
NoiseDevice = Annotated[str, Combo(["gpu", "cpu"])]
LCM_UPSCALE_METHODS = ["bislerp", "nearest-exact", "bilinear", "area", "bicubic"]


@dataclass(frozen=True)
class SamplerChoice:
    """A SAMPLER: the name (it decides the inpaint re-noise rule and cfg++), the function and its options."""

    name: str
    function: Callable
    options: dict = field(default_factory=dict)


def named(name: str, **options: Any) -> SamplerChoice:
    return SamplerChoice(name, get_sampler(name), options)


@torch.no_grad()
def sample_lcm_upscale(model, x, sigmas, extra_args=None, callback=None, disable=None, total_upscale=2.0,
                       upscale_method="bislerp", upscale_steps=None):
    """LCM steps that also grow the latent: after step i (of the first upscale_steps) x0 is resized to the i-th of
    evenly spaced scales up to total_upscale, then re-noised to the next sigma (torch's global generator)."""
    extra_args = extra_args or {}
    if upscale_steps is None:
        upscale_steps = max(len(sigmas) // 2 + 1, 2)
    else:
        upscale_steps = min(upscale_steps + 1, len(sigmas) + 1)
    scales = np.linspace(1.0, total_upscale, upscale_steps)[1:]
    height, width = x.shape[-2:]
    for i in range(len(sigmas) - 1):
        denoised = model(x, batch_sigma(x, sigmas[i]), **extra_args)
        report(callback, i, x, sigmas[i], denoised)
        x = denoised
        if i < len(scales):
            x = common_upscale(x, round(width * scales[i]), round(height * scales[i]), upscale_method, "disabled")
        if sigmas[i + 1] > 0:
            x = x + sigmas[i + 1] * torch.randn_like(x)
    return x


@needs_uncond
@torch.no_grad()
def sample_euler_pp(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """Euler CFG++ "alternative": the slope uses x - x0 + x0_uncond in place of x."""
    extra_args = extra_args or {}
    for i in range(len(sigmas) - 1):
        sigma = sigmas[i]
        denoised, uncond = denoise_with_uncond(model, x, batch_sigma(x, sigma), extra_args)
        slope = ((x - denoised + uncond) - denoised) / sigma
        report(callback, i, x, sigma, denoised)
        x = x + slope * (sigmas[i + 1] - sigma)
    return x


class KSamplerSelect(Node):
    """One of KSampler's samplers by name."""

    CATEGORY = CATEGORY
    RETURNS = (Output("SAMPLER"),)

    sampler_name: Annotated[str, Combo(list(SAMPLER_NAMES))]

    def execute(self, ctx) -> tuple:
        return (named(self.sampler_name),)


class SamplerEulerAncestral(Node):
    """Euler ancestral with its noise amount (eta) and noise scale."""

    CATEGORY = CATEGORY
    RETURNS = (Output("SAMPLER"),)

    eta: Eta = 1.0
    s_noise: Eta = 1.0

    def execute(self, ctx) -> tuple:
        return (named("euler_ancestral", eta=self.eta, s_noise=self.s_noise),)


class SamplerEulerAncestralCFGPP(Node):
    """Euler ancestral CFG++ with its noise amount and scale."""

    DISPLAY_NAME = "SamplerEulerAncestralCFG++"
    CATEGORY = CATEGORY
    RETURNS = (Output("SAMPLER"),)

    eta: Annotated[float, Float(min=0.0, max=1.0, step=0.01, round=False)] = 1.0
    s_noise: Annotated[float, Float(min=0.0, max=10.0, step=0.01, round=False)] = 1.0

    def execute(self, ctx) -> tuple:
        return (named("euler_ancestral_cfg_pp", eta=self.eta, s_noise=self.s_noise),)


class SamplerLMS(Node):
    """Linear multistep of a chosen order."""

    CATEGORY = CATEGORY
    RETURNS = (Output("SAMPLER"),)

    order: Annotated[int, Int(min=1, max=100)] = 4

    def execute(self, ctx) -> tuple:
        return (named("lms", order=self.order),)


class SamplerDPMPP_3M_SDE(Node):
    """DPM++ 3M SDE; noise_device picks where its Brownian noise is drawn (same numbers on a CPU run)."""

    CATEGORY = CATEGORY
    RETURNS = (Output("SAMPLER"),)

    eta: Eta = 1.0
    s_noise: Eta = 1.0
    noise_device: NoiseDevice

    def execute(self, ctx) -> tuple:
        name = "dpmpp_3m_sde" if self.noise_device == "cpu" else "dpmpp_3m_sde_gpu"
        return (named(name, eta=self.eta, s_noise=self.s_noise),)


class SamplerDPMPP_2M_SDE(Node):
    """DPM++ 2M SDE with the midpoint or Heun second-order correction."""

    CATEGORY = CATEGORY
    RETURNS = (Output("SAMPLER"),)

    solver_type: Annotated[str, Combo(["midpoint", "heun"])]
    eta: Eta = 1.0
    s_noise: Eta = 1.0
    noise_device: NoiseDevice

    def execute(self, ctx) -> tuple:
        name = "dpmpp_2m_sde" if self.noise_device == "cpu" else "dpmpp_2m_sde_gpu"
        return (named(name, eta=self.eta, s_noise=self.s_noise, solver_type=self.solver_type),)


class SamplerDPMPP_SDE(Node):
    """DPM++ SDE with its midpoint ratio r."""

    CATEGORY = CATEGORY
    RETURNS = (Output("SAMPLER"),)

    eta: Eta = 1.0
    s_noise: Eta = 1.0
    r: Eta = 0.5
    noise_device: NoiseDevice

    def execute(self, ctx) -> tuple:
        name = "dpmpp_sde" if self.noise_device == "cpu" else "dpmpp_sde_gpu"
        return (named(name, eta=self.eta, s_noise=self.s_noise, r=self.r),)


class SamplerDPMPP_2S_Ancestral(Node):
    """DPM++ 2S ancestral with its noise amount and scale."""

    CATEGORY = CATEGORY
    RETURNS = (Output("SAMPLER"),)

    eta: Eta = 1.0
    s_noise: Eta = 1.0

    def execute(self, ctx) -> tuple:
        return (named("dpmpp_2s_ancestral", eta=self.eta, s_noise=self.s_noise),)


class SamplerDPMAdaptative(Node):
    """Adaptive-step DPM-Solver with its error tolerances and step controller."""

    CATEGORY = CATEGORY
    RETURNS = (Output("SAMPLER"),)
    # what the engine's dpm_adaptive implements: order 3, the integral-only controller, no ancestral noise
    FIXED: ClassVar[dict] = {"order": 3, "pcoeff": 0.0, "icoeff": 1.0, "dcoeff": 0.0, "eta": 0.0}

    order: Annotated[int, Int(min=2, max=3)] = 3
    rtol: Eta = 0.05
    atol: Eta = 0.0078
    h_init: Eta = 0.05
    pcoeff: Eta = 0.0
    icoeff: Eta = 1.0
    dcoeff: Eta = 0.0
    accept_safety: Eta = 0.81
    eta: Eta = 0.0
    s_noise: Eta = 1.0

    @classmethod
    def validate_inputs(cls, inputs, services=None):
        for name, supported in cls.FIXED.items():
            value = inputs.get(name)
            if isinstance(value, (int, float)) and value != supported:
                return f"{name}={value} is not supported by this engine's dpm_adaptive (only {supported})"
        return True

    def execute(self, ctx) -> tuple:
        return (named("dpm_adaptive", rtol=self.rtol, atol=self.atol, h_init=self.h_init,
                      accept_safety=self.accept_safety),)


def reverse_time_sde_scaler(eta: float) -> Callable:
    def scaler(x):
        return x ** (eta + 1)

    return scaler


class SamplerER_SDE(Node):
    """ER-SDE solver: its own noise scaling, a reverse-time SDE of strength eta, or the ODE."""

    CATEGORY = CATEGORY
    RETURNS = (Output("SAMPLER"),)

    solver_type: Annotated[str, Combo(["ER-SDE", "Reverse-time SDE", "ODE"])]
    max_stage: Annotated[int, Int(min=1, max=3)] = 3
    eta: Annotated[float, Float(min=0.0, max=100.0, step=0.01, round=False, tooltip=(
        "Stochastic strength of reverse-time SDE.\nWhen eta=0, it reduces to deterministic ODE. This setting "
        "doesn't apply to ER-SDE solver type."))] = 1.0
    s_noise: Eta = 1.0

    def execute(self, ctx) -> tuple:
        eta, s_noise = self.eta, self.s_noise
        if self.solver_type == "ODE" or (self.solver_type == "Reverse-time SDE" and eta == 0):
            eta, s_noise = 0, 0
        scaler = None if self.solver_type == "ER-SDE" else reverse_time_sde_scaler(eta)
        return (named("er_sde", s_noise=s_noise, noise_scaler=scaler, max_stage=self.max_stage),)


class SamplerSASolver(Node):
    """SA-Solver (stochastic Adams) with its stochastic window in sampling percent and its orders."""

    CATEGORY = CATEGORY
    RETURNS = (Output("SAMPLER"),)

    model: Model
    eta: Annotated[float, Float(min=0.0, max=10.0, step=0.01, round=False)] = 1.0
    sde_start_percent: Annotated[float, Float(min=0.0, max=1.0, step=0.001)] = 0.2
    sde_end_percent: Annotated[float, Float(min=0.0, max=1.0, step=0.001)] = 0.8
    s_noise: Eta = 1.0
    predictor_order: Annotated[int, Int(min=1, max=6)] = 3
    corrector_order: Annotated[int, Int(min=0, max=6)] = 4
    use_pece: Annotated[bool, Boolean()] = False
    simple_order_2: Annotated[bool, Boolean()] = False

    @classmethod
    def validate_inputs(cls, inputs, services=None):
        if inputs.get("simple_order_2") is True:
            return "simple_order_2 is not supported by this engine's sa_solver"
        return True

    def execute(self, ctx) -> tuple:
        ms = self.model.model_sampling
        window = (float(ms.percent_to_sigma(self.sde_start_percent)), float(ms.percent_to_sigma(self.sde_end_percent)))
        return (named("sa_solver", eta=self.eta, s_noise=self.s_noise, predictor_order=self.predictor_order,
                      corrector_order=self.corrector_order, use_pece=self.use_pece, tau_sigma_window=window),)


class SamplerEulerCFGpp(Node):
    """Euler CFG++, the regular form or the alternative slope."""

    DISPLAY_NAME = "SamplerEulerCFG++"
    CATEGORY = "_for_testing"
    RETURNS = (Output("SAMPLER"),)

    version: Annotated[str, Combo(["regular", "alternative"])]

    def execute(self, ctx) -> tuple:
        if self.version == "alternative":
            return (SamplerChoice("euler_pp", sample_euler_pp),)
        return (named("euler_cfg_pp"),)


class SamplerLCMUpscale(Node):
    """LCM sampling that upscales the latent over its first steps."""

    CATEGORY = CATEGORY
    RETURNS = (Output("SAMPLER"),)

    scale_ratio: Annotated[float, Float(min=0.1, max=20.0, step=0.01)] = 1.0
    scale_steps: Annotated[int, Int(min=-1, max=1000, step=1)] = -1
    upscale_method: Annotated[str, Combo(LCM_UPSCALE_METHODS)]

    def execute(self, ctx) -> tuple:
        steps = None if self.scale_steps < 0 else self.scale_steps
        return (SamplerChoice("lcm_upscale", sample_lcm_upscale, {"total_upscale": self.scale_ratio,
                                                                  "upscale_steps": steps,
                                                                  "upscale_method": self.upscale_method}),)


NODE_CLASSES = [KSamplerSelect, SamplerEulerAncestral, SamplerEulerAncestralCFGPP, SamplerLMS, SamplerDPMPP_3M_SDE,
                SamplerDPMPP_2M_SDE, SamplerDPMPP_SDE, SamplerDPMPP_2S_Ancestral, SamplerDPMAdaptative, SamplerER_SDE,
                SamplerSASolver, SamplerEulerCFGpp, SamplerLCMUpscale]
