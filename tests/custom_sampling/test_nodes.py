"""Every custom-sampling node through the executor on the demo model: /object_info as ComfyUI declares it, sigma
operations on real schedules, noise, guiders against their formulas, sampler options reaching the sampler, and
structured errors for bad inputs."""

from __future__ import annotations

import math

import pytest
import torch

from graphengine import validate_prompt
from graphengine.validation import PromptValidationError
from nodes.custom_sampling import sigmas as sigma_ops
from nodes.custom_sampling.guiders import perp_neg
from nodes.samplers.model_sampling import ModelSamplingDiscrete
from nodes.samplers.noise import prepare_noise
from nodes.samplers.schedules import karras_sigmas

from .conftest import base_graph, capture, node

KARRAS = {"class_type": "KarrasScheduler", "inputs": {"steps": 6, "sigma_max": 14.614642, "sigma_min": 0.0291675,
                                                      "rho": 7.0}}
CUSTOM_NODES = [
    "SamplerCustom", "SamplerCustomAdvanced", "KSamplerSelect", "BasicScheduler", "KarrasScheduler",
    "ExponentialScheduler", "PolyexponentialScheduler", "LaplaceScheduler", "VPScheduler", "BetaSamplingScheduler",
    "SDTurboScheduler", "AlignYourStepsScheduler", "GITSScheduler", "OptimalStepsScheduler", "SplitSigmas",
    "SplitSigmasDenoise", "FlipSigmas", "SetFirstSigma", "ExtendIntermediateSigmas", "SamplingPercentToSigma",
    "RandomNoise", "DisableNoise", "AddNoise", "BasicGuider", "CFGGuider", "DualCFGGuider", "PerpNegGuider",
    "SamplerEulerAncestral", "SamplerEulerAncestralCFGPP", "SamplerLMS", "SamplerDPMPP_2M_SDE", "SamplerDPMPP_3M_SDE",
    "SamplerDPMPP_SDE", "SamplerDPMPP_2S_Ancestral", "SamplerDPMAdaptative", "SamplerER_SDE", "SamplerSASolver",
    "SamplerEulerCFGpp", "SamplerLCMUpscale",
]


def test_object_info_declares_comfyuis_inputs_outputs_and_categories(env):
    info = env.registry.object_info()
    assert set(CUSTOM_NODES) <= set(info)
    custom = info["SamplerCustom"]
    assert custom["input_order"]["required"] == ["model", "add_noise", "noise_seed", "cfg", "positive", "negative",
                                                 "sampler", "sigmas", "latent_image"]
    assert custom["output"] == ["LATENT", "LATENT"] and custom["output_name"] == ["output", "denoised_output"]
    adv = info["SamplerCustomAdvanced"]
    assert adv["input_order"]["required"] == ["noise", "guider", "sampler", "sigmas", "latent_image"]
    assert adv["category"] == "sampling/custom_sampling"
    assert info["SplitSigmas"]["output_name"] == ["high_sigmas", "low_sigmas"]
    assert info["SamplingPercentToSigma"]["output"] == ["FLOAT"]
    assert info["GITSScheduler"]["input"]["required"]["coeff"] == [
        "FLOAT", {"default": 1.2, "min": 0.8, "max": 1.5, "step": 0.05}]
    assert info["AlignYourStepsScheduler"]["input"]["required"]["model_type"][0] == ["SD1", "SDXL", "SVD"]
    assert info["DualCFGGuider"]["input_order"]["required"] == ["model", "cond1", "cond2", "negative", "cfg_conds",
                                                                "cfg_cond2_negative", "style"]
    assert info["SamplerEulerAncestralCFGPP"]["display_name"] == "SamplerEulerAncestralCFG++"
    assert info["AddNoise"]["category"] == "_for_testing/custom_sampling/noise" and info["AddNoise"]["experimental"]
    categories = {info[n]["category"] for n in CUSTOM_NODES}
    assert categories <= {"sampling/custom_sampling", "sampling/custom_sampling/schedulers", "_for_testing",
                          "sampling/custom_sampling/sigmas", "sampling/custom_sampling/samplers",
                          "sampling/custom_sampling/noise", "sampling/custom_sampling/guiders",
                          "_for_testing/custom_sampling/noise"}


