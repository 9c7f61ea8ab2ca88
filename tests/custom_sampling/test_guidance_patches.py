"""TCFG, Mahiro, FreSca and Epsilon Scaling: their formulas on small tensors, and each patch changing a demo-model
sample (Epsilon Scaling at factor 1 and FreSca at scale 1 leave it as it was)."""

from __future__ import annotations

import pytest
import torch

from nodes.guidance_patches import epsilon_scaled, fourier_filter, mahiro_post_cfg, tangential_damping
from nodes.samplers.guidance import CfgArgs

from .conftest import base_graph, capture, node


def test_tangential_damping_keeps_only_the_shared_direction():
    cond = torch.tensor([[[[3.0, 0.0]]]])
    aligned = torch.tensor([[[[1.5, 0.0]]]])
    assert torch.allclose(tangential_damping(cond, aligned), aligned)  # nothing tangential to drop
    damped = tangential_damping(cond, torch.tensor([[[[1.0, 1.0]]]]))
    assert damped.norm() < torch.tensor([1.0, 1.0]).norm()


def test_fourier_filter_scales_the_high_frequencies_only():
    x = torch.randn(1, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(fourier_filter(x, 1.0, 1.0, 2), x, atol=1e-6)
    constant = torch.ones(1, 1, 8, 8)
    assert torch.allclose(fourier_filter(constant, 1.0, 3.0, 1), constant, atol=1e-6)  # DC is low frequency
    doubled = fourier_filter(x, 2.0, 2.0, 1)
    assert torch.allclose(doubled, 2 * x, atol=1e-5)


def test_epsilon_scaling_and_mahiro_formulas():
    x, cond, uncond = torch.full((1, 1, 2, 2), 4.0), torch.full((1, 1, 2, 2), 1.0), torch.zeros(1, 1, 2, 2)
    args = CfgArgs(x, torch.ones(1), 3.0, cond, uncond, denoised=torch.full((1, 1, 2, 2), 3.0))
    assert torch.allclose(epsilon_scaled(args, 2.0), torch.full((1, 1, 2, 2), 3.5))
    # uncond 0: similarity 0, so the weight is 2 and the result the average of cfg and cond * cfg
    assert torch.allclose(mahiro_post_cfg(args), torch.full((1, 1, 2, 2), 3.0))


@pytest.mark.parametrize("patch,changes", [
    (node("TCFG"), True), (node("Mahiro"), True),
    (node("FreSca", scale_low=1.0, scale_high=1.5, freq_cutoff=1), True),
    (node("FreSca", scale_low=1.0, scale_high=1.0, freq_cutoff=1), False),
    (node("Epsilon Scaling", scaling_factor=1.05), True), (node("Epsilon Scaling", scaling_factor=1.0), False),
])
def test_patches_change_a_sample(env, patch, changes):
    graph = {**base_graph(), "patch": {**patch, "inputs": {"model": ["ckpt", 0], **patch["inputs"]}}}
    for name, model in (("base", ["ckpt", 0]), ("patched", ["patch", 0])):
        graph[name] = node("KSampler", model=model, seed=2, steps=3, cfg=5.0, sampler_name="euler",
                           scheduler="normal", positive=["pos", 0], negative=["neg", 0], latent_image=["empty", 0],
                           denoise=1.0)
        graph[f"out_{name}"] = capture([name, 0])
    base, patched = env.values(graph, "out_base", "out_patched")
    assert torch.allclose(base["samples"], patched["samples"], atol=1e-4) is not changes


def test_object_info_of_the_patches(env):
    info = env.registry.object_info()
    assert info["TCFG"]["display_name"] == "Tangential Damping CFG"
    assert info["TCFG"]["output_name"] == ["patched_model"] and info["TCFG"]["category"] == "advanced/guidance"
    assert info["Epsilon Scaling"]["input"]["required"]["scaling_factor"][1]["default"] == 1.005
    assert info["FreSca"]["input_order"]["required"] == ["model", "scale_low", "scale_high", "freq_cutoff"]


@pytest.mark.parametrize("neg_scale", [1.0, 2.5])
def test_perp_neg_patch_with_ksampler_equals_the_perp_neg_guider(env, neg_scale):
    graph = {**base_graph(), "blank": node("CLIPTextEncode", clip=["ckpt", 1], text=""),
             "patch": node("PerpNeg", model=["ckpt", 0], empty_conditioning=["blank", 0], neg_scale=neg_scale),
             "ks": node("KSampler", model=["patch", 0], seed=7, steps=3, cfg=4.0, sampler_name="euler",
                        scheduler="normal", positive=["pos", 0], negative=["neg", 0], latent_image=["empty", 0],
                        denoise=1.0),
             "plain": node("KSampler", model=["ckpt", 0], seed=7, steps=3, cfg=4.0, sampler_name="euler",
                           scheduler="normal", positive=["pos", 0], negative=["neg", 0], latent_image=["empty", 0],
                           denoise=1.0),
             "guider": node("PerpNegGuider", model=["ckpt", 0], positive=["pos", 0], negative=["neg", 0],
                            empty_conditioning=["blank", 0], cfg=4.0, neg_scale=neg_scale),
             "adv": node("SamplerCustomAdvanced", noise=["noise", 0], guider=["guider", 0], sampler=["select", 0],
                         sigmas=["sigmas", 0], latent_image=["empty", 0]),
             "noise": node("RandomNoise", noise_seed=7), "select": node("KSamplerSelect", sampler_name="euler"),
             "sigmas": node("BasicScheduler", model=["ckpt", 0], scheduler="normal", steps=3, denoise=1.0),
             "out_patch": capture(["ks", 0]), "out_guider": capture(["adv", 0]), "out_plain": capture(["plain", 0])}
    patched, guided, plain = env.values(graph, "out_patch", "out_guider", "out_plain")
    # the guider evaluates the three prompts in one batched call, the patch the empty one on its own
    torch.testing.assert_close(patched["samples"], guided["samples"], atol=2e-4, rtol=1e-4)
    assert not torch.allclose(patched["samples"], plain["samples"], atol=1e-3)


def test_perp_neg_object_info(env):
    info = env.registry.object_info()["PerpNeg"]
    assert info["input_order"]["required"] == ["model", "empty_conditioning", "neg_scale"]
    assert info["input"]["required"]["neg_scale"][1] == {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.01}
    assert info["output"] == ["MODEL"] and info["deprecated"] is True and info["category"] == "_for_testing"
