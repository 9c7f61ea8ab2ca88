"""ControlNets and T2I-Adapters inside sampling: strength 0 and steps outside [start, end] run exactly as without
them, the residuals reach the UNet, stacked nets add up, a hand-written diffusers loop gives the same latents, and
they work with areas, masks, inpainting, batches, SDXL and every kind of sampler."""

from __future__ import annotations

import pytest
import torch

from nodes.controlnet.control import ControlLink, ControlNetHandle
from nodes.memory import result_sizeof
from nodes.samplers.conds import controls_for_uncond
from nodes.samplers.noise import prepare_noise
from nodes.samplers.pipeline import sampling_sigmas

from .test_pipeline import base_nodes, capture, empty_latent, load_image

SD15, SDXL = "tiny_sd15.safetensors", "tiny_sdxl.safetensors"
CFG = 5.0


def apply_node(name: str, positive: list, negative: list, strength: float = 1.0, start: float = 0.0,
               end: float = 1.0) -> dict:
    return {"class_type": "ControlNetApplyAdvanced", "inputs": {
        "positive": positive, "negative": negative, "control_net": [f"load {name}", 0], "image": ["hint", 0],
        "strength": strength, "start_percent": start, "end_percent": end}}


def graph(*controls: tuple, ckpt: str = SD15, sampler: str = "euler", steps: int = 3, batch: int = 1,
          size: int = 64, latent: list | None = None, sampler_node: dict | None = None) -> dict:
    """txt2img with each (control file, strength[, start, end]) applied in turn to both prompts."""
    nodes = {**base_nodes(ckpt), "hint": load_image(), "empty": empty_latent(batch, size)}
    positive, negative = ["pos", 0], ["neg", 0]
    for i, (name, *settings) in enumerate(controls):
        nodes[f"load {name}"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": name}}
        nodes[f"apply{i}"] = apply_node(name, positive, negative, *settings)
        positive, negative = [f"apply{i}", 0], [f"apply{i}", 1]
    nodes["sample"] = sampler_node or {"class_type": "KSampler", "inputs": {
        "model": ["ckpt", 0], "seed": 3, "steps": steps, "cfg": CFG, "sampler_name": sampler, "scheduler": "normal",
        "positive": positive, "negative": negative, "latent_image": latent or ["empty", 0], "denoise": 1.0}}
    nodes["sample"]["inputs"].update(positive=positive, negative=negative)
    nodes["out"] = capture(["sample", 0])
    return nodes


def latents(env, prompt: dict) -> torch.Tensor:
    return env.capture(prompt)["samples"]


def assert_differ(a: torch.Tensor, b: torch.Tensor) -> None:
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    assert (a - b).abs().mean() > 1e-3


@pytest.fixture(scope="module")
def plain(env):
    return latents(env, graph())


def test_strength_zero_is_bit_identical_to_no_controlnet(env, nets, plain):
    assert torch.equal(latents(env, graph(("cn_sd15.safetensors", 0.0))), plain)
    assert torch.equal(latents(env, graph(("t2i_sd15.safetensors", 0.0))), plain)


def test_the_output_changes_with_strength(env, nets, plain):
    half = latents(env, graph(("cn_sd15.safetensors", 0.5)))
    full = latents(env, graph(("cn_sd15.safetensors", 1.0)))
    assert_differ(half, plain)
    assert_differ(full, half)


def advanced(end_at_step: int) -> dict:
    return {"class_type": "KSamplerAdvanced", "inputs": {
        "model": ["ckpt", 0], "add_noise": "enable", "noise_seed": 3, "steps": 6, "cfg": CFG, "sampler_name": "euler",
        "scheduler": "normal", "latent_image": ["empty", 0], "start_at_step": 0, "end_at_step": end_at_step,
        "return_with_leftover_noise": "enable"}}


def test_steps_outside_start_end_run_exactly_as_without_controlnet(env, nets):
    first_steps = latents(env, graph(sampler_node=advanced(2)))
    # the first 2 of 6 steps lie above sigma(start_percent=0.6): the ControlNet is not run for them
    assert torch.equal(latents(env, graph(("cn_sd15.safetensors", 1.0, 0.6, 1.0), sampler_node=advanced(2))),
                       first_steps)
    assert_differ(latents(env, graph(("cn_sd15.safetensors", 1.0, 0.0, 0.3), sampler_node=advanced(2))), first_steps)
    whole = latents(env, graph(sampler_node=advanced(6)))
    assert_differ(latents(env, graph(("cn_sd15.safetensors", 1.0, 0.6, 1.0), sampler_node=advanced(6))), whole)


@pytest.fixture(scope="module")
def parts(env, nets):
    """The loaded MODEL, the encoded prompts and the hint image of the graphs above."""
    prompt = {**base_nodes(), "hint": load_image(), "model": capture(["ckpt", 0]), "p": capture(["pos", 0]),
              "n": capture(["neg", 0]), "h": capture(["hint", 0])}
    result = env.run(prompt)
    assert result.ok, result.error
    value = {k: result.outputs[k]["value"][0] for k in ("model", "p", "n", "h")}
    return value["model"], value["p"][0][0], value["n"][0][0], value["h"].movedim(-1, 1)


def reference_euler(model, controls: list, positive, negative, hint, steps: int = 3, seed: int = 3):
    """KSampler's euler written out with diffusers' ControlNetModel and the same UNet: [uncond, cond] rows, each
    net's residuals scaled by its strength and summed, eps -> x0, cfg, Euler steps."""
    ms = model.model_sampling
    sigmas = sampling_sigmas(ms, "normal", steps, "euler")
    x = prepare_noise(torch.zeros(1, 4, 8, 8), seed) * (1 + sigmas[0] ** 2) ** 0.5
    context = torch.cat([negative, positive])
    hints = hint.expand(2, -1, -1, -1)
    with torch.no_grad():
        for i in range(steps):
            sigma = sigmas[i]
            x_in = torch.cat([x, x]) / (sigma ** 2 + 1) ** 0.5
            t = ms.timestep(sigma.expand(2)).float()
            residuals = {}
            for net, strength in controls:
                down, mid = net(x_in, t, context, hints, conditioning_scale=strength, return_dict=False)
                if residuals:
                    down = [a + b for a, b in zip(residuals["down_block_additional_residuals"], down)]
                    mid = residuals["mid_block_additional_residual"] + mid
                residuals = {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
            eps = model.unet(x_in, t, encoder_hidden_states=context, return_dict=False, **residuals)[0]
            uncond, cond = (torch.cat([x, x]) - eps * sigma).chunk(2)
            x0 = uncond + (cond - uncond) * CFG
            x = x + (x - x0) / sigma * (sigmas[i + 1] - sigma)
    return x / model.latent_scale_factor


def test_two_stacked_controlnets_match_a_hand_written_diffusers_loop(env, nets, parts):
    model, positive, negative, hint = parts
    engine = latents(env, graph(("cn_sd15.safetensors", 0.7), ("cn_sd15_b_fp16.pth", 0.4)))
    loader = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": "cn_sd15_b_fp16.pth"}}
    b_loaded = env.capture({"l": loader, "out": capture(["l", 0])}).module  # the fp16 file's (rounded) weights
    reference = reference_euler(model, [(nets.sd15, 0.7), (b_loaded, 0.4)], positive, negative, hint)
    # the untrained UNet amplifies float reassociation (values ~1e2)
    torch.testing.assert_close(engine, reference, rtol=1e-3, atol=1e-3)
    without = reference_euler(model, [(nets.sd15, 0.7)], positive, negative, hint)
    assert (engine - without).abs().max() > 0.1  # the second net really counts


def unet_call(model, x_in, t, context, **residuals):
    with torch.no_grad():
        return model.unet(x_in, t, encoder_hidden_states=context, return_dict=False, **residuals)[0]


def bound(link: ControlLink, model, sigma: float, batch: int = 1):
    return link.bind(sigma, model.model_sampling.percent_to_sigma, 8, 8, batch, 1)


def test_stacked_residuals_are_the_sum_of_each_net(nets, parts):
    model, positive, _, hint = parts
    a = ControlLink(ControlNetHandle(nets.sd15, "a"), hint, 0.8)
    b = ControlLink(ControlNetHandle(nets.sd15_b, "b"), hint, 0.3, previous=a)
    x_in, t = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2)), torch.tensor([600.0])
    with torch.no_grad():
        down_a, mid_a = nets.sd15(x_in, t, positive, hint, conditioning_scale=0.8, return_dict=False)
        down_b, mid_b = nets.sd15_b(x_in, t, positive, hint, conditioning_scale=0.3, return_dict=False)
    summed = [p + q for p, q in zip(down_a, down_b)]
    expected = unet_call(model, x_in, t, positive, down_block_additional_residuals=summed,
                         mid_block_additional_residual=mid_a + mid_b)
    stacked = model.apply_model(x_in, t, positive, control=bound(b, model, 1.0))
    torch.testing.assert_close(stacked, expected, rtol=1e-5, atol=1e-5)
    alone = model.apply_model(x_in, t, positive, control=bound(a, model, 1.0))
    assert (stacked - alone).abs().max() > 1e-2


