"""Golden parity on the bundled demo model: custom-sampling graphs equivalent to a KSampler (RandomNoise + CFGGuider
+ KSamplerSelect + BasicScheduler into SamplerCustomAdvanced, and SamplerCustom) give its latent bit for bit, for
several samplers and schedulers, partial denoise, a batch and a noise-masked latent; the two-pass split equals
KSamplerAdvanced's; denoised_output is the last x0; progress, interrupt and admission estimates as for KSampler."""

from __future__ import annotations

import pytest
import torch

from graphengine import CancelToken, Progress

from .conftest import base_graph, capture, node

STEPS = 4
CASES = [  # sampler, scheduler, denoise, cfg, latent ("empty", "init", "masked", "batch")
    ("euler", "normal", 1.0, 5.0, "empty"),
    ("dpmpp_2m", "karras", 0.6, 5.0, "init"),
    ("euler_ancestral", "simple", 1.0, 4.0, "batch"),
    ("dpmpp_2m_sde", "exponential", 0.75, 5.0, "init"),
    ("ddim", "ddim_uniform", 0.8, 5.0, "masked"),
    ("heun", "beta", 1.0, 3.0, "masked"),
    ("euler_cfg_pp", "sgm_uniform", 1.0, 1.0, "empty"),
]


def latents() -> dict:
    """empty, a sampled latent (for img2img), the same with a left-half noise mask, and an empty batch of 2."""
    return {
        "init": node("KSampler", model=["ckpt", 0], seed=11, steps=3, cfg=5.0, sampler_name="euler",
                     scheduler="normal", positive=["pos", 0], negative=["neg", 0], latent_image=["empty", 0],
                     denoise=1.0),
        "blank": node("SolidMask", value=0.0, width=64, height=64),
        "half": node("SolidMask", value=1.0, width=32, height=64),
        "mask": node("MaskComposite", destination=["blank", 0], source=["half", 0], x=0, y=0, operation="add"),
        "masked": node("SetLatentNoiseMask", samples=["init", 0], mask=["mask", 0]),
        "batch": node("EmptyLatentImage", width=64, height=64, batch_size=2),
    }


def parity_graph(sampler: str, scheduler: str, denoise: float, cfg: float, latent: str, seed: int = 5) -> dict:
    link = [latent, 0]
    return {
        **base_graph(), **latents(),
        "ks": node("KSampler", model=["ckpt", 0], seed=seed, steps=STEPS, cfg=cfg, sampler_name=sampler,
                   scheduler=scheduler, positive=["pos", 0], negative=["neg", 0], latent_image=link, denoise=denoise),
        "noise": node("RandomNoise", noise_seed=seed),
        "guider": node("CFGGuider", model=["ckpt", 0], positive=["pos", 0], negative=["neg", 0], cfg=cfg),
        "select": node("KSamplerSelect", sampler_name=sampler),
        "sigmas": node("BasicScheduler", model=["ckpt", 0], scheduler=scheduler, steps=STEPS, denoise=denoise),
        "adv": node("SamplerCustomAdvanced", noise=["noise", 0], guider=["guider", 0], sampler=["select", 0],
                    sigmas=["sigmas", 0], latent_image=link),
        "custom": node("SamplerCustom", model=["ckpt", 0], add_noise=True, noise_seed=seed, cfg=cfg,
                       positive=["pos", 0], negative=["neg", 0], sampler=["select", 0], sigmas=["sigmas", 0],
                       latent_image=link),
        "out_ks": capture(["ks", 0]), "out_adv": capture(["adv", 0]), "out_custom": capture(["custom", 0]),
        "out_adv_x0": capture(["adv", 1]), "out_custom_x0": capture(["custom", 1]), "out_in": capture(link),
    }


@pytest.mark.parametrize("sampler,scheduler,denoise,cfg,latent", CASES)
def test_custom_sampling_equals_ksampler_bit_for_bit(env, sampler, scheduler, denoise, cfg, latent):
    ks, adv, custom, adv_x0, custom_x0, given = env.values(
        parity_graph(sampler, scheduler, denoise, cfg, latent),
        "out_ks", "out_adv", "out_custom", "out_adv_x0", "out_custom_x0", "out_in")
    assert torch.equal(adv["samples"], ks["samples"])
    assert torch.equal(custom["samples"], ks["samples"])
    assert torch.equal(adv_x0["samples"], custom_x0["samples"])
    assert not torch.equal(ks["samples"], given["samples"])
    assert ks["samples"].shape == given["samples"].shape
    if latent == "masked":  # the noise mask travels with both outputs, as in ComfyUI
        assert torch.equal(adv["noise_mask"], given["noise_mask"]) and "noise_mask" in adv_x0


