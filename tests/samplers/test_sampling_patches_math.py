"""The model-sampling variants and guidance hooks against references written from the published formulas
(zero terminal SNR, LCM boundary conditions, EDM preconditioning, CFG rescale, CFG-Zero*, APG, Differential
Diffusion), and the hooks inside a real sampler run on the toy network."""
from __future__ import annotations

import math

import pytest
import torch

from nodes.samplers.guidance import (AdaptiveProjectedGuidance, CfgArgs, RunGuidance, StatelessHook, cfg_zero_star,
                                     differential_mask, plain_cfg, rescale_cfg)
from nodes.samplers.model_sampling import (ModelSamplingContinuousEDM, ModelSamplingContinuousV, ModelSamplingDiscrete,
                                           ModelSamplingDiscreteDistilled)
from nodes.samplers.pipeline import ksample
from tests.samplers.toy import ToyModel, constant_conditioning

G = torch.Generator().manual_seed(7)
X = torch.randn(2, 4, 6, 6, generator=G) * 3
COND = torch.randn(2, 4, 6, 6, generator=G)
UNCOND = torch.randn(2, 4, 6, 6, generator=G)
SIGMA = torch.tensor([2.5, 0.7])


def args(scale: float = 5.0, **kw) -> CfgArgs:
    return CfgArgs(X, SIGMA, scale, COND, UNCOND, **kw)


def per_item(v: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, 1, 1, 1)


# -- schedules and predictions ---------------------------------------------------------------------------------

def test_zsnr_table_follows_the_paper_and_ends_at_the_clamped_sigma():
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    root = torch.cumprod(1 - betas, 0).sqrt()
    # Lin et al. 2023, Algorithm 1: shift so the last sqrt(alpha_bar) is 0, scale so the first is unchanged
    rescaled = (root - root[-1]) * root[0] / (root[0] - root[-1])
    expected = ((1 - rescaled**2) / rescaled**2).sqrt()
    ms = ModelSamplingDiscrete(zsnr=True)
    assert torch.allclose(ms.sigmas64[:-1], expected[:-1], rtol=1e-12)
    # alpha_bar = 0 has sigma = inf; ComfyUI clamps the last alpha_bar to 4.8973451890853435e-08
    last = math.sqrt((1 - 4.8973451890853435e-08) / 4.8973451890853435e-08)
    assert float(ms.sigmas[-1]) == float(torch.tensor(last, dtype=torch.float32))
    assert 4518 < float(ms.sigma_max) < 4519
    plain = ModelSamplingDiscrete()
    assert math.isclose(float(ms.sigma_min), float(plain.sigma_min), rel_tol=1e-6)
    assert float(plain.sigma_max) < 15 and not plain.zsnr


def test_lcm_uses_every_twentieth_sigma_and_the_boundary_scalings():
    base, lcm = ModelSamplingDiscrete(), ModelSamplingDiscreteDistilled()
    assert torch.equal(lcm.sigmas, base.sigmas[19::20])
    sigma = lcm.sigmas[[49, 10]]
    assert lcm.timestep(sigma).tolist() == [999, 219]
    assert torch.allclose(lcm.sigma(torch.tensor([999.0, 219.0])), sigma)
    out = torch.randn(2, 4, 6, 6, generator=G)
    t = torch.tensor([999.0, 219.0]) * 10.0  # LCM: timestep scaling 10, sigma_data 0.5
    c_skip = 0.25 / (t**2 + 0.25)
    c_out = t / (t**2 + 0.25).sqrt()
    x0 = X - out * per_item(sigma)
    expected = per_item(c_out) * x0 + per_item(c_skip) * X
    assert torch.allclose(lcm.calculate_denoised(sigma, out, X), expected, atol=1e-6)
    assert lcm.percent_to_sigma(0.5) == pytest.approx(float(base.sigma(torch.tensor(499.5))), rel=0.02)


def test_x0_and_img_to_img_predictions():
    out = torch.randn_like(X)
    x0 = ModelSamplingDiscrete("x0")
    assert torch.equal(x0.calculate_denoised(SIGMA, out, X), out)
    assert torch.allclose(x0.calculate_input(SIGMA, X), X / per_item(SIGMA**2 + 1).sqrt())
    img = ModelSamplingDiscrete("img_to_img")
    assert torch.equal(img.calculate_input(SIGMA, X), X) and torch.equal(img.calculate_denoised(SIGMA, out, X), out)