def test_sigma_operations_on_a_karras_schedule(env):
    graph = {
        "k": KARRAS,
        "split": node("SplitSigmas", sigmas=["k", 0], step=2),
        "denoise": node("SplitSigmasDenoise", sigmas=["k", 0], denoise=0.5),
        "flip": node("FlipSigmas", sigmas=["k", 0]),
        "first": node("SetFirstSigma", sigmas=["k", 0], sigma=20.0),
        "extend": node("ExtendIntermediateSigmas", sigmas=["k", 0], steps=3, start_at_sigma=-1.0, end_at_sigma=2.0,
                       spacing="linear"),
        **{f"out_{n}": capture([n, i]) for n, i in (("k", 0), ("split", 0), ("flip", 0), ("first", 0), ("extend", 0))},
        "out_low": capture(["split", 1]), "out_dhigh": capture(["denoise", 0]), "out_dlow": capture(["denoise", 1]),
    }
    k, high, flipped, first, extended, low, dhigh, dlow = env.values(
        graph, "out_k", "out_split", "out_flip", "out_first", "out_extend", "out_low", "out_dhigh", "out_dlow")
    assert torch.equal(k, karras_sigmas(6, 0.0291675, 14.614642, 7.0))
    assert torch.equal(high, k[:3]) and torch.equal(low, k[2:])
    assert torch.equal(dhigh, k[:4]) and torch.equal(dlow, k[3:])  # the last round(6 * 0.5) = 3 steps are low
    assert flipped[0] == pytest.approx(0.0001) and torch.equal(flipped[1:], k.flip(0)[1:])
    assert first[0] == 20.0 and torch.equal(first[1:], k[1:])
    # every interval starting at or above sigma 2 gets two sigmas at 1/3 and 2/3 of the way
    wide = [i for i in range(6) if k[i] >= 2.0]
    assert len(extended) == len(k) + 2 * len(wide)
    assert extended[1].item() == pytest.approx((k[0] + (k[1] - k[0]) / 3).item(), rel=1e-6)
    assert torch.equal(extended[-(len(k) - len(wide)):], k[len(wide):])


def test_sigma_edge_rules():
    empty = torch.zeros([0])
    assert len(sigma_ops.flip(empty)) == 0
    s = torch.tensor([3.0, 2.0, 1.0, 0.0])
    high, low = sigma_ops.split_at_denoise(s, 0.0)  # ComfyUI's sigmas[:-0]: both ends collapse
    assert len(high) == 0 and torch.equal(low, torch.tensor([0.0]))
    cosine = sigma_ops.extend_intermediate(torch.tensor([4.0, 0.0]), 2, -1.0, 0.0, "cosine")
    assert cosine.tolist() == pytest.approx([4.0, 4.0 - 4.0 * math.sin(math.pi / 4), 0.0])
    sine = sigma_ops.extend_intermediate(torch.tensor([4.0, 0.0]), 2, -1.0, 0.0, "sine")
    assert sine.tolist() == pytest.approx([4.0, 4.0 - 4.0 * (1 - math.cos(math.pi / 4)), 0.0])