def test_two_pass_split_equals_ksampler_advanced(env):
    common = dict(model=["ckpt", 0], noise_seed=8, steps=6, cfg=5.0, sampler_name="euler", scheduler="karras",
                  positive=["pos", 0], negative=["neg", 0])
    graph = {
        **base_graph(),
        "first": node("KSamplerAdvanced", **common, add_noise="enable", latent_image=["empty", 0], start_at_step=0,
                      end_at_step=2, return_with_leftover_noise="enable"),
        "second": node("KSamplerAdvanced", **common, add_noise="disable", latent_image=["first", 0], start_at_step=2,
                       end_at_step=10000, return_with_leftover_noise="disable"),
        "sigmas": node("BasicScheduler", model=["ckpt", 0], scheduler="karras", steps=6, denoise=1.0),
        "split": node("SplitSigmas", sigmas=["sigmas", 0], step=2),
        "guider": node("CFGGuider", model=["ckpt", 0], positive=["pos", 0], negative=["neg", 0], cfg=5.0),
        "select": node("KSamplerSelect", sampler_name="euler"),
        "noise": node("RandomNoise", noise_seed=8), "off": node("DisableNoise"),
        "high": node("SamplerCustomAdvanced", noise=["noise", 0], guider=["guider", 0], sampler=["select", 0],
                     sigmas=["split", 0], latent_image=["empty", 0]),
        "low": node("SamplerCustomAdvanced", noise=["off", 0], guider=["guider", 0], sampler=["select", 0],
                    sigmas=["split", 1], latent_image=["high", 0]),
        "out_first": capture(["first", 0]), "out_ks": capture(["second", 0]),
        "out_high": capture(["high", 0]), "out_low": capture(["low", 0]),
    }
    first, ks, high, low = env.values(graph, "out_first", "out_ks", "out_high", "out_low")
    assert torch.equal(high["samples"], first["samples"])
    assert torch.equal(low["samples"], ks["samples"])


def test_sampler_custom_without_noise_equals_ksampler_advanced_disabled(env):
    graph = {
        **base_graph(), **latents(),
        "ks": node("KSamplerAdvanced", model=["ckpt", 0], add_noise="disable", noise_seed=3, steps=STEPS, cfg=4.0,
                   sampler_name="euler_ancestral", scheduler="normal", positive=["pos", 0], negative=["neg", 0],
                   latent_image=["init", 0], start_at_step=1, end_at_step=10000,
                   return_with_leftover_noise="disable"),
        "sigmas": node("BasicScheduler", model=["ckpt", 0], scheduler="normal", steps=STEPS, denoise=1.0),
        "split": node("SplitSigmas", sigmas=["sigmas", 0], step=1),
        "select": node("KSamplerSelect", sampler_name="euler_ancestral"),
        "custom": node("SamplerCustom", model=["ckpt", 0], add_noise=False, noise_seed=3, cfg=4.0,
                       positive=["pos", 0], negative=["neg", 0], sampler=["select", 0], sigmas=["split", 1],
                       latent_image=["init", 0]),
        "out_ks": capture(["ks", 0]), "out_custom": capture(["custom", 0]),
    }
    ks, custom = env.values(graph, "out_ks", "out_custom")
    assert torch.equal(custom["samples"], ks["samples"])


def test_denoised_output_is_the_last_x0_prediction(env):
    """Stopping halfway leaves noise in `output`; `denoised_output` is the model's x0 at the last step run, which
    equals the finished image after a final Euler step to sigma 0 (x - (x - x0) = x0 up to rounding)."""
    graph = parity_graph("euler", "karras", 1.0, 5.0, "empty")
    graph["split"] = node("SplitSigmas", sigmas=["sigmas", 0], step=2)
    graph["adv"]["inputs"]["sigmas"] = ["split", 0]
    graph["last"] = node("SamplerCustomAdvanced", noise=["noise", 0], guider=["guider", 0], sampler=["select", 0],
                         sigmas=["sigmas", 0], latent_image=["empty", 0])
    graph["out_last"], graph["out_last_x0"] = capture(["last", 0]), capture(["last", 1])
    half, half_x0, full, full_x0 = env.values(graph, "out_adv", "out_adv_x0", "out_last", "out_last_x0")
    # halfway, the x0 prediction is nearer the finished image than the still noisy latent
    assert (half_x0["samples"] - full["samples"]).abs().mean() < (half["samples"] - full["samples"]).abs().mean()
    assert torch.allclose(full_x0["samples"], full["samples"], atol=1e-5)
    assert not torch.equal(half_x0["samples"], full_x0["samples"])


def test_progress_per_step_and_interrupt(env):
    graph = parity_graph("euler", "normal", 1.0, 5.0, "empty")
    for name in ("ks", "custom", "out_ks", "out_custom", "out_custom_x0", "out_in"):
        graph.pop(name)
    events = []
    result = env.run(graph, listener=events.append)
    assert result.ok, result.error
    steps = [(e.value, e.max) for e in events if isinstance(e, Progress) and e.node == "adv"]
    assert steps == [(i, STEPS) for i in range(1, STEPS + 1)]

    token = CancelToken()

    def cancel_at_step_two(event) -> None:
        if isinstance(event, Progress) and event.node == "adv" and event.value == 2:
            token.cancel()

    result = env.run(graph, cancel=token, listener=cancel_at_step_two)
    assert result.status == "interrupted"


def test_empty_sigmas_return_the_latent_unchanged(env):
    graph = parity_graph("euler", "normal", 0.0, 5.0, "init")
    adv, adv_x0, given = env.values(graph, "out_adv", "out_adv_x0", "out_in")
    assert torch.equal(adv["samples"], given["samples"]) and torch.equal(adv_x0["samples"], given["samples"])


def test_admission_estimates_count_the_steps_of_the_sigmas(env):
    from graphengine import validate_prompt
    from graphengine.admission import estimate_prompt

    graph = parity_graph("euler", "normal", 1.0, 5.0, "empty")
    estimates = estimate_prompt(validate_prompt(graph, env.registry), env.registry.services).nodes
    assert estimates["sigmas"].extents[0]["count"] == STEPS + 1
    for name in ("adv", "custom"):
        assert estimates[name].quantities["step_pixels"] == estimates["ks"].quantities["step_pixels"]
        assert len(estimates[name].extents) == 2
