"""LatentApplyOperationCFG on the tiny checkpoint: the operation patches the guidance of a new MODEL handle (a
near-identity operation keeps the result, a tone map changes it) and the cached base model is untouched."""

from __future__ import annotations

import torch

from graphengine import Executor

from .test_sampling_patches import fresh, node, patched, samples


def operation_cfg(operation: dict) -> tuple[dict, dict]:
    return node("LatentApplyOperationCFG", operation=["op", 0]), {"op": operation}


def test_operation_on_the_guidance_changes_the_result_and_leaves_the_base_alone(env):
    warm = Executor(env.registry)
    base = samples(warm, patched(None))
    patch, extra = operation_cfg(node("LatentOperationTonemapReinhard", multiplier=0.5))
    toned = samples(warm, patched(patch, nodes=extra))
    assert not torch.equal(toned, base)
    assert torch.equal(samples(warm, patched(None)), base)


def test_near_identity_operation_keeps_the_guided_result(env):
    base = fresh(env, patched(None))
    patch, extra = operation_cfg(node("LatentOperationSharpen", sharpen_radius=1, sigma=1.0, alpha=0.0))
    same = fresh(env, patched(patch, nodes=extra))
    assert torch.allclose(same, base, atol=1e-4)