@pytest.mark.parametrize("prediction, sigma_data", [("edm", 0.5), ("v", 1.0), ("eps", 1.0)])
def test_continuous_edm_preconditioning(prediction, sigma_data):
    ms = ModelSamplingContinuousEDM(prediction, 0.002, 120.0, sigma_data)
    assert math.isclose(float(ms.sigma_min), 0.002, rel_tol=1e-5) and math.isclose(float(ms.sigma_max), 120.0,
                                                                                    rel_tol=1e-5)
    assert torch.allclose(ms.timestep(SIGMA), 0.25 * SIGMA.log())
    assert torch.allclose(ms.sigma(ms.timestep(SIGMA)), SIGMA)
    s, d = per_item(SIGMA), sigma_data
    out = torch.randn_like(X)
    # Karras et al. 2022, table 1: c_in = 1/sqrt(s²+d²), c_skip = d²/(s²+d²), c_out = ±s·d/sqrt(s²+d²)
    assert torch.allclose(ms.calculate_input(SIGMA, X), X / (s**2 + d**2).sqrt())
    c_skip, c_out = d**2 / (s**2 + d**2), s * d / (s**2 + d**2).sqrt()
    expected = {"edm": c_skip * X + c_out * out, "v": c_skip * X - c_out * out, "eps": X - s * out}[prediction]
    assert torch.allclose(ms.calculate_denoised(SIGMA, out, X), expected, atol=1e-6)
    # percent -> sigma is log-linear between the ends
    assert ms.percent_to_sigma(0.5) == pytest.approx(math.sqrt(0.002 * 120.0), rel=1e-5)


def test_continuous_v_timestep_is_the_angle():
    ms = ModelSamplingContinuousV("v", 0.03, 500.0)
    assert torch.allclose(ms.timestep(SIGMA), torch.atan(SIGMA) * 2 / math.pi)
    assert torch.allclose(ms.sigma(ms.timestep(SIGMA)), SIGMA)
    with pytest.raises(ValueError, match="sigma_min"):
        ModelSamplingContinuousV("v", 0.0, 500.0)


# -- guidance formulas -----------------------------------------------------------------------------------------

def v_of(x0: torch.Tensor) -> torch.Tensor:
    """v = alpha·eps - sigma_t·x0 (Salimans & Ho 2022) for the VP latent z = alpha·x."""
    s = per_item(SIGMA)
    alpha, sigma_t = 1 / (1 + s**2).sqrt(), s / (1 + s**2).sqrt()
    return alpha * (X - x0) / s - sigma_t * x0


def test_rescale_cfg_matches_the_papers_v_space_rescale():
    s = per_item(SIGMA)
    alpha, sigma_t = 1 / (1 + s**2).sqrt(), s / (1 + s**2).sqrt()
    v_cond, v_uncond = v_of(COND), v_of(UNCOND)
    v_cfg = v_uncond + 5.0 * (v_cond - v_uncond)
    rescaled = v_cfg * v_cond.std(dim=(1, 2, 3), keepdim=True) / v_cfg.std(dim=(1, 2, 3), keepdim=True)
    v_final = 0.7 * rescaled + 0.3 * v_cfg
    expected = alpha * (alpha * X) - sigma_t * v_final  # x0 = alpha·z - sigma_t·v
    assert torch.allclose(rescale_cfg(args(), 0.7), expected, atol=1e-5)
    plain = UNCOND + (COND - UNCOND) * 5.0
    assert torch.allclose(rescale_cfg(args(), 0.0), plain, atol=1e-5)
    assert torch.equal(plain_cfg(args()), plain)


def test_cfg_zero_star_scales_the_uncond_by_the_optimal_projection():
    eps_c, eps_u = (X - COND).flatten(1), (X - UNCOND).flatten(1)
    star = per_item((eps_c * eps_u).sum(1) / (eps_u.norm(dim=1) ** 2 + 1e-8))
    expected = star * UNCOND + 5.0 * (COND - star * UNCOND)  # Fan et al. 2025: s*·u + w·(c - s*·u)
    assert torch.allclose(cfg_zero_star(args(denoised=plain_cfg(args()))), expected, atol=1e-5)


