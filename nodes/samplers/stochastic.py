"""Registry of the stochastic and CFG++ samplers (ComfyUI names -> k-diffusion-style sampler functions).

Every function has the signature ``sample(model, x, sigmas, extra_args=None, callback=None, disable=None, **opts)``
with ``model(x, sigma_batch, **extra_args) -> denoised`` (see ``stochastic_common`` for the full protocol).

What the pipeline must provide:
* ``extra_args["seed"]`` = the KSampler seed (per-step noise, README §4), for every sampler in this table;
* for the samplers in ``UNCOND_SAMPLERS`` (attribute ``needs_uncond_denoised``): a denoiser that answers
  ``return_uncond=True`` with ``(denoised, uncond_denoised)`` and then evaluates the negative even at cfg == 1;
* ``model.model_sampling.percent_to_sigma`` (sa_solver, sa_solver_pece).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from .noise_samplers import GeneratorNoise, brownian_noise_for
from .stochastic_ancestral import (
    sample_ddpm,
    sample_dpm_2_ancestral,
    sample_dpmpp_2s_ancestral,
    sample_euler_ancestral,
    sample_lcm,
)
from .stochastic_cfg_pp import (
    sample_dpmpp_2m_cfg_pp,
    sample_dpmpp_2s_ancestral_cfg_pp,
    sample_euler_ancestral_cfg_pp,
    sample_euler_cfg_pp,
    sample_gradient_estimation_cfg_pp,
)
from .stochastic_exp import sample_er_sde, sample_seeds_2, sample_seeds_3
from .stochastic_res import (
    sample_res_multistep_ancestral,
    sample_res_multistep_ancestral_cfg_pp,
    sample_res_multistep_cfg_pp,
)
from .stochastic_sa import sample_sa_solver, sample_sa_solver_pece
from .stochastic_sde import (
    sample_dpmpp_2m_sde,
    sample_dpmpp_2m_sde_gpu,
    sample_dpmpp_2m_sde_heun,
    sample_dpmpp_2m_sde_heun_gpu,
    sample_dpmpp_3m_sde,
    sample_dpmpp_3m_sde_gpu,
    sample_dpmpp_sde,
    sample_dpmpp_sde_gpu,
)

STOCHASTIC_SAMPLERS = {
    "euler_cfg_pp": sample_euler_cfg_pp,
    "euler_ancestral": sample_euler_ancestral,
    "euler_ancestral_cfg_pp": sample_euler_ancestral_cfg_pp,
    "dpm_2_ancestral": sample_dpm_2_ancestral,
    "dpmpp_2s_ancestral": sample_dpmpp_2s_ancestral,
    "dpmpp_2s_ancestral_cfg_pp": sample_dpmpp_2s_ancestral_cfg_pp,
    "dpmpp_sde": sample_dpmpp_sde,
    "dpmpp_sde_gpu": sample_dpmpp_sde_gpu,
    "dpmpp_2m_cfg_pp": sample_dpmpp_2m_cfg_pp,
    "dpmpp_2m_sde": sample_dpmpp_2m_sde,
    "dpmpp_2m_sde_gpu": sample_dpmpp_2m_sde_gpu,
    "dpmpp_2m_sde_heun": sample_dpmpp_2m_sde_heun,
    "dpmpp_2m_sde_heun_gpu": sample_dpmpp_2m_sde_heun_gpu,
    "dpmpp_3m_sde": sample_dpmpp_3m_sde,
    "dpmpp_3m_sde_gpu": sample_dpmpp_3m_sde_gpu,
    "ddpm": sample_ddpm,
    "lcm": sample_lcm,
    "res_multistep_cfg_pp": sample_res_multistep_cfg_pp,
    "res_multistep_ancestral": sample_res_multistep_ancestral,
    "res_multistep_ancestral_cfg_pp": sample_res_multistep_ancestral_cfg_pp,
    "gradient_estimation_cfg_pp": sample_gradient_estimation_cfg_pp,
    "er_sde": sample_er_sde,
    "seeds_2": sample_seeds_2,
    "seeds_3": sample_seeds_3,
    "sa_solver": sample_sa_solver,
    "sa_solver_pece": sample_sa_solver_pece,
}

# samplers that call the denoiser with return_uncond=True (CFG++): no cfg == 1 shortcut for them
UNCOND_SAMPLERS = frozenset(name for name, fn in STOCHASTIC_SAMPLERS.items()
                            if getattr(fn, "needs_uncond_denoised", False))

# samplers whose per-step noise is a Brownian tree (need torchsde)
BROWNIAN_SAMPLERS = frozenset({
    "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu", "dpmpp_2m_sde_heun",
    "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu",
})


# CFG++ samplers that never draw per-step noise
NOISELESS_SAMPLERS = frozenset({"euler_cfg_pp", "dpmpp_2m_cfg_pp", "gradient_estimation_cfg_pp"})


def needs_uncond_denoised(sampler_name: str) -> bool:
    return sampler_name in UNCOND_SAMPLERS


def default_noise_source(sampler_name: str, x: torch.Tensor, sigmas: torch.Tensor,
                         seed: Optional[int]) -> Optional[Callable]:
    """The per-step noise source ``sampler_name`` builds for itself (README §4); None if it draws none.

    Passing the result (or a wrapper of it) as ``noise_sampler=`` reproduces the sampler's own draws.
    """
    if sampler_name not in STOCHASTIC_SAMPLERS:
        raise ValueError(f"{sampler_name!r} is not a stochastic sampler")
    if sampler_name in NOISELESS_SAMPLERS:
        return None
    if sampler_name in BROWNIAN_SAMPLERS:
        return brownian_noise_for(x, sigmas, seed, on_cpu=not sampler_name.endswith("_gpu"))
    return GeneratorNoise(x, seed)
