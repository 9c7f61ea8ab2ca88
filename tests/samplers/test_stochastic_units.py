"""Stochastic samplers without the pipeline: registry, noise requests, noise influence, coefficient maths."""
from __future__ import annotations

import math

import pytest
import torch

from nodes.samplers.model_sampling import ModelSamplingDiscrete
from nodes.samplers.noise_samplers import BrownianTreeNoise, GeneratorNoise, RecordingNoise
from nodes.samplers.stochastic import (
    BROWNIAN_SAMPLERS,
    NOISELESS_SAMPLERS,
    STOCHASTIC_SAMPLERS,
    UNCOND_SAMPLERS,
    default_noise_source,
    needs_uncond_denoised,
)
from nodes.samplers.stochastic_common import ancestral_split
from nodes.samplers.stochastic_sa import adams_weights
from tests.samplers.golden import manifest

NAMES = sorted(STOCHASTIC_SAMPLERS)


class AffineDenoiser:
    """Cheap smooth stand-in for a guided denoiser: x0 depends on x and sigma; uncond differs from cond."""

    def __init__(self, cfg: float = 3.0):
        self.cfg = cfg
        self.model_sampling = ModelSamplingDiscrete()
        self.calls = 0

    def __call__(self, x, sigma, return_uncond=False, **_):
        self.calls += 1
        s = sigma.reshape(-1, 1, 1, 1)
        base = x / (1 + s * s) + 0.05 * torch.tanh(x)
        cond, uncond = base + 0.1, base - 0.1
        guided = uncond + (cond - uncond) * self.cfg
        return (guided, uncond) if return_uncond else guided


def golden_sigmas(sampler: str, scheduler: str = "normal", denoise: str = "1.0") -> torch.Tensor:
    entry = manifest()["runs"]["main"][f"ksampler/{sampler}/{scheduler}/cfg5.0/den{denoise}"]
    return torch.tensor(entry["sigmas"], dtype=torch.float32)


