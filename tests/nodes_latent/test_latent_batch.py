"""LatentBatch, LatentBatchSeedBehavior and RebatchLatents: samples, batch_index and noise_mask bookkeeping."""

import torch

from nodes.imageio import common_upscale
from nodes.latent_batch import rebatch

from .conftest import lat, ramp


def test_batch_appends_and_concatenates_batch_indices(run):
    s1, s2 = ramp(2, 4, 2, 2), ramp(1, 4, 4, 4)
    out = run("LatentBatch", {"samples1": ["a", 0], "samples2": ["b", 0]}, a=lat(s1, batch_index=[5, 6]), b=lat(s2))
    assert torch.equal(out["samples"], torch.cat((s1, common_upscale(s2, 2, 2, "bilinear", "center"))))
    assert out["batch_index"] == [5, 6, 0]
    plain = run("LatentBatch", {"samples1": ["a", 0], "samples2": ["b", 0]}, a=lat(s1), b=lat(s1[:1]))
    assert plain["batch_index"] == [0, 1, 0] and plain["samples"].shape[0] == 3


def test_seed_behavior_fixed_and_random(run):
    s = ramp(3, 4, 1, 1)
    fixed = run("LatentBatchSeedBehavior", {"samples": ["a", 0], "seed_behavior": "fixed"},
                a=lat(s, batch_index=[4, 2, 9]))
    assert fixed["batch_index"] == [4, 4, 4] and torch.equal(fixed["samples"], s)
    fresh = run("LatentBatchSeedBehavior", {"samples": ["a", 0], "seed_behavior": "fixed"}, a=lat(s))
    assert fresh["batch_index"] == [0, 0, 0]
    random = run("LatentBatchSeedBehavior", {"samples": ["a", 0], "seed_behavior": "random"},
                 a=lat(s, batch_index=[4, 2, 9]))
    assert "batch_index" not in random


def test_rebatch_node_splits_one_batch_into_a_list(run):
    s = ramp(5, 4, 1, 1)
    parts = run("RebatchLatents", {"latents": ["a", 0], "batch_size": 2}, a=lat(s))
    assert [p["samples"].shape[0] for p in parts] == [2, 2, 1]
    assert torch.equal(torch.cat([p["samples"] for p in parts]), s)
    assert [p["batch_index"] for p in parts] == [[0, 1], [2, 3], [4]]
    assert all("noise_mask" not in p for p in parts)  # all-ones masks are dropped


def test_rebatch_joins_lists_keeps_masks_and_starts_over_at_a_new_size():
    small = {"samples": ramp(3, 4, 1, 1)}
    masked = {"samples": ramp(1, 4, 1, 1) + 100, "noise_mask": torch.zeros(1, 1, 4, 4), "batch_index": [7]}
    large = {"samples": ramp(2, 4, 2, 2)}
    parts = rebatch([small, masked, large], 2, lambda: None)
    assert [tuple(p["samples"].shape) for p in parts] == [(2, 4, 1, 1), (2, 4, 1, 1), (2, 4, 2, 2)]
    assert [p["batch_index"] for p in parts] == [[0, 1], [2, 7], [4, 5]]
    assert "noise_mask" not in parts[0] and "noise_mask" not in parts[2]
    mask = parts[1]["noise_mask"]  # the masked latent's mask, resized to 8× its latent; its neighbour all ones
    assert mask.shape == (2, 1, 8, 8) and torch.equal(mask[0], torch.ones(1, 8, 8))
    assert torch.equal(mask[1], torch.zeros(1, 8, 8))


def test_rebatch_checks_for_cancellation_per_latent():
    calls = []
    rebatch([{"samples": ramp(1, 4, 1, 1)}] * 3, 4, lambda: calls.append(1))
    assert len(calls) == 3
