"""The new schedules against ComfyUI's own numbers (tests/data/golden/custom_schedules.safetensors, produced by
ComfyUI 0.3.68's functions; see the golden README), bit for bit, and the rules around them."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from nodes.custom_sampling import schedules
from nodes.samplers.model_sampling import ModelSamplingDiscrete
from nodes.samplers.schedules import beta_schedule, exponential_sigmas, karras_sigmas
from tests.samplers.golden import GOLDEN_DIR

GOLDEN = GOLDEN_DIR / "custom_schedules.safetensors"


def golden_cases() -> list[tuple[str, dict, torch.Tensor]]:
    with safe_open(str(GOLDEN), "pt") as f:
        params = json.loads(f.metadata()["cases"])
        return [(key, params[key], f.get_tensor(key)) for key in f.keys()]


MS = ModelSamplingDiscrete("eps")


def computed(key: str, p: dict) -> torch.Tensor:
    kind = key.split("/")[0]
    if kind == "karras":
        return karras_sigmas(p["steps"], p["sigma_min"], p["sigma_max"], p["rho"])
    if kind == "exponential":
        return exponential_sigmas(p["steps"], p["sigma_min"], p["sigma_max"])
    if kind == "polyexponential":
        return schedules.polyexponential_sigmas(p["steps"], p["sigma_min"], p["sigma_max"], p["rho"])
    if kind == "laplace":
        return schedules.laplace_sigmas(p["steps"], p["sigma_min"], p["sigma_max"], p["mu"], p["beta"])
    if kind == "vp":
        return schedules.vp_sigmas(p["steps"], p["beta_d"], p["beta_min"], p["eps_s"])
    if kind == "beta":
        return beta_schedule(MS, p["steps"], p["alpha"], p["beta"])
    if kind == "sdturbo":
        return schedules.sd_turbo_sigmas(MS, p["steps"], p["denoise"])
    if kind == "ays":
        return schedules.align_your_steps_sigmas(p["model_type"], p["steps"], p["denoise"])
    if kind == "optimal":
        return schedules.optimal_steps_sigmas(p["model_type"], p["steps"], p["denoise"])
    if kind == "gits":
        return schedules.gits_sigmas(p["coeff"], p["steps"], p["denoise"])
    raise AssertionError(key)


def test_golden_file_covers_every_new_schedule():
    kinds = {key.split("/")[0] for key, _, _ in golden_cases()}
    assert kinds == {"karras", "exponential", "polyexponential", "laplace", "vp", "beta", "sdturbo", "ays", "optimal",
                     "gits"}


@pytest.mark.parametrize("key,params,expected", golden_cases(), ids=[c[0] for c in golden_cases()])
def test_schedule_matches_comfyui_bit_for_bit(key, params, expected):
    got = computed(key, params)
    assert got.dtype == torch.float32
    assert torch.equal(got, expected), (got, expected)


def test_tables_hold_the_published_ten_step_schedules_and_their_sources():
    data = schedules.tables()
    for name in ("align_your_steps", "gits", "optimal_steps"):
        assert "http" in data[name]["source"]
    ays = data["align_your_steps"]["levels"]
    assert set(ays) == {"SD1", "SDXL", "SVD"} and all(len(v) == 11 for v in ays.values())
    # 10 steps use the table itself: its first ten levels then 0
    sd1 = schedules.align_your_steps_sigmas("SD1", 10, 1.0)
    assert torch.equal(sd1[:-1], torch.tensor(ays["SD1"][:-1], dtype=torch.float32)) and sd1[-1] == 0
    gits = data["gits"]["levels"]
    assert schedules.gits_coefficients() == [f"{0.80 + 0.05 * i:.2f}" for i in range(15)]
    assert all([len(row) for row in rows] == list(range(3, 22)) for rows in gits.values())


def test_denoise_keeps_the_low_end_and_zero_denoise_is_empty():
    full = schedules.align_your_steps_sigmas("SDXL", 20, 1.0)
    half = schedules.align_your_steps_sigmas("SDXL", 20, 0.5)
    assert len(half) == 11 and torch.equal(half[:-1], full[-11:-1]) and half[-1] == 0
    for fn in (schedules.align_your_steps_sigmas, schedules.optimal_steps_sigmas):
        assert len(fn("SD1" if fn is schedules.align_your_steps_sigmas else "FLUX", 10, 0.0)) == 0
    assert len(schedules.gits_sigmas(1.2, 10, 0.0)) == 0
    assert len(schedules.basic_sigmas(MS, "karras", 10, 0.0)) == 0
    partial = schedules.basic_sigmas(MS, "karras", 10, 0.5)
    assert torch.equal(partial, karras_sigmas(20, float(MS.sigma_min), float(MS.sigma_max))[-11:])


def test_gits_rejects_a_coefficient_off_the_published_grid():
    with pytest.raises(ValueError, match="coeff must be one of"):
        schedules.gits_sigmas(1.23, 10, 1.0)


def test_loglinear_interp_is_linear_in_log_sigma():
    out = schedules.loglinear_interp([8.0, 2.0, 0.5], 5)
    assert out.tolist() == pytest.approx([8.0, 4.0, 2.0, 1.0, 0.5])
