"""InstructPix2Pix on a tiny 8-channel SD1 checkpoint in the original key layout: detected as its own family,
InstructPixToPixConditioning puts the image's unscaled VAE latent into both prompts and returns an empty latent of
its size, and every UNet call of a KSampler run gets that latent as input channels 4-7, for the cond and the uncond
rows alike (ComfyUI's cfg for ip2p); without it the extra channels are zeros. SD_4XUpscale_Conditioning's outputs
on real pixels, and the x4 upscaler family refused by name at loading and at sampling."""

from __future__ import annotations

import pytest
import torch

from .test_pipeline import base_nodes, capture, ksampler, load_image

IP2P = "tiny_ip2p.safetensors"


def ip2p_graph(invert: bool = False) -> dict:
    pixels = ["invert", 0] if invert else ["image", 0]
    return {**base_nodes(IP2P), "image": load_image(), "invert": {"class_type": "ImageInvert",
                                                                   "inputs": {"image": ["image", 0]}},
            "ip2p": {"class_type": "InstructPixToPixConditioning", "inputs": {
                "positive": ["pos", 0], "negative": ["neg", 0], "vae": ["ckpt", 2], "pixels": pixels}},
            "encode": {"class_type": "VAEEncode", "inputs": {"pixels": ["image", 0], "vae": ["ckpt", 2]}},
            "sample": ksampler(["ip2p", 2], pos=["ip2p", 0], neg=["ip2p", 1], steps=2),
            "out": capture(["sample", 0]), "out_ip2p": capture(["ip2p", 0]), "out_neg": capture(["ip2p", 1]),
            "out_latent": capture(["ip2p", 2]), "out_encoded": capture(["encode", 0]),
            "out_model": capture(["ckpt", 0])}


def _run(env, graph: dict) -> dict:
    result = env.run(graph)
    assert result.ok, result.error
    return {name: value["value"][0] for name, value in result.outputs.items() if name.startswith("out")}


def test_ip2p_checkpoint_is_detected_with_eight_input_channels(env):
    model = _run(env, ip2p_graph())["out_model"]
    assert model.in_channels == 8 and model.family == "sd15_ip2p"


def test_ip2p_conditioning_carries_the_unscaled_image_latent_in_both_prompts(env):
    out = _run(env, ip2p_graph())
    encoded = out["out_encoded"]["samples"]
    for conditioning in (out["out_ip2p"], out["out_neg"]):
        assert all(torch.equal(options["concat_latent_image"], encoded) for _, options in conditioning)
    assert torch.equal(out["out_latent"]["samples"], torch.zeros_like(encoded))


def test_every_unet_call_gets_the_image_latent_for_cond_and_uncond(env):
    graph = ip2p_graph()
    out = _run(env, graph)
    encoded, model = out["out_encoded"]["samples"], out["out_model"]
    seen: list[torch.Tensor] = []
    hook = model.unet.conv_in.register_forward_pre_hook(lambda _, args: seen.append(args[0].detach().clone()))
    try:
        sampled = _run(env, graph)["out"]["samples"]
    finally:
        hook.remove()
    assert len(seen) == 2  # 2 steps, cond and uncond rows in one call each
    for x in seen:
        assert x.shape == (2, 8, *encoded.shape[-2:])
        for row in x:  # the raw VAE latent, not multiplied by the scale factor
            torch.testing.assert_close(row[4:], encoded[0])
    other = _run(env, ip2p_graph(invert=True))["out"]["samples"]
    assert sampled.shape == encoded.shape and not torch.allclose(sampled, other, atol=1e-4)


def test_ip2p_model_without_the_image_samples_on_zero_channels(env):
    graph = {**base_nodes(IP2P), "empty": {"class_type": "EmptyLatentImage",
                                           "inputs": {"width": 32, "height": 32, "batch_size": 1}},
             "sample": ksampler(["empty", 0], steps=1), "out": capture(["sample", 0]),
             "out_model": capture(["ckpt", 0])}
    model = _run(env, graph)["out_model"]
    seen: list[torch.Tensor] = []
    hook = model.unet.conv_in.register_forward_pre_hook(lambda _, args: seen.append(args[0].detach().clone()))
    try:
        _run(env, graph)
    finally:
        hook.remove()
    assert len(seen) == 1 and torch.equal(seen[0][:, 4:], torch.zeros_like(seen[0][:, 4:]))


def test_object_info_of_instruct_pix2pix_conditioning(env):
    info = env.registry.object_info()["InstructPixToPixConditioning"]
    assert info["input_order"]["required"] == ["positive", "negative", "vae", "pixels"]
    assert info["output"] == ["CONDITIONING", "CONDITIONING", "LATENT"]
    assert info["output_name"] == ["positive", "negative", "latent"]
    assert info["category"] == "conditioning/instructpix2pix"


def x4_graph(scale_ratio: float, noise_augmentation: float = 0.0) -> dict:
    return {**base_nodes(), "image": load_image(),
            "x4": {"class_type": "SD_4XUpscale_Conditioning", "inputs": {
                "images": ["image", 0], "positive": ["pos", 0], "negative": ["neg", 0], "scale_ratio": scale_ratio,
                "noise_augmentation": noise_augmentation}},
            "out_pos": capture(["x4", 0]), "out_neg": capture(["x4", 1]), "out_latent": capture(["x4", 2]),
            "out_image": capture(["image", 0])}


def test_x4_upscale_conditioning_carries_the_low_resolution_pixels_at_latent_size(env):
    out = _run(env, x4_graph(4.0, 0.25))  # 4x: the x4 latent (a quarter of the output) is the input's size
    pixels = out["out_image"].movedim(-1, 1) * 2.0 - 1.0
    assert torch.equal(out["out_latent"]["samples"], torch.zeros(1, 4, *pixels.shape[-2:]))
    for conditioning in (out["out_pos"], out["out_neg"]):
        for _, options in conditioning:
            torch.testing.assert_close(options["concat_image"], pixels)
            assert options["noise_augmentation"] == 0.25
    half = _run(env, x4_graph(2.0))  # 2x: latent and pixels at half the input size
    size = pixels.shape[-1] // 2
    assert half["out_latent"]["samples"].shape == (1, 4, size, size)
    concat = half["out_pos"][0][1]["concat_image"]
    assert concat.shape == (1, 3, size, size)
    torch.testing.assert_close(concat[..., 3, 5], pixels[..., 6:8, 10:12].mean(dim=(-2, -1)))  # bilinear halving


def test_sampling_with_x4_conditioning_is_refused_naming_the_family(env):
    graph = x4_graph(4.0)
    graph["sample"] = ksampler(["x4", 2], pos=["x4", 0], neg=["x4", 1], steps=1)
    graph["out"] = capture(["sample", 0])
    result = env.run(graph)
    assert not result.ok and "SD x4 upscaler" in str(result.error)


def test_an_x4_upscaler_checkpoint_is_refused_naming_the_family():
    from nodes.models import FAMILIES, UnknownModelError, detect_checkpoint
    from nodes.models.export import original_state_dict

    from .tiny import tiny_text_encoder, tiny_unet, tiny_vae

    sd = original_state_dict(tiny_unet(in_channels=7), tiny_vae(), [tiny_text_encoder()],
                             FAMILIES["sd15"].text_encoders)
    with pytest.raises(UnknownModelError, match="SD x4 upscaler family"):
        detect_checkpoint(sd)
