"""ControlNetLoader / DiffControlNetLoader on files in every real key layout (detected without hints), the nodes'
/object_info, and the clear errors: wrong family, diff ControlNet without its model, union ControlNets."""

from __future__ import annotations

import pytest
import torch

from nodes.controlnet.control import ControlNetHandle

from .test_pipeline import base_nodes, capture

SD15, SDXL = "tiny_sd15.safetensors", "tiny_sdxl.safetensors"


def loader(name: str) -> dict:
    return {"class_type": "ControlNetLoader", "inputs": {"control_net_name": name}}


def loaded(env, name: str, diff_model: str | None = None) -> ControlNetHandle:
    if diff_model is None:
        nodes = {"cn": loader(name)}
    else:
        nodes = {"ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": diff_model}},
                 "cn": {"class_type": "DiffControlNetLoader", "inputs": {"model": ["ckpt", 0],
                                                                         "control_net_name": name}}}
    return env.capture({**nodes, "out": capture(["cn", 0])})


def controlnet_outputs(net, xl: bool = False) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    context_dim = net.config.cross_attention_dim
    x, hint = torch.randn(2, 4, 8, 8, generator=generator), torch.rand(2, 3, 64, 64, generator=generator)
    context = torch.randn(2, 77, context_dim, generator=generator)
    added = None
    if xl:
        pooled = net.config.projection_class_embeddings_input_dim - 6 * net.config.addition_time_embed_dim
        added = {"text_embeds": torch.randn(2, pooled, generator=generator),
                 "time_ids": torch.rand(2, 6, generator=generator) * 64}
    with torch.no_grad():
        down, mid = net(x, torch.tensor([10.0, 700.0]), context, hint, added_cond_kwargs=added, return_dict=False)
    return [*down, mid]


def assert_same_outputs(a: list[torch.Tensor], b: list[torch.Tensor], atol: float = 1e-5) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.shape == y.shape
        torch.testing.assert_close(x, y, atol=atol, rtol=1e-4)


def assert_same_weights(module: torch.nn.Module, reference: torch.nn.Module, round_to=None) -> None:
    mine, theirs = module.state_dict(), reference.state_dict()
    assert set(mine) == set(theirs)
    for key, value in theirs.items():
        expected = value.to(round_to).to(value.dtype) if round_to is not None else value
        assert torch.equal(mine[key], expected), key


def test_object_info_has_comfyuis_inputs(env, nets):
    info = env.registry.object_info()
    names = info["ControlNetLoader"]["input"]["required"]["control_net_name"][0]
    assert {"cn_sd15.safetensors", "cn_sd15_folder", "t2i_sd15.safetensors"} <= set(names)
    assert info["ControlNetLoader"]["output"] == ["CONTROL_NET"] and info["ControlNetLoader"]["category"] == "loaders"
    assert list(info["DiffControlNetLoader"]["input"]["required"]) == ["model", "control_net_name"]
    strength = ["FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01}]
    percent = ["FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001}]
    advanced = info["ControlNetApplyAdvanced"]
    assert advanced["input"]["required"] == {
        "positive": ["CONDITIONING"], "negative": ["CONDITIONING"], "control_net": ["CONTROL_NET"],
        "image": ["IMAGE"], "strength": strength, "start_percent": percent,
        "end_percent": ["FLOAT", {**percent[1], "default": 1.0}]}
    assert advanced["input"]["optional"] == {"vae": ["VAE"]}
    assert advanced["output"] == ["CONDITIONING", "CONDITIONING"]
    assert advanced["output_name"] == ["positive", "negative"]
    assert advanced["category"] == "conditioning/controlnet"
    assert info["ControlNetApply"]["input"]["required"] == {
        "conditioning": ["CONDITIONING"], "control_net": ["CONTROL_NET"], "image": ["IMAGE"], "strength": strength}
    assert info["ControlNetApply"]["deprecated"] is True
    union = info["SetUnionControlNetType"]["input"]["required"]
    assert union["type"][0] == ["auto", "openpose", "depth", "hed/pidi/scribble/ted",
                                "canny/lineart/anime_lineart/mlsd", "normal", "segment", "tile", "repaint"]


@pytest.mark.parametrize("name,reference", [
    ("cn_sd15.safetensors", "sd15"),  # original layout under control_model.
    ("cn_sd15_b_fp16.pth", "sd15_b"),  # pruned fp16, no prefix, a torch archive (weights-only load)
    ("cn_sd15_diffusers.safetensors", "sd15"),  # diffusers keys in one file, no config
    ("cn_sd15_folder", "sd15"),  # diffusers folder: config.json + weights
])
def test_sd15_controlnets_load_from_every_layout(env, nets, name, reference):
    handle = loaded(env, name)
    assert handle.kind == "controlnet" and handle.base == "sd1" and handle.nbytes == 0  # the manager holds it
    fp16 = name.endswith("fp16.pth")
    assert_same_weights(handle.module, getattr(nets, reference), torch.float16 if fp16 else None)
    if not fp16:  # (fp16 weights were checked equal to the rounded reference above)
        assert_same_outputs(controlnet_outputs(handle.module), controlnet_outputs(getattr(nets, reference)))


def test_sdxl_controlnet_in_the_original_layout(env, nets):
    handle = loaded(env, "cn_sdxl.safetensors")
    assert handle.base == "sdxl"
    assert handle.module.config.addition_embed_type == "text_time"
    assert_same_weights(handle.module, nets.sdxl)
    assert_same_outputs(controlnet_outputs(handle.module, xl=True), controlnet_outputs(nets.sdxl, xl=True))


def test_diff_controlnet_is_made_whole_with_the_model(env, nets):
    handle = loaded(env, "cn_sd15_diff.safetensors", diff_model=SD15)
    for key, value in nets.sd15.state_dict().items():  # (ControlNet - UNet) + UNet
        torch.testing.assert_close(handle.module.state_dict()[key], value, atol=1e-6, rtol=0)
    assert_same_outputs(controlnet_outputs(handle.module), controlnet_outputs(nets.sd15))


def test_diff_controlnet_without_a_model_is_a_clear_error(env, nets):
    result = env.run({"cn": loader("cn_sd15_diff.safetensors"), "out": capture(["cn", 0])})
    assert result.status == "error" and result.error["node_type"] == "ControlNetLoader"
    message = result.error["exception_message"]
    assert "cn_sd15_diff.safetensors" in message and "DiffControlNetLoader" in message


def test_diff_controlnet_for_another_family_names_both(env, nets):
    result = env.run({"ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": SDXL}},
                      "cn": {"class_type": "DiffControlNetLoader",
                             "inputs": {"model": ["ckpt", 0], "control_net_name": "cn_sd15_diff.safetensors"}},
                      "out": capture(["cn", 0])})
    assert result.status == "error" and result.error["node_type"] == "DiffControlNetLoader"
    message = result.error["exception_message"]
    assert "cn_sd15_diff.safetensors" in message and "for SD1.x models" in message and "model is SDXL" in message