def start_latent(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * sigmas[0]


def test_table_covers_every_stochastic_and_cfg_pp_sampler_of_comfyui():
    golden = manifest()
    noisy = {name for name, changes in golden["per_step_noise_changes_result"].items() if changes}
    cfg_pp = {name for name in golden["generator"]["sampler_names"] if name.endswith("_cfg_pp")}
    assert noisy <= set(STOCHASTIC_SAMPLERS)
    assert cfg_pp <= set(STOCHASTIC_SAMPLERS)
    assert set(STOCHASTIC_SAMPLERS) <= set(golden["generator"]["sampler_names"])


def test_uncond_flags_are_exactly_the_cfg_pp_samplers():
    assert UNCOND_SAMPLERS == {name for name in NAMES if name.endswith("_cfg_pp")}
    assert all(needs_uncond_denoised(name) for name in UNCOND_SAMPLERS)
    assert not needs_uncond_denoised("euler_ancestral")


def test_brownian_set_matches_the_golden_noise_sources():
    assert BROWNIAN_SAMPLERS == set(manifest()["noise_sources"]["brownian_tree"])
    sigmas = golden_sigmas("dpmpp_sde")
    x = torch.zeros(1, 4, 8, 8)
    assert isinstance(default_noise_source("dpmpp_sde", x, sigmas, 7), BrownianTreeNoise)
    assert default_noise_source("dpmpp_sde_gpu", x, sigmas, 7).on_cpu is False
    assert isinstance(default_noise_source("lcm", x, sigmas, 7), GeneratorNoise)
    assert default_noise_source("euler_cfg_pp", x, sigmas, 7) is None
    with pytest.raises(ValueError):
        default_noise_source("euler", x, sigmas, 7)


@pytest.mark.parametrize("scheduler,denoise", [("normal", "1.0"), ("karras", "0.6")])
@pytest.mark.parametrize("name", NAMES)
def test_noise_requests_match_the_golden_trace_calls(name, scheduler, denoise):
    """Which (sigma, sigma_next) intervals a sampler asks noise for does not depend on the model."""
    entry = manifest()["runs"]["traces"][f"trace/{name}/{scheduler}/cfg5.0/den{denoise}"]
    sigmas = torch.tensor(entry["sigmas"], dtype=torch.float32)
    x = start_latent(sigmas)
    source = default_noise_source(name, x, sigmas, entry["seed"])
    expected = [(c["sigma"], c["sigma_next"]) for c in entry.get("noise_calls", [])]
    if source is None:
        assert expected == []
        return
    recorder = RecordingNoise(source)
    denoiser = AffineDenoiser()
    STOCHASTIC_SAMPLERS[name](denoiser, x, sigmas, extra_args={"seed": entry["seed"]}, noise_sampler=recorder)
    assert recorder.requests == expected
    assert denoiser.calls == entry["nfe"]


@pytest.mark.parametrize("name", NAMES)
def test_per_step_noise_changes_the_result_exactly_when_comfyui_says_so(name):
    sigmas = golden_sigmas(name)
    x = start_latent(sigmas)
    outputs = []
    for value in (0.0, 1.0):
        def constant_noise(sigma, sigma_next, value=value):
            return torch.full_like(x, value)

        opts = {} if name in NOISELESS_SAMPLERS else {"noise_sampler": constant_noise}
        outputs.append(STOCHASTIC_SAMPLERS[name](AffineDenoiser(), x, sigmas, extra_args={"seed": 1}, **opts))
    changes = not torch.equal(outputs[0], outputs[1])
    assert changes == manifest()["per_step_noise_changes_result"][name]


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_result_and_seed_matters_for_noisy_samplers(name):
    sigmas = golden_sigmas(name)
    x = start_latent(sigmas)
    run = lambda seed: STOCHASTIC_SAMPLERS[name](AffineDenoiser(), x, sigmas, extra_args={"seed": seed})
    first = run(7)
    assert torch.equal(first, run(7))
    assert torch.isfinite(first).all()
    assert (not torch.equal(first, run(8))) == manifest()["per_step_noise_changes_result"][name]


@pytest.mark.parametrize("name", NAMES)
def test_a_single_sigma_returns_the_input(name):
    x = torch.ones(1, 4, 2, 2)
    out = STOCHASTIC_SAMPLERS[name](AffineDenoiser(), x, torch.tensor([1.0]), extra_args={"seed": 1})
    assert torch.equal(out, x)


def test_cfg_pp_samplers_reject_a_denoiser_without_uncond():
    sigmas = golden_sigmas("euler_ancestral_cfg_pp")
    plain = lambda x, sigma, **_: x * 0.5
    with pytest.raises(TypeError, match="return_uncond"):
        STOCHASTIC_SAMPLERS["euler_ancestral_cfg_pp"](plain, start_latent(sigmas), sigmas, extra_args={"seed": 1})


def test_ancestral_split_preserves_the_target_variance():
    sigma, sigma_next = torch.tensor(5.0), torch.tensor(2.0)
    down, up = ancestral_split(sigma, sigma_next, eta=1.0)
    assert math.isclose(float(down**2 + up**2), 4.0, rel_tol=1e-6)
    assert math.isclose(float(up), math.sqrt(4.0 * (25.0 - 4.0) / 25.0), rel_tol=1e-6)
    assert ancestral_split(sigma, sigma_next, eta=0.0) == (sigma_next, 0.0)
    down, up = ancestral_split(sigma, torch.tensor(0.0))
    assert float(down) == 0.0 and float(up) == 0.0


@pytest.mark.parametrize("tau", [0.0, 1.0])
def test_adams_weights_integrate_low_degree_polynomials_exactly(tau):
    """b-weights reproduce k * alpha_t * integral exp(k (u - lam_t)) p(u) du for p = 1 and p = u (k = 1 + tau^2)."""
    nodes = torch.tensor([-1.2, -0.7, -0.3], dtype=torch.float64)
    lam_s, lam_t = nodes[-1], torch.tensor(0.4, dtype=torch.float64)
    sigma_next = torch.exp(-lam_t)  # alpha_t = sigma_t * exp(lam_t) = 1
    weights = adams_weights(sigma_next, nodes, lam_s, lam_t, tau)
    k, h = 1 + tau**2, float(lam_t - lam_s)
    decay = math.exp(-k * h)
    assert math.isclose(float(weights.sum()), 1 - decay, rel_tol=1e-9)
    linear = float(lam_t) - float(lam_s) * decay - (1 - decay) / k
    assert math.isclose(float((weights * nodes).sum()), linear, rel_tol=1e-9)