def apg_reference(steps: list[tuple[torch.Tensor, torch.Tensor]], scale: float, eta: float, threshold: float,
                  momentum: float) -> list[torch.Tensor]:
    """Sadat et al. 2024, Algorithm 1, with ComfyUI's guidance scale mapping w = cfg + 1."""
    running, results = torch.zeros(()), []
    for cond, uncond in steps:
        diff = cond - uncond
        running = diff + momentum * running
        diff = running if momentum else diff
        if threshold > 0:
            norm = diff.flatten(1).norm(dim=1)
            diff = diff * per_item(torch.clamp(threshold / norm, max=1.0))
        c = cond.flatten(1)
        parallel = per_item((diff.flatten(1) * c).sum(1) / (c * c).sum(1)) * cond
        update = (diff - parallel) + eta * parallel
        results.append(cond + ((scale + 1) - 1) * update)
    return results


def test_apg_follows_algorithm_1_and_its_momentum_lives_in_one_run():
    hook = AdaptiveProjectedGuidance(eta=0.3, norm_threshold=4.0, momentum=-0.5)
    steps = [(COND, UNCOND), (COND * 0.5 + 0.1, UNCOND * 0.8), (COND * 0.2, UNCOND * 0.3 - 0.2)]
    sigmas = [torch.tensor([3.0, 3.0]), torch.tensor([2.0, 2.0]), torch.tensor([1.0, 1.0])]
    expected = apg_reference(steps, 5.0, 0.3, 4.0, -0.5)
    for attempt in range(2):  # a second run starts from an empty momentum buffer
        run = RunGuidance.start((hook,))
        for (cond, uncond), sigma, want in zip(steps, sigmas, expected):
            got, _ = run.combine(X, sigma, cond, uncond, 5.0)
            assert torch.allclose(got, want, atol=1e-5), attempt
    without = apg_reference(steps, 5.0, 0.3, 4.0, 0.0)
    assert not torch.allclose(expected[-1], without[-1], atol=1e-3)


def test_differential_mask_thresholds_by_the_steps_progress():
    ms = ModelSamplingDiscrete()
    sigmas = torch.tensor([14.6, 5.0, 1.0, 0.0])
    mask = torch.linspace(0, 1, 11).reshape(1, 1, 1, 11)

    def index(s: float) -> int:
        return int((ms.log_sigmas.double() - math.log(s)).abs().argmin())
    start, end = index(14.6), index(float(ms.sigma_min))
    for sigma in sigmas[:-1]:
        threshold = (index(float(sigma)) - end) / (start - end)
        expected = (mask >= threshold).float()
        assert torch.equal(differential_mask(sigma.reshape(1), mask, sigmas, ms), expected)
        blended = differential_mask(sigma.reshape(1), mask, sigmas, ms, strength=0.25)
        assert torch.allclose(blended, 0.25 * expected + 0.75 * mask)
    assert differential_mask(sigmas[:1], mask, sigmas, ms).sum() == 1  # the first step: only mask == 1


# -- hooks inside a sampler run ----------------------------------------------------------------------------------

class GuidedToy(ToyModel):
    def __init__(self, guidance: tuple = (), prediction: str = "eps") -> None:
        super().__init__(prediction)
        self.guidance = guidance


def toy_run(model, seed: int = 3, **kw) -> torch.Tensor:
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    options = dict(seed=seed, steps=4, cfg=6.0, sampler_name="euler", scheduler="normal",
                   positive=constant_conditioning(0.3), negative=constant_conditioning(-0.2), latent=latent)
    options.update(kw)
    return ksample(model, **options)["samples"]


def test_hooks_in_a_run_plain_cfg_hook_is_bit_exact_and_apg_state_is_per_run():
    base = toy_run(ToyModel())
    assert torch.equal(toy_run(GuidedToy((StatelessHook("cfg", plain_cfg),))), base)
    assert not torch.equal(toy_run(GuidedToy((StatelessHook("post_cfg", cfg_zero_star),))), base)
    apg = GuidedToy((AdaptiveProjectedGuidance(1.0, 2.0, -0.5),))
    # the second stage of a split run starts at the first stage's last sigma (no increase), so a buffer kept on the
    # model would carry over; a per-run buffer gives the same as the second stage alone on a fresh model
    stage = dict(seed=3, steps=6, disable_noise=True, latent={"samples": torch.randn(1, 4, 8, 8, generator=G)})
    toy_run(apg, start_step=0, last_step=3, **{k: v for k, v in stage.items() if k != "disable_noise"})
    second = toy_run(apg, start_step=3, last_step=6, **stage)
    fresh = toy_run(GuidedToy(apg.guidance), start_step=3, last_step=6, **stage)
    assert torch.equal(second, fresh)
    assert not torch.equal(fresh, toy_run(ToyModel(), start_step=3, last_step=6, **stage))
