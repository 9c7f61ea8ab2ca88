"""Deterministic samplers on an analytic case, and PLMS (no ComfyUI counterpart) in particular.

For data ~ N(mu, s^2) the exact denoiser is D(x, sigma) = mu + s^2 / (s^2 + sigma^2) (x - mu) and the
probability-flow ODE maps x(sigma_a) to x(sigma_b) = mu + (x(sigma_a) - mu) sqrt(s^2 + sigma_b^2) / sqrt(s^2 + sigma_a^2).
"""
import pytest
import torch

from nodes.samplers.model_sampling import ModelSamplingDiscrete
from nodes.samplers.ode import ODE_SAMPLERS
from nodes.samplers.schedules import ksampler_sigmas
from tests.samplers.golden import all_run_entries, reference_output, replay
from tests.samplers.toy import ToyModel, constant_conditioning
from nodes.samplers.pipeline import ksample

MU, S = 0.5, 0.7
MS = ModelSamplingDiscrete()


def gaussian_denoiser(x, sigma, **_):
    s2 = S * S
    return MU + s2 / (s2 + sigma.reshape(-1, 1, 1, 1) ** 2) * (x - MU)


def exact_flow(x, sigma_from, sigma_to):
    return MU + (x - MU) * ((S * S + sigma_to**2) / (S * S + sigma_from**2)) ** 0.5


def gaussian_error(name, steps, scheduler="karras"):
    sigmas = ksampler_sigmas(MS, scheduler, steps, 1.0, name).to(torch.float64)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * float(sigmas[0])
    out = ODE_SAMPLERS[name](gaussian_denoiser, x, sigmas)
    # dpm_fast / dpm_adaptive stop at the last non-zero sigma
    end = float(sigmas[-2]) if name in ("dpm_fast", "dpm_adaptive") else 0.0
    if name.startswith("uni_pc"):
        end = 0.001  # UniPC ends at sigma 0.001 and rescales from there
    return float((out - exact_flow(x, float(sigmas[0]), end)).abs().max())


# Second order or better away from the last step (which is an Euler / x0 step for most of them).
HIGHER_ORDER = ("heun", "dpm_2", "dpmpp_2m", "lms", "ipndm", "deis", "res_multistep", "uni_pc", "uni_pc_bh2", "plms")


@pytest.mark.parametrize("name", sorted(ODE_SAMPLERS))
def test_every_ode_sampler_follows_the_exact_flow(name):
    # outputs are O(1); dpm_adaptive's error is set by its tolerances, not the step count
    assert gaussian_error(name, 60) < 0.1
    if name in HIGHER_ORDER:
        assert gaussian_error(name, 60) < gaussian_error(name, 10) / 20


def test_plms_converges_faster_than_euler():
    plms_coarse, plms_fine = gaussian_error("plms", 10), gaussian_error("plms", 40)
    euler_coarse = gaussian_error("euler", 10)
    assert plms_coarse < euler_coarse / 5
    assert plms_fine < plms_coarse / 8  # better than 2nd order in the step count on this smooth case


def test_plms_on_the_toy_approaches_a_fine_reference():
    common = dict(seed=7, cfg=5.0, scheduler="karras", positive=constant_conditioning(0.3),
                  negative=constant_conditioning(-0.2), latent={"samples": torch.zeros(1, 4, 8, 8)})
    reference = ksample(ToyModel(), steps=200, sampler_name="heun", **common)["samples"]
    errors = [
        float((ksample(ToyModel(), steps=n, sampler_name="plms", **common)["samples"] - reference).abs().max())
        for n in (6, 24)
    ]
    scale = float(reference.abs().max())
    assert errors[1] < errors[0] / 4 and errors[1] < 1e-3 * scale


def test_ddim_and_euler_agree_except_for_inpaint_noise():
    plain = all_run_entries()["ksampler/ddim/karras/cfg5.0/den0.6"]
    assert torch.equal(reference_output(plain), reference_output(all_run_entries()["ksampler/euler/karras/cfg5.0/den0.6"]))
    euler_inpaint = dict(all_run_entries()["inpaint/ddim/normal/cfg5.0/den1.0"], sampler_name="euler")
    ddim = replay(all_run_entries()["inpaint/ddim/normal/cfg5.0/den1.0"])["samples"]
    assert not torch.allclose(replay(euler_inpaint)["samples"], ddim, atol=1e-3)
