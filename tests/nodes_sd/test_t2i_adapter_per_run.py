"""A T2I-Adapter's features depend on its hint alone: a sampling run computes them once per (link, latent size,
batch rows) and reuses them at every step, with latents bit-identical to computing them at every step. The calls are
counted by a forward hook on the real adapter module."""

from __future__ import annotations

import pytest
import torch

from nodes.controlnet.control import ControlLink, ControlNetHandle
from nodes.samplers.conds import controls_for_run
from nodes.samplers.names import get_sampler
from nodes.samplers.noise import prepare_noise
from nodes.samplers.pipeline import GuidedDenoiser, sample_sigmas, sampling_sigmas

from .test_controlnet_sampling import CFG, parts  # noqa: F401  (the module-scoped fixture)

STEPS = 4


@pytest.fixture
def adapter_calls(nets):
    calls = []
    handle = nets.adapter.register_forward_hook(lambda module, args, output: calls.append(args[0].shape))
    yield calls
    handle.remove()


def conditionings(link: ControlLink, positive: torch.Tensor, negative: torch.Tensor) -> tuple[list, list]:
    return [[positive, {"control": link}]], [[negative, {"control": link}]]


def euler(model, positive: list, negative: list) -> torch.Tensor:
    """Euler over STEPS with the plain CFG denoiser (uncond and cond rows share one network call per step)."""
    sigmas = sampling_sigmas(model.model_sampling, "normal", STEPS, "euler")
    x = prepare_noise(torch.zeros(1, 4, 8, 8), 3) * sigmas[0]
    return get_sampler("euler")(GuidedDenoiser(model, positive, negative, CFG), x, sigmas, extra_args={},
                                disable=True)


def test_bound_to_a_run_the_adapter_runs_once_and_the_latents_are_bit_identical(nets, parts, adapter_calls):
    model, positive, negative, hint = parts
    link = ControlLink(ControlNetHandle(nets.adapter, "t2i"), hint, 0.7)
    per_step = euler(model, *conditionings(link, positive, negative))
    assert len(adapter_calls) == STEPS  # unbound: at every step
    adapter_calls.clear()
    once = euler(model, *controls_for_run(list(conditionings(link, positive, negative))))
    assert len(adapter_calls) == 1 and adapter_calls[0][0] == 2  # one call for the [uncond, cond] rows
    assert torch.equal(once, per_step)
    assert (once - euler(model, [[positive, {}]], [[negative, {}]])).abs().mean() > 1e-3  # the adapter counts


def test_a_sampling_run_computes_each_adapters_features_once(nets, parts, adapter_calls):
    model, positive, negative, hint = parts
    first = ControlLink(ControlNetHandle(nets.adapter, "t2i"), hint, 0.7)
    stacked = ControlLink(ControlNetHandle(nets.adapter, "t2i again"), hint.flip(-1), 0.4, previous=first)
    pos, neg = conditionings(stacked, positive, negative)
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    sigmas = sampling_sigmas(model.model_sampling, "normal", STEPS, "euler")

    def run() -> torch.Tensor:
        return sample_sigmas(model, sigmas=sigmas, noise=prepare_noise(latent["samples"], 3), seed=3,
                             sampler_name="euler", positive=pos, negative=neg, cfg=CFG, latent=latent)[0]["samples"]

    first_run = run()
    assert len(adapter_calls) == 2  # each link of the stack once, for all STEPS steps
    assert pos[0][1]["control"] is stacked and stacked.features is None  # the run's binding is its own
    assert torch.equal(run(), first_run) and len(adapter_calls) == 4  # a new run computes them afresh