def test_t2i_adapter_features_are_added_inside_the_down_blocks(nets, parts):
    model, positive, _, hint = parts
    link = ControlLink(ControlNetHandle(nets.adapter, "t2i"), hint, 0.6)
    x_in, t = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(4)), torch.tensor([300.0])
    with torch.no_grad():
        features = [f * 0.6 for f in nets.adapter(hint)]
    expected = unet_call(model, x_in, t, positive, down_intrablock_additional_residuals=features)
    torch.testing.assert_close(model.apply_model(x_in, t, positive, control=bound(link, model, 1.0)), expected,
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["t2i_sd15.safetensors", "t2i_light.safetensors"])
def test_t2i_adapters_change_the_output(env, nets, plain, name):
    assert_differ(latents(env, graph((name, 1.0))), plain)


def test_the_old_apply_node_also_drives_the_negative_prompt(env, nets):
    nodes = graph()
    nodes["load"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": "cn_sd15.safetensors"}}
    nodes["old"] = {"class_type": "ControlNetApply", "inputs": {
        "conditioning": ["pos", 0], "control_net": ["load", 0], "image": ["hint", 0], "strength": 0.9}}
    nodes["sample"]["inputs"]["positive"] = ["old", 0]
    advanced_both = latents(env, graph(("cn_sd15.safetensors", 0.9)))
    assert torch.equal(latents(env, nodes), advanced_both)


def test_controls_for_uncond_follows_comfyuis_rule():
    ctx = torch.zeros(1, 2, 3)
    shared = {"control": "A", "control_apply_to_uncond": True}
    negative = [[ctx, {}], [ctx, {"area": (1, 1, 0, 0)}]]
    given = controls_for_uncond([[ctx, shared]], negative)
    assert given[0][1]["control"] == "A" and "control" not in given[1][1] and "control" not in negative[0][1]
    assert controls_for_uncond([[ctx, {**shared, "control_apply_to_uncond": False}]], negative) is negative
    owned = [[ctx, {"control": "B"}]]
    assert controls_for_uncond([[ctx, shared]], owned) is owned


def area_nodes(prompt: dict, how: str) -> dict:
    """The positive prompt (after the ControlNet) limited to the left half by an area, or weighted by a mask."""
    if how == "area":
        prompt["limit"] = {"class_type": "ConditioningSetArea", "inputs": {
            "conditioning": prompt["sample"]["inputs"]["positive"], "width": 64, "height": 64, "x": 0, "y": 0,
            "strength": 1.0}}
    else:
        prompt["mask"] = {"class_type": "SolidMask", "inputs": {"value": 0.5, "width": 128, "height": 64}}
        prompt["limit"] = {"class_type": "ConditioningSetMask", "inputs": {
            "conditioning": prompt["sample"]["inputs"]["positive"], "mask": ["mask", 0], "strength": 1.0,
            "set_cond_area": "default"}}
    prompt["sample"]["inputs"]["positive"] = ["limit", 0]
    return prompt


@pytest.mark.parametrize("how", ["area", "mask"])
def test_controlnet_with_area_and_mask_conditioning(env, nets, how):
    wide = {"class_type": "EmptyLatentImage", "inputs": {"width": 128, "height": 64, "batch_size": 1}}
    without = area_nodes({**graph(), "empty": wide}, how)
    controlled = area_nodes({**graph(("cn_sd15.safetensors", 1.0)), "empty": wide}, how)
    assert_differ(latents(env, controlled), latents(env, without))


def test_controlnet_with_an_inpaint_model(env, nets):
    def prompt(*controls):
        nodes = graph(*controls, ckpt="tiny_inpaint.safetensors", latent=["prep", 0])
        nodes["img"] = load_image("scene_masked.png")
        nodes["prep"] = {"class_type": "VAEEncodeForInpaint", "inputs": {
            "pixels": ["img", 0], "vae": ["ckpt", 2], "mask": ["img", 1], "grow_mask_by": 6}}
        return nodes
    assert_differ(latents(env, prompt(("cn_sd15.safetensors", 1.0))), latents(env, prompt()))


def test_a_batch_shares_one_hint_and_each_item_matches_its_single_run(env, nets):
    batch = latents(env, graph(("cn_sd15.safetensors", 1.0), batch=2))
    single = latents(env, graph(("cn_sd15.safetensors", 1.0)))
    torch.testing.assert_close(batch[:1], single, rtol=1e-3, atol=1e-3)
    assert (batch[0] - batch[1]).abs().mean() > 1.0


@pytest.mark.parametrize("sampler", ["euler_ancestral", "heun", "dpmpp_2m", "dpmpp_sde", "uni_pc", "euler_cfg_pp"])
def test_every_kind_of_sampler_runs_the_controlnet(env, nets, sampler):
    assert_differ(latents(env, graph(("cn_sd15.safetensors", 1.0), sampler=sampler, steps=2)),
                  latents(env, graph(sampler=sampler, steps=2)))


@pytest.mark.parametrize("name", ["cn_sdxl.safetensors", "t2i_sdxl.safetensors"])
def test_sdxl_controlnet_and_adapter(env, nets, name):
    assert_differ(latents(env, graph((name, 1.0), ckpt=SDXL, steps=2)), latents(env, graph(ckpt=SDXL, steps=2)))


def test_the_cached_conditioning_counts_its_hint_once(env, nets):
    prompt = graph(("cn_sd15.safetensors", 1.0))
    prompt["applied"] = capture(["apply0", 0])
    prompt["both"] = capture(["apply0", 1])
    result = env.run(prompt)
    positive, negative = result.outputs["applied"]["value"][0], result.outputs["both"]["value"][0]
    link = positive[0][1]["control"]
    assert link is negative[0][1]["control"]  # one link shared by both prompts
    hint_bytes = link.hint.untyped_storage().nbytes()
    assert hint_bytes == 64 * 64 * 3 * 4
    context_bytes = positive[0][0].untyped_storage().nbytes()
    assert result_sizeof((positive, negative)) < 2 * context_bytes + hint_bytes + 4096
    assert result_sizeof((positive, negative)) >= hint_bytes
