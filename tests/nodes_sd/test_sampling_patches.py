"""The sampling and guidance patch nodes through the real executor on the tiny checkpoint: ComfyUI's inputs in
/object_info, a patched MODEL never changing the cached base, v-prediction by node equal to v-prediction by config,
RescaleCFG at 0 equal to plain cfg, zero terminal SNR, Differential Diffusion on hard and soft masks."""

from __future__ import annotations

import math

import pytest
import torch

from graphengine import Executor
from graphengine.validation import PromptValidationError

from .test_pipeline import base_nodes, capture, empty_latent, ksampler, load_image

CKPT = "tiny_sd15.safetensors"


def patched(patch: dict | None, *, model: list | None = None, latent: list | None = None, nodes: dict | None = None,
            seed: int = 3, scheduler: str = "normal") -> dict:
    """txt2img (or `latent`) sampled with the MODEL from `patch` (linked to the checkpoint's MODEL)."""
    graph = {**base_nodes(), "empty": empty_latent(), **(nodes or {})}
    if patch is not None:
        graph["patch"] = {**patch, "inputs": {"model": ["ckpt", 0], **patch["inputs"]}}
        model = ["patch", 0]
    graph["sample"] = ksampler(latent or ["empty", 0], seed=seed, model=model, scheduler=scheduler)
    graph["out"] = capture(["sample", 0])
    return graph


def node(class_type: str, **inputs) -> dict:
    return {"class_type": class_type, "inputs": inputs}


def samples(executor: Executor, prompt: dict) -> torch.Tensor:
    result = executor.execute(prompt)
    assert result.ok, result.error
    return result.outputs["out"]["value"][0]["samples"]


def fresh(env, prompt: dict) -> torch.Tensor:
    return samples(Executor(env.registry), prompt)


def test_object_info_lists_the_nodes_with_comfyuis_inputs(env):
    info = env.registry.object_info()
    discrete = info["ModelSamplingDiscrete"]
    assert discrete["input"]["required"]["sampling"][0] == ["eps", "v_prediction", "lcm", "x0", "img_to_img"]
    assert discrete["input"]["required"]["zsnr"][1]["default"] is False
    assert discrete["category"] == "advanced/model" and discrete["output"] == ["MODEL"]
    edm = info["ModelSamplingContinuousEDM"]["input"]["required"]
    assert list(edm) == ["model", "sampling", "sigma_max", "sigma_min"]
    assert edm["sigma_max"] == ["FLOAT", {"default": 120.0, "min": 0.0, "max": 1000.0, "step": 0.001, "round": False}]
    assert edm["sigma_min"][1]["default"] == 0.002 and "edm" in edm["sampling"][0]
    v = info["ModelSamplingContinuousV"]["input"]["required"]
    assert v["sampling"][0] == ["v_prediction"] and (v["sigma_max"][1]["default"], v["sigma_min"][1]["default"]) == (
        500.0, 0.03)
    assert info["RescaleCFG"]["input"]["required"]["multiplier"] == [
        "FLOAT", {"default": 0.7, "min": 0.0, "max": 1.0, "step": 0.01}]
    assert info["CFGZeroStar"]["output_name"] == ["patched_model"]
    assert info["CFGZeroStar"]["category"] == "advanced/guidance"
    apg = info["APG"]["input"]["required"]
    assert [(apg[k][1]["default"], apg[k][1]["min"], apg[k][1]["max"]) for k in ("eta", "norm_threshold", "momentum")] \
        == [(1.0, -10.0, 10.0), (5.0, 0.0, 50.0), (0.0, -5.0, 1.0)]
    assert info["APG"]["display_name"] == "Adaptive Projected Guidance"
    dd = info["DifferentialDiffusion"]
    assert dd["input"]["optional"]["strength"][1] == {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}
    assert dd["category"] == "_for_testing"


