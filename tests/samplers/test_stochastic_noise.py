"""Per-step noise sources: generator / Brownian-tree draws against the golden traces (README §4), exactly."""
from __future__ import annotations

import pytest
import torch

from nodes.samplers.noise import prepare_noise
from nodes.samplers.noise_samplers import (
    BrownianTreeNoise,
    GeneratorNoise,
    RecordedNoise,
    RecordingNoise,
    brownian_noise_for,
)
from tests.samplers.golden import all_run_entries, manifest, tensors


def traced_entries() -> dict[str, dict]:
    runs = {**all_run_entries(), **manifest()["runs"]["traces"]}
    return {key: runs[key] for key in tensors("noise_traces")}


def f32(value: float) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.float32)


def source_for(entry: dict):
    like = torch.zeros(entry["output_shape"])
    if entry["noise_calls"][0]["source"] == "generator":
        return GeneratorNoise(like, entry["seed"])
    init = entry["brownian_init"][0]
    return BrownianTreeNoise(like, f32(init["sigma_min"]), f32(init["sigma_max"]), init["seed"], on_cpu=init["cpu"])


def test_every_golden_trace_is_reproduced_bit_exactly():
    entries = traced_entries()
    assert len(entries) == 122
    for key, entry in entries.items():
        expected = tensors("noise_traces")[key]
        source = source_for(entry)
        draws = [source(f32(c["sigma"]), f32(c["sigma_next"])) for c in entry["noise_calls"]]
        assert len(draws) == expected.shape[0], key
        for index, draw in enumerate(draws):
            assert torch.equal(draw, expected[index]), f"{key} draw {index}"


def test_first_generator_draw_equals_the_initial_noise():
    latent = torch.zeros(2, 4, 8, 8)
    draw = GeneratorNoise(latent, 7)(f32(1.0), f32(0.5))
    assert torch.equal(draw, prepare_noise(latent, 7))
    assert torch.equal(draw, tensors("noise")["noise/seed=7/shape=2x4x8x8"])


def test_generator_uses_only_the_low_32_bits_of_the_seed_like_torch():
    latent = torch.zeros(1, 4, 8, 8)
    assert torch.equal(GeneratorNoise(latent, 2**32 + 5)(), GeneratorNoise(latent, 5)())
    assert torch.equal(GeneratorNoise(latent, 2**64 - 1)(), tensors("noise")["noise/seed=18446744073709551615/shape=1x4x8x8"])


def test_generator_without_seed_draws_from_the_global_generator():
    latent = torch.zeros(1, 4, 2, 2)
    torch.manual_seed(123)
    expected = torch.randn(1, 4, 2, 2)
    torch.manual_seed(123)
    assert torch.equal(GeneratorNoise(latent, None)(), expected)


def test_brownian_noise_is_antisymmetric_and_unit_scaled():
    sigmas = torch.tensor([14.6, 3.0, 1.0, 0.1, 0.0])
    source = brownian_noise_for(torch.zeros(1, 4, 8, 8), sigmas, seed=3, on_cpu=True)
    forward = source(sigmas[0], sigmas[1])
    backward = source(sigmas[1], sigmas[0])
    assert torch.equal(backward, -forward)
    assert 0.5 < float(forward.std()) < 1.5


def test_brownian_increments_add_up_over_nested_intervals():
    """W(a->c) = W(a->b) + W(b->c): the property dpmpp_sde relies on for its midpoint draws."""
    source = BrownianTreeNoise(torch.zeros(1, 4, 8, 8), f32(0.03), f32(14.6), seed=11)
    a, b, c = f32(14.6), f32(4.0), f32(0.5)
    whole = source.increment(a, c)
    parts = source.increment(a, b) + source.increment(b, c)
    assert torch.allclose(whole, parts, atol=1e-5)


def test_brownian_tree_depends_on_seed_and_is_reproducible():
    like = torch.zeros(1, 4, 4, 4)
    first = BrownianTreeNoise(like, f32(0.1), f32(10.0), seed=1)(f32(10.0), f32(5.0))
    again = BrownianTreeNoise(like, f32(0.1), f32(10.0), seed=1)(f32(10.0), f32(5.0))
    other = BrownianTreeNoise(like, f32(0.1), f32(10.0), seed=2)(f32(10.0), f32(5.0))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_cpu_and_device_trees_agree_on_a_cpu_latent():
    like = torch.zeros(1, 4, 4, 4)
    on_cpu = BrownianTreeNoise(like, f32(0.1), f32(10.0), seed=5, on_cpu=True)(f32(3.0), f32(1.0))
    on_device = BrownianTreeNoise(like, f32(0.1), f32(10.0), seed=5, on_cpu=False)(f32(3.0), f32(1.0))
    assert torch.equal(on_cpu, on_device)


def test_recorded_noise_replays_in_order_and_refuses_extra_requests():
    draws = [torch.full((1, 2), float(v)) for v in range(2)]
    replay = RecordedNoise(draws)
    assert torch.equal(replay(f32(2.0), f32(1.0)), draws[0])
    assert torch.equal(replay(f32(1.0), f32(0.5)), draws[1])
    assert replay.requests == [(2.0, 1.0), (1.0, 0.5)]
    with pytest.raises(IndexError):
        replay(f32(0.5), f32(0.1))


def test_recording_noise_keeps_requests_and_draws():
    recorder = RecordingNoise(GeneratorNoise(torch.zeros(1, 4, 2, 2), 9))
    first = recorder(f32(3.0), f32(2.0))
    recorder(f32(2.0), f32(1.0))
    assert recorder.requests == [(3.0, 2.0), (2.0, 1.0)]
    assert torch.equal(recorder.draws[0], first)
    assert not torch.equal(recorder.draws[0], recorder.draws[1])