def test_schedulers_through_the_executor(env):
    graph = {
        "ckpt": base_graph()["ckpt"],
        "basic": node("BasicScheduler", model=["ckpt", 0], scheduler="karras", steps=5, denoise=1.0),
        "turbo": node("SDTurboScheduler", model=["ckpt", 0], steps=2, denoise=1.0),
        "beta": node("BetaSamplingScheduler", model=["ckpt", 0], steps=5, alpha=0.6, beta=0.6),
        "ays": node("AlignYourStepsScheduler", model_type="SD1", steps=10, denoise=1.0),
        "gits": node("GITSScheduler", coeff=1.2, steps=10, denoise=1.0),
        "opt": node("OptimalStepsScheduler", model_type="FLUX", steps=10, denoise=1.0),
        "lap": node("LaplaceScheduler", steps=5, sigma_max=14.614642, sigma_min=0.0291675, mu=0.0, beta=0.5),
        "vp": node("VPScheduler", steps=5, beta_d=19.9, beta_min=0.1, eps_s=0.001),
        "poly": node("PolyexponentialScheduler", steps=5, sigma_max=14.614642, sigma_min=0.0291675, rho=1.0),
        "exp": node("ExponentialScheduler", steps=5, sigma_max=14.614642, sigma_min=0.0291675),
        "pct": node("SamplingPercentToSigma", model=["ckpt", 0], sampling_percent=0.0, return_actual_sigma=False),
        "pct_actual": node("SamplingPercentToSigma", model=["ckpt", 0], sampling_percent=0.0, return_actual_sigma=True),
        "pct_half": node("SamplingPercentToSigma", model=["ckpt", 0], sampling_percent=0.5, return_actual_sigma=False),
    }
    names = [n for n in graph if n != "ckpt"]
    graph.update({f"out_{n}": capture([n, 0]) for n in names})
    got = dict(zip(names, env.values(graph, *[f"out_{n}" for n in names])))
    ms = ModelSamplingDiscrete("eps")
    assert torch.equal(got["basic"], karras_sigmas(5, float(ms.sigma_min), float(ms.sigma_max)))
    assert torch.allclose(got["turbo"], torch.cat([ms.sigma(torch.tensor([999.0, 899.0])), torch.zeros(1)]))
    assert len(got["beta"]) == 6 and got["beta"][0] == pytest.approx(float(ms.sigma_max))
    assert got["ays"][0] == pytest.approx(14.6146412293) and got["ays"][-1] == 0 and len(got["ays"]) == 11
    assert len(got["gits"]) == 11 and got["opt"][0] == pytest.approx(0.9968)
    assert len(got["lap"]) == 5 and got["lap"][-1] > 0  # Laplace keeps no trailing 0, as in ComfyUI
    assert got["vp"][-1] == 0 and torch.all(got["vp"][:-1] > 0)
    assert torch.allclose(got["poly"], got["exp"])  # rho 1 is the exponential schedule
    assert got["pct"] == pytest.approx(999999999.9) and got["pct_actual"] == pytest.approx(float(ms.sigma_max))
    assert got["pct_half"] == pytest.approx(ms.percent_to_sigma(0.5))


def test_noise_nodes_and_add_noise(env):
    graph = {
        **base_graph(),
        "noise": node("RandomNoise", noise_seed=42), "off": node("DisableNoise"),
        "sig": node("SetFirstSigma", sigmas=["k", 0], sigma=3.0), "k": KARRAS,
        "noisy": node("AddNoise", model=["ckpt", 0], noise=["noise", 0], sigmas=["sig", 0], latent_image=["empty", 0]),
        "kept": node("AddNoise", model=["ckpt", 0], noise=["off", 0], sigmas=["sig", 0], latent_image=["empty", 0]),
        "out_noisy": capture(["noisy", 0]), "out_kept": capture(["kept", 0]), "out_empty": capture(["empty", 0]),
    }
    noisy, kept, empty = env.values(graph, "out_noisy", "out_kept", "out_empty")
    expected = prepare_noise(empty["samples"], 42) * 3.0  # |3 - 0| on an empty latent, back in VAE units
    ratio = expected / noisy["samples"]
    assert torch.allclose(ratio, ratio.flatten()[0].expand_as(ratio), rtol=1e-5)  # one latent scale factor
    assert torch.equal(kept["samples"], empty["samples"])