def adapter_features(adapter, size: int = 64) -> list[torch.Tensor]:
    hint = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return adapter(hint)


@pytest.mark.parametrize("name,reference,base", [
    ("t2i_sd15.safetensors", "adapter", "sd1"),
    ("t2i_sd15_diffusers.safetensors", "adapter", "sd1"),
    ("t2i_sdxl.safetensors", "adapter_xl", "sdxl"),
    ("t2i_light.safetensors", "adapter_light", "sd1"),
])
def test_t2i_adapters_are_detected_by_controlnet_loader(env, nets, name, reference, base):
    handle = loaded(env, name)
    assert handle.kind == "t2i_adapter" and handle.base == base
    expected = getattr(nets, reference)
    assert handle.module.config.adapter_type == expected.config.adapter_type
    assert_same_weights(handle.module, expected)
    assert_same_outputs(adapter_features(handle.module), adapter_features(expected))


def test_union_controlnets_are_refused_clearly(env, nets):
    result = env.run({"cn": loader("union_sdxl.safetensors"), "out": capture(["cn", 0])})
    assert result.status == "error"
    assert "union_sdxl.safetensors" in result.error["exception_message"]
    assert "union ControlNets" in result.error["exception_message"]


@pytest.mark.parametrize("name,ckpt", [("cn_sdxl.safetensors", SD15), ("cn_sd15.safetensors", SDXL),
                                       ("t2i_sdxl.safetensors", SD15)])
def test_a_controlnet_for_another_family_fails_naming_both(env, nets, name, ckpt):
    prompt = {**base_nodes(ckpt),
              "empty": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
              "hint": {"class_type": "LoadImage", "inputs": {"image": "scene.png"}},
              "cn": loader(name),
              "apply": {"class_type": "ControlNetApplyAdvanced", "inputs": {
                  "positive": ["pos", 0], "negative": ["neg", 0], "control_net": ["cn", 0], "image": ["hint", 0],
                  "strength": 1.0, "start_percent": 0.0, "end_percent": 1.0}},
              "sample": {"class_type": "KSampler", "inputs": {
                  "model": ["ckpt", 0], "seed": 0, "steps": 1, "cfg": 5.0, "sampler_name": "euler",
                  "scheduler": "normal", "positive": ["apply", 0], "negative": ["apply", 1],
                  "latent_image": ["empty", 0], "denoise": 1.0}},
              "out": capture(["sample", 0])}
    result = env.run(prompt)
    assert result.status == "error" and result.error["node_type"] == "KSampler"
    message = result.error["exception_message"]
    mine, theirs = ("SDXL", "SD1.x") if ckpt == SD15 else ("SD1.x", "SDXL")
    assert name in message and f"is for {mine}" in message and f"model is {theirs}" in message
