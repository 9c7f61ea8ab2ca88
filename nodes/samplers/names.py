"""Sampler / scheduler name tables (ComfyUI's combo order) and name -> function lookup."""
from __future__ import annotations

import importlib
from typing import Callable

from .ode import ODE_SAMPLERS
from .schedules import SCHEDULERS

# KSampler `sampler_name` combo of ComfyUI 0.3.64, in order.
COMFY_SAMPLER_NAMES: tuple[str, ...] = (
    "euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2",
    "dpm_2", "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive", "dpmpp_2s_ancestral",
    "dpmpp_2s_ancestral_cfg_pp", "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_cfg_pp",
    "dpmpp_2m_sde", "dpmpp_2m_sde_gpu", "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu",
    "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm", "ipndm", "ipndm_v", "deis",
    "res_multistep", "res_multistep_cfg_pp", "res_multistep_ancestral",
    "res_multistep_ancestral_cfg_pp", "gradient_estimation", "gradient_estimation_cfg_pp",
    "er_sde", "seeds_2", "seeds_3", "sa_solver", "sa_solver_pece", "ddim", "uni_pc", "uni_pc_bh2",
)
# Samplers of our own that ComfyUI lacks, appended after ComfyUI's list.
EXTRA_SAMPLER_NAMES: tuple[str, ...] = ("plms",)
SAMPLER_NAMES: tuple[str, ...] = COMFY_SAMPLER_NAMES + EXTRA_SAMPLER_NAMES
SCHEDULER_NAMES: tuple[str, ...] = tuple(SCHEDULERS)

# Re-noise the kept region of an inpaint with a separately seeded (seed + 1) noise.
RANDOM_INPAINT_NOISE_SAMPLERS = frozenset({"ddim"})


def is_cfg_pp(sampler_name: str) -> bool:
    """cfg++ samplers need the uncond x0 even at cfg == 1."""
    return sampler_name.endswith("_cfg_pp")


def stochastic_samplers() -> dict[str, Callable]:
    """B's table from nodes.samplers.stochastic; empty while that module is missing or broken."""
    try:
        module = importlib.import_module("nodes.samplers.stochastic")
    except ImportError:
        return {}
    return dict(getattr(module, "STOCHASTIC_SAMPLERS", {}))


def available_samplers() -> dict[str, Callable]:
    return {**stochastic_samplers(), **ODE_SAMPLERS}


def get_sampler(name: str) -> Callable:
    if name in ODE_SAMPLERS:
        return ODE_SAMPLERS[name]
    table = stochastic_samplers()
    if name in table:
        return table[name]
    if name in SAMPLER_NAMES:
        raise NotImplementedError(f"sampler {name!r} is not implemented yet")
    raise ValueError(f"unknown sampler {name!r}")