def test_guiders_against_their_formulas(env):
    link = ["empty", 0]

    def run(guider: dict) -> dict:
        return {"guider": guider, "adv": node("SamplerCustomAdvanced", noise=["noise", 0], guider=["guider", 0],
                                              sampler=["select", 0], sigmas=["sigmas", 0], latent_image=link)}

    shared = {**base_graph(), "noise": node("RandomNoise", noise_seed=4),
              "blank": node("CLIPTextEncode", clip=["ckpt", 1], text=""),
              "select": node("KSamplerSelect", sampler_name="euler"),
              "sigmas": node("BasicScheduler", model=["ckpt", 0], scheduler="normal", steps=3, denoise=1.0)}
    variants = {
        "basic": node("BasicGuider", model=["ckpt", 0], conditioning=["pos", 0]),
        "cfg1": node("CFGGuider", model=["ckpt", 0], positive=["pos", 0], negative=["neg", 0], cfg=1.0),
        "cfg": node("CFGGuider", model=["ckpt", 0], positive=["pos", 0], negative=["neg", 0], cfg=4.0),
        "dual": node("DualCFGGuider", model=["ckpt", 0], cond1=["pos", 0], cond2=["pos", 0], negative=["neg", 0],
                     cfg_conds=1.0, cfg_cond2_negative=4.0, style="regular"),
        "nested": node("DualCFGGuider", model=["ckpt", 0], cond1=["pos", 0], cond2=["pos", 0], negative=["neg", 0],
                       cfg_conds=1.0, cfg_cond2_negative=4.0, style="nested"),
        "perp0": node("PerpNegGuider", model=["ckpt", 0], positive=["pos", 0], negative=["pos", 0],
                      empty_conditioning=["neg", 0], cfg=4.0, neg_scale=0.0),
        "perp": node("PerpNegGuider", model=["ckpt", 0], positive=["pos", 0], negative=["neg", 0],
                     empty_conditioning=["blank", 0], cfg=4.0, neg_scale=1.0),
        "cfg_blank": node("CFGGuider", model=["ckpt", 0], positive=["pos", 0], negative=["blank", 0], cfg=4.0),
    }
    got = {}
    for name, guider in variants.items():
        graph = {**shared, **run(guider), "out": capture(["adv", 0])}
        got[name] = env.values(graph, "out")[0]["samples"]
    assert torch.equal(got["basic"], got["cfg1"])  # cfg 1 skips the negative
    for name in ("dual", "nested", "perp0"):  # the same combination as plain cfg 4 of pos against neg
        assert torch.allclose(got[name], got["cfg"], atol=1e-4), name
    # the negative prompt changes Perp-Neg's result away from plain cfg against the empty prompt
    assert not torch.allclose(got["perp"], got["cfg_blank"], atol=1e-3)


def test_perp_neg_removes_only_the_perpendicular_part():
    pos, empty = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 0.0]])
    parallel, sideways = torch.tensor([[5.0, 0.0]]), torch.tensor([[1.0, 3.0]])
    plain = empty + 2.0 * (pos - empty)
    assert torch.allclose(perp_neg(pos, parallel, empty, 1.0, 2.0), plain)
    assert torch.allclose(perp_neg(pos, sideways, empty, 1.0, 2.0), plain - 2.0 * torch.tensor([[0.0, 3.0]]))


def sampler_graph(sampler: dict, sampler_name: str | None = None, steps: int = 3) -> dict:
    graph = {**base_graph(), "noise": node("RandomNoise", noise_seed=9),
             "guider": node("CFGGuider", model=["ckpt", 0], positive=["pos", 0], negative=["neg", 0], cfg=4.0),
             "sigmas": node("BasicScheduler", model=["ckpt", 0], scheduler="karras", steps=steps, denoise=1.0),
             "sampler": sampler,
             "adv": node("SamplerCustomAdvanced", noise=["noise", 0], guider=["guider", 0], sampler=["sampler", 0],
                         sigmas=["sigmas", 0], latent_image=["empty", 0]),
             "out": capture(["adv", 0])}
    if sampler_name is not None:
        graph["select"] = node("KSamplerSelect", sampler_name=sampler_name)
        graph["adv_select"] = {**graph["adv"], "inputs": {**graph["adv"]["inputs"], "sampler": ["select", 0]}}
        graph["out_select"] = capture(["adv_select", 0])
    return graph


@pytest.mark.parametrize("sampler,name", [
    (node("SamplerEulerAncestral", eta=1.0, s_noise=1.0), "euler_ancestral"),
    (node("SamplerEulerAncestralCFGPP", eta=1.0, s_noise=1.0), "euler_ancestral_cfg_pp"),
    (node("SamplerLMS", order=4), "lms"),
    (node("SamplerDPMPP_2M_SDE", solver_type="heun", eta=1.0, s_noise=1.0, noise_device="cpu"), "dpmpp_2m_sde_heun"),
    (node("SamplerDPMPP_3M_SDE", eta=1.0, s_noise=1.0, noise_device="gpu"), "dpmpp_3m_sde_gpu"),
    (node("SamplerDPMPP_SDE", eta=1.0, s_noise=1.0, r=0.5, noise_device="cpu"), "dpmpp_sde"),
    (node("SamplerDPMPP_2S_Ancestral", eta=1.0, s_noise=1.0), "dpmpp_2s_ancestral"),
    (node("SamplerER_SDE", solver_type="ER-SDE", max_stage=3, eta=1.0, s_noise=1.0), "er_sde"),
    (node("SamplerEulerCFGpp", version="regular"), "euler_cfg_pp"),
])
def test_sampler_nodes_at_defaults_equal_the_named_sampler(env, sampler, name):
    by_node, by_name = env.values(sampler_graph(sampler, name), "out", "out_select")
    assert torch.equal(by_node["samples"], by_name["samples"])


