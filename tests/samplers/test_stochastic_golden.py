"""Stochastic / CFG++ samplers through `ksample` against ComfyUI's golden trajectories (README §4, §8).

Default run (~640 replays, ~12 s CPU): a cross-section of the 1,277 golden runs of these samplers (see
`in_default_subset`); set GRAPHENGINE_GOLDEN_FULL=1 to replay all of them.
"""
from __future__ import annotations

import os

import pytest
import torch

import nodes.samplers.names as sampler_names
from nodes.samplers.noise_samplers import RecordingNoise
from nodes.samplers.stochastic import STOCHASTIC_SAMPLERS, default_noise_source
from tests.samplers.golden import all_run_entries, manifest, reference_output, replay, tensors, within_tolerance

def covered_by_a_trace(key: str) -> bool:
    """ksampler/<s>/<normal|karras>/cfg5.0/* are replayed (with their noise checked) by the trace test."""
    parts = key.split("/")
    return parts[0] == "ksampler" and parts[2] in ("normal", "karras") and parts[3] == "cfg5.0"


def in_default_subset(key: str, entry: dict) -> bool:
    """A cross-section: every sampler x scheduler, cfg, denoise, v-prediction, batch and KSamplerAdvanced case."""
    kind = key.split("/")[0]
    if kind == "ksampler":
        if entry["scheduler"] in ("normal", "karras"):
            return True
        return entry["cfg"] == 5.0 and entry["denoise"] == 1.0
    if kind == "vpred":
        return entry["scheduler"] == "normal"
    if kind == "batch2":
        return entry["scheduler"] == "karras"
    return True


def selected(key: str, entry: dict) -> bool:
    if entry.get("sampler_name") not in STOCHASTIC_SAMPLERS:
        return False
    if os.environ.get("GRAPHENGINE_GOLDEN_FULL") == "1":
        return True
    return not covered_by_a_trace(key) and in_default_subset(key, entry)


RUN_KEYS = sorted(key for key, entry in all_run_entries().items() if selected(key, entry))
TRACE_KEYS = sorted(key for key in tensors("noise_traces")
                    if key.split("/")[1] in STOCHASTIC_SAMPLERS and "noise_calls" in
                    {**all_run_entries(), **manifest()["runs"]["traces"]}[key])


@pytest.fixture(autouse=True)
def these_samplers(monkeypatch):
    """ksample resolves names through names.get_sampler; make sure it is this table's implementation we test."""
    monkeypatch.setattr(sampler_names, "get_sampler", lambda name: STOCHASTIC_SAMPLERS[name])


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Tiny tensors: one thread avoids OpenMP contention on the shared 2-core machine (results are identical)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_every_stochastic_sampler_has_golden_runs():
    covered = {all_run_entries()[key]["sampler_name"] for key in RUN_KEYS}
    assert covered == set(STOCHASTIC_SAMPLERS)
    assert len(RUN_KEYS) + len(TRACE_KEYS) > 600


@pytest.mark.parametrize("key", RUN_KEYS)
def test_final_latent_matches_comfyui(key):
    entry = all_run_entries()[key]
    out = replay(entry)["samples"]
    ok, error, bound = within_tolerance(out, reference_output(entry))
    assert ok, f"{key}: max|diff| {error:.3g} > {bound:.3g}"


def recording_sampler(name: str, recorders: list):
    """The registered sampler, fed its own default noise source through a recorder."""
    sampler = STOCHASTIC_SAMPLERS[name]

    def run(model, x, sigmas, extra_args=None, **kwargs):
        recorder = RecordingNoise(default_noise_source(name, x, sigmas, extra_args["seed"]))
        recorders.append(recorder)
        return sampler(model, x, sigmas, extra_args=extra_args, noise_sampler=recorder, **kwargs)

    return run


@pytest.mark.parametrize("key", TRACE_KEYS)
def test_per_step_noise_matches_the_golden_trace(key, monkeypatch):
    """Inside a real sampling run: every draw, its (sigma, sigma_next) and the final latent."""
    entry = {**all_run_entries(), **manifest()["runs"]["traces"]}[key]
    recorders: list = []
    monkeypatch.setattr(sampler_names, "get_sampler", lambda name: recording_sampler(name, recorders))
    out = replay(entry)["samples"]
    (recorder,) = recorders
    assert recorder.requests == [(c["sigma"], c["sigma_next"]) for c in entry["noise_calls"]]
    expected = tensors("noise_traces")[key]
    assert len(recorder.draws) == expected.shape[0]
    for index, draw in enumerate(recorder.draws):
        assert torch.equal(draw, expected[index]), f"draw {index}"
    ok, error, bound = within_tolerance(out, reference_output(entry))
    assert ok, f"{key}: max|diff| {error:.3g} > {bound:.3g}"


@pytest.mark.parametrize("name", ["euler_ancestral", "dpmpp_2m_sde", "sa_solver"])
def test_callbacks_match_the_golden_previews(name):
    """x0 (what a preview shows) and x before each step, for a generator, a Brownian and a predictor sampler."""
    key = f"steps/{name}/karras/cfg5.0/den1.0"
    entry = manifest()["runs"]["steps"][key]
    seen = []
    replay(entry, callback=lambda step, total, x0, x: seen.append((step, total, x0.clone(), x.clone())))
    x0_ref, x_ref = tensors("steps")[f"{key}/x0"], tensors("steps")[f"{key}/x"]
    assert [s[0] for s in seen] == entry["callback_steps"]
    assert all(s[1] == entry["callback_total_steps"] for s in seen)
    for step, (_, _, x0, x) in enumerate(seen):
        assert within_tolerance(x0, x0_ref[step])[0], f"x0 at step {step}"
        assert within_tolerance(x, x_ref[step])[0], f"x at step {step}"
