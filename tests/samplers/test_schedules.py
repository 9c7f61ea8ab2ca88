"""Schedulers and the KSampler / KSamplerAdvanced sigma rules (golden §3.3-3.5)."""
import pytest
import torch

from nodes.samplers.model_sampling import ModelSamplingDiscrete
from nodes.samplers.names import SCHEDULER_NAMES
from nodes.samplers.pipeline import sampling_sigmas
from nodes.samplers.schedules import SCHEDULERS, calculate_sigmas, ksampler_sigmas
from tests.samplers.golden import all_run_entries, manifest, tensors

MS = ModelSamplingDiscrete()


# Karras raises float32 tensors to the 7th power; torch's vectorised float32 pow is within 1 ulp but rounds
# differently on AVX2 and AVX-512 CPUs, so the recorded numbers are matched exactly or to that ulp.
POW_ULPS = {"karras": 1}


def _same(actual: torch.Tensor, expected: torch.Tensor, ulps: int = 0) -> bool:
    if actual.dtype != torch.float32 or actual.shape != expected.shape:
        return False
    actual, expected = torch.nan_to_num(actual, nan=-1.0), torch.nan_to_num(expected, nan=-1.0)
    if ulps == 0:
        return torch.equal(actual, expected)
    one_ulp = (torch.nextafter(expected, torch.full_like(expected, float("inf"))) - expected).abs()
    return bool(((actual - expected).abs() <= ulps * one_ulp).all())


def test_ulp_tolerance_is_one_step_of_float32():
    x = torch.tensor([0.1450222283601761])
    assert _same(torch.nextafter(x, torch.tensor([1.0])), x, ulps=1)
    assert not _same(torch.nextafter(torch.nextafter(x, torch.tensor([1.0])), torch.tensor([1.0])), x, ulps=1)
    assert not _same(torch.nextafter(x, torch.tensor([1.0])), x)


def _keys(prefix: str) -> list[str]:
    return [k for k in tensors("schedules") if k.startswith(prefix)]


def test_scheduler_table_order_is_comfyui_order():
    assert list(SCHEDULERS) == manifest()["generator"]["scheduler_names"]
    assert list(SCHEDULER_NAMES) == manifest()["generator"]["scheduler_names"]


@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
def test_raw_schedules_are_exact(scheduler):
    keys = _keys(f"raw/{scheduler}/")
    assert keys
    ulps = POW_ULPS.get(scheduler, 0)
    wrong = [k for k in keys
             if not _same(calculate_sigmas(MS, scheduler, int(k.split("n=")[1])), tensors("schedules")[k], ulps)]
    assert not wrong


@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
def test_ksampler_vectors_are_exact(scheduler):
    keys = _keys(f"ksampler/{scheduler}/")
    assert len(keys) == 64
    wrong = []
    for key in keys:
        _, _, steps, denoise, variant = key.split("/")
        sampler = "dpm_2" if variant == "discard_penultimate" else "euler"
        sigmas = ksampler_sigmas(MS, scheduler, int(steps[6:]), float(denoise[8:]), sampler)
        if not _same(sigmas, tensors("schedules")[key], POW_ULPS.get(scheduler, 0)):
            wrong.append(key)
    assert not wrong


def test_kl_optimal_with_one_step_is_nan_like_comfyui():
    assert torch.isnan(calculate_sigmas(MS, "kl_optimal", 1)[0])


def test_denoise_zero_gives_an_empty_schedule():
    assert len(ksampler_sigmas(MS, "normal", 6, 0.0)) == 0
    assert sampling_sigmas(MS, "normal", 6, "euler", denoise=0.0) is None


def test_unknown_scheduler_raises():
    with pytest.raises(ValueError, match="unknown scheduler"):
        calculate_sigmas(MS, "cosine", 10)


def _run_sigmas(entry):
    if entry["node"] == "KSamplerAdvanced":
        return sampling_sigmas(
            MS,
            entry["scheduler"],
            entry["steps"],
            entry["sampler_name"],
            start_step=entry["start_at_step"],
            last_step=entry["end_at_step"],
            force_full_denoise=entry["return_with_leftover_noise"] != "enable",
        )
    return sampling_sigmas(MS, entry["scheduler"], entry["steps"], entry["sampler_name"], entry["denoise"])


def test_every_run_gets_comfyuis_sigma_vector():
    """Includes KSamplerAdvanced trimming, leftover noise and the start >= len skip."""
    wrong = []
    for key, entry in all_run_entries().items():
        sigmas = _run_sigmas(entry)
        expected = entry["sigmas"]
        if entry["node"] == "KSamplerAdvanced" and entry["start_at_step"] >= 6:
            if sigmas is not None:
                wrong.append(key)
        elif sigmas is None or sigmas.tolist() != expected:
            wrong.append(key)
        elif entry.get("max_denoise") is not None and MS.is_max_denoise(float(sigmas[0])) != entry["max_denoise"]:
            wrong.append(key)
    assert not wrong