@pytest.mark.parametrize("sampler,default", [
    (node("SamplerEulerAncestral", eta=0.0, s_noise=1.0), node("KSamplerSelect", sampler_name="euler")),
    (node("SamplerER_SDE", solver_type="ODE", max_stage=3, eta=1.0, s_noise=1.0), None),
    (node("SamplerLMS", order=1), node("KSamplerSelect", sampler_name="euler")),
    (node("SamplerSASolver", model=["ckpt", 0], eta=0.0, sde_start_percent=0.2, sde_end_percent=0.8, s_noise=1.0,
          predictor_order=3, corrector_order=4, use_pece=False, simple_order_2=False), None),
])
def test_sampler_options_reach_the_sampler(env, sampler, default):
    """eta 0 makes Euler ancestral plain Euler and LMS of order 1 is Euler; the ODE forms of ER-SDE and SA-Solver
    draw no noise, so another seed gives the same latent."""
    graph = sampler_graph(sampler)
    if default is not None:
        graph["select"] = default
        graph["adv2"] = {**graph["adv"], "inputs": {**graph["adv"]["inputs"], "sampler": ["select", 0]}}
    else:
        graph["noise2"] = node("RandomNoise", noise_seed=9)
        graph["adv2"] = {**graph["adv"], "inputs": {**graph["adv"]["inputs"], "noise": ["noise2", 0]}}
    graph["out2"] = capture(["adv2", 0])
    a, b = env.values(graph, "out", "out2")
    assert torch.allclose(a["samples"], b["samples"], atol=1e-5)


def test_euler_cfgpp_alternative_and_lcm_upscale_run(env):
    alt, regular = (env.values(sampler_graph(node("SamplerEulerCFGpp", version=v)), "out")[0]["samples"]
                    for v in ("alternative", "regular"))
    assert alt.shape == regular.shape and not torch.allclose(alt, regular)
    up = env.values(sampler_graph(node("SamplerLCMUpscale", scale_ratio=2.0, scale_steps=-1,
                                       upscale_method="bilinear"), steps=4), "out")[0]["samples"]
    assert up.shape[-2:] == (16, 16)  # an 8x8 latent doubled over the first steps


@pytest.mark.parametrize("class_type,inputs,needle", [
    ("GITSScheduler", {"coeff": 1.23, "steps": 10, "denoise": 1.0}, "multiple of 0.05"),
    ("ExponentialScheduler", {"steps": 5, "sigma_max": 14.6, "sigma_min": 0.0}, "sigma_min must be above 0"),
    ("SamplerDPMAdaptative", {"order": 2, "rtol": 0.05, "atol": 0.0078, "h_init": 0.05, "pcoeff": 0.0, "icoeff": 1.0,
                              "dcoeff": 0.0, "accept_safety": 0.81, "eta": 0.0, "s_noise": 1.0}, "order=2"),
    ("SplitSigmas", {"sigmas": 3, "step": 1}, ""),
])
def test_bad_inputs_are_refused_with_structured_errors(env, class_type, inputs, needle):
    prompt = {"n": node(class_type, **inputs), "out": capture(["n", 0])}
    with pytest.raises(PromptValidationError) as caught:
        validate_prompt(prompt, env.registry)
    assert needle in str(caught.value.node_errors)


def test_a_wrong_value_on_a_sigmas_link_fails_the_node_clearly(env):
    graph = {"v": node("SetFirstSigma", sigmas=["e", 0], sigma=1.0),
             "e": node("BasicScheduler", model=["ckpt", 0], scheduler="normal", steps=1, denoise=0.0),
             "ckpt": base_graph()["ckpt"], "out": capture(["v", 0])}
    result = env.run(graph)
    assert not result.ok and "sigmas are empty" in str(result.error)