def test_v_prediction_by_node_equals_the_v_config_loader_and_changes_the_result(env):
    base = fresh(env, patched(None))
    by_node = fresh(env, patched(node("ModelSamplingDiscrete", sampling="v_prediction", zsnr=False)))
    assert not torch.equal(base, by_node)
    by_config = base_nodes()
    by_config["ckpt"] = node("CheckpointLoader", config_name="v2-inference-v.yaml", ckpt_name=CKPT)
    graph = {**by_config, "empty": empty_latent(), "sample": ksampler(["empty", 0], seed=3),
             "out": capture(["sample", 0])}
    assert torch.equal(by_node, fresh(env, graph))


def test_patched_and_base_models_keep_their_own_results_in_either_order(env):
    chain = {"rescale": node("RescaleCFG", model=["ckpt", 0], multiplier=0.7),
             "zsnr": node("ModelSamplingDiscrete", model=["rescale", 0], sampling="eps", zsnr=True)}
    alone_base = fresh(env, patched(None))
    alone_patched = fresh(env, patched(None, model=["zsnr", 0], nodes=chain))
    assert not torch.equal(alone_base, alone_patched)
    warm = Executor(env.registry)
    order = [(patched(None, model=["zsnr", 0], nodes=chain), alone_patched), (patched(None), alone_base),
             (patched(None, model=["zsnr", 0], nodes=chain, seed=4), None), (patched(None, seed=3), alone_base)]
    for prompt, expected in order:
        got = samples(warm, prompt)
        if expected is not None:
            assert torch.equal(got, expected)


def test_rescale_cfg_zero_is_plain_cfg_bit_for_bit_and_replaces_an_earlier_rescale(env):
    base = fresh(env, patched(None))
    assert torch.equal(fresh(env, patched(node("RescaleCFG", multiplier=0.0))), base)
    rescaled = fresh(env, patched(node("RescaleCFG", multiplier=0.7)))
    assert not torch.equal(rescaled, base)
    twice = {"first": node("RescaleCFG", model=["ckpt", 0], multiplier=0.7),
             "second": node("RescaleCFG", model=["first", 0], multiplier=0.0)}
    assert torch.equal(fresh(env, patched(None, model=["second", 0], nodes=twice)), base)


def test_zsnr_model_ends_its_table_at_the_clamped_sigma_and_leaves_the_base_alone(env):
    graph = {**base_nodes(), "zsnr": node("ModelSamplingDiscrete", model=["ckpt", 0], sampling="eps", zsnr=True),
             "out": capture(["zsnr", 0]), "base": capture(["ckpt", 0])}
    result = Executor(env.registry).execute(graph)
    assert result.ok, result.error
    model, base = result.outputs["out"]["value"][0], result.outputs["base"]["value"][0]
    last = math.sqrt((1 - 4.8973451890853435e-08) / 4.8973451890853435e-08)
    assert float(model.model_sampling.sigmas[-1]) == float(torch.tensor(last, dtype=torch.float32))
    assert float(base.model_sampling.sigma_max) < 15 and model.unet_source is base.unet_source


def test_guidance_nodes_change_the_result(env):
    base = fresh(env, patched(None))
    for patch in (node("CFGZeroStar"), node("APG", eta=0.5, norm_threshold=1.0, momentum=-0.5),
                  node("ModelSamplingContinuousEDM", sampling="eps", sigma_max=20.0, sigma_min=0.03),
                  node("ModelSamplingDiscrete", sampling="lcm", zsnr=False)):
        assert not torch.equal(fresh(env, patched(patch)), base), patch["class_type"]


def test_continuous_sigma_range_is_checked_before_running(env):
    with pytest.raises(PromptValidationError) as caught:
        Executor(env.registry).execute(patched(node("ModelSamplingContinuousV", sampling="v_prediction",
                                                    sigma_max=1.0, sigma_min=2.0)))
    errors = caught.value.node_errors["patch"]["errors"]
    assert errors[0]["type"] == "custom_validation_failed" and "sigma_min=2.0" in errors[0]["details"]


def inpaint_nodes(mask: list) -> dict:
    return {"img": load_image("scene_masked.png"), "soft": node("ImageToMask", image=["img", 0], channel="red"),
            "enc": node("VAEEncode", pixels=["img", 0], vae=["ckpt", 2]),
            "masked": node("SetLatentNoiseMask", samples=["enc", 0], mask=mask)}


def test_differential_diffusion_keeps_a_hard_mask_and_reshapes_a_soft_one(env):
    # "simple" keeps every step above sigma_min: at sigma_min the threshold is 0 and the whole latent is regenerated
    def run(patch, mask_nodes):
        return fresh(env, patched(patch, latent=["masked", 0], nodes=mask_nodes, scheduler="simple"))
    dd = node("DifferentialDiffusion")
    hard = inpaint_nodes(["img", 1])  # alpha 0 on the left half: exactly 0/1 at latent size
    assert torch.equal(run(dd, hard), run(None, hard))
    soft = inpaint_nodes(["soft", 0])  # a left-to-right ramp
    assert not torch.equal(run(dd, soft), run(None, soft))
    half = node("DifferentialDiffusion", strength=0.5)
    assert not torch.equal(run(half, soft), run(dd, soft))


def test_playground_v25_sampling_normalises_each_latent_channel_and_cosmos_is_refused(env):
    from nodes.samplers.pipeline import ksample

    combo = env.registry.object_info()["ModelSamplingContinuousEDM"]["input"]["required"]["sampling"][0]
    assert combo == ["v_prediction", "edm", "edm_playground_v2.5", "eps", "cosmos_rflow"]
    graph = {**base_nodes(), "img": load_image(), "enc": node("VAEEncode", pixels=["img", 0], vae=["ckpt", 2]),
             "pg": node("ModelSamplingContinuousEDM", model=["ckpt", 0], sampling="edm_playground_v2.5",
                        sigma_max=120.0, sigma_min=0.002),
             "edm": node("ModelSamplingContinuousEDM", model=["ckpt", 0], sampling="edm", sigma_max=120.0,
                         sigma_min=0.002),
             "sample": ksampler(["enc", 0], seed=5, denoise=0.6, model=["pg", 0]),
             "out": capture(["sample", 0]), "latent": capture(["enc", 0]), "plain": capture(["edm", 0]),
             "conds": capture(["pos", 0]), "unconds": capture(["neg", 0])}
    result = Executor(env.registry).execute(graph)
    assert result.ok, result.error
    got = {k: v["value"][0] for k, v in result.outputs.items() if "value" in v}
    mean = torch.tensor([-1.6574, 1.886, -1.383, 2.5155]).view(1, 4, 1, 1)
    std = torch.tensor([8.4927, 5.9022, 6.5498, 5.2299]).view(1, 4, 1, 1)
    plain = got["plain"]
    # the same run on the plain EDM model, fed the latent already in Playground's model units
    prepared = (got["latent"]["samples"] - mean) * 0.5 / std / plain.latent_scale_factor
    expected = ksample(plain, seed=5, steps=3, cfg=5.0, sampler_name="euler", scheduler="normal",
                       positive=got["conds"], negative=got["unconds"], latent={"samples": prepared}, denoise=0.6)
    expected = expected["samples"] * plain.latent_scale_factor * std / 0.5 + mean
    # float32 rounding differs between the two routes; std / 0.5 amplifies it up to 17x on the way out
    assert (got["out"]["samples"] - expected).abs().max() < 2e-4 * expected.abs().max()
    unnormalised = fresh(env, {**graph, "sample": ksampler(["enc", 0], seed=5, denoise=0.6, model=["edm", 0])})
    assert not torch.allclose(got["out"]["samples"], unnormalised, atol=1e-3)
    refused = Executor(env.registry).execute(patched(node("ModelSamplingContinuousEDM", sampling="cosmos_rflow",
                                                          sigma_max=120.0, sigma_min=0.002)))
    assert not refused.ok and "Cosmos" in str(refused.error)
