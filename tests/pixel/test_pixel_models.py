"""Pixel-space models load offline from the single-file layout and from DDPMPipeline folders, get their own family
(MODEL only: no text encoder, no VAE), run under KSampler / KSamplerAdvanced / the custom-sampling nodes with
empty conditioning and class labels, and every wrong wiring between pixel and latent models fails with a message
that says what to do."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from nodes.models.errors import ModelFileError
from nodes.models.pixel_unet import (FAMILY_KEY, PIXEL_FAMILY, UNET_KEY_PREFIX, is_pixel_file, is_pixel_folder,
                                     load_pixel_model)
from nodes.models.state_dict import read_state_dict, write_safetensors

from .conftest import (CLASS_FILE, DDPM_FOLDER, PIXEL_FILE, SD_FILE, capture, diffusers_sampler, finish, ksampler,
                       node, pixel_graph)
from .tiny import tiny_pixel_unet, tiny_scheduler, write_ddpm_folder, write_pixel_file


def test_single_file_round_trip_keeps_weights_and_configs(tmp_path):
    unet = tiny_pixel_unet(5, num_class_embeds=4)
    path = tmp_path / "m.safetensors"
    write_pixel_file(path, unet)
    tensors, metadata = read_state_dict(path)
    assert metadata[FAMILY_KEY] == PIXEL_FAMILY
    assert set(tensors) == {UNET_KEY_PREFIX + k for k in unet.state_dict()}
    configs = json.loads(metadata["graphengine.config"])
    assert configs["unet2d"]["block_out_channels"] == [8, 16] and configs["scheduler"]["_class_name"] == "DDPMScheduler"
    loaded = load_pixel_model(path)
    assert loaded.num_class_embeds == 4 and loaded.sample_size == 16 and loaded.prediction_type == "epsilon"
    for key, value in unet.state_dict().items():
        assert torch.equal(loaded.unet.state_dict()[key], value)
    assert is_pixel_file(path) and not is_pixel_folder(path)


def test_ddpm_pipeline_folder_loads_offline(tmp_path):
    unet = tiny_pixel_unet(6)
    write_ddpm_folder(tmp_path / "pipe", unet)
    assert is_pixel_folder(tmp_path / "pipe")
    loaded = load_pixel_model(tmp_path / "pipe")
    assert loaded.scheduler_config["_class_name"] == "DDPMScheduler"
    x, t = torch.randn(1, 3, 16, 16), torch.tensor([500])
    with torch.no_grad():
        assert torch.equal(loaded.unet(x, t).sample, unet(x, t).sample)


def test_a_file_whose_weights_do_not_match_its_config_is_refused(tmp_path):
    path = tmp_path / "bad.safetensors"
    write_pixel_file(path, tiny_pixel_unet())
    tensors, metadata = read_state_dict(path)
    tensors.pop(next(iter(tensors)))
    write_safetensors(path, tensors, metadata)
    with pytest.raises(ModelFileError, match="bad.safetensors: weights do not match its UNet2DModel config"):
        load_pixel_model(path)
    metadata["graphengine.config"] = "{not json"
    write_safetensors(path, tensors, metadata)
    with pytest.raises(ModelFileError, match="bad graphengine.config metadata"):
        load_pixel_model(path)


def test_checkpoint_list_shows_files_and_folders(pixel_env):
    names = pixel_env.registry.object_info()["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0]
    assert {PIXEL_FILE, CLASS_FILE, DDPM_FOLDER} <= set(names)


def sampled(env, sampler: dict, **graph_options) -> torch.Tensor:
    graph = pixel_graph(**graph_options)
    graph.update(sample=sampler, out=capture(["sample", 0]))
    return env.capture(finish(graph))["samples"]


@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m", "ddim"])
def test_ksampler_denoises_pixels(pixel_env, sampler):
    first = sampled(pixel_env, ksampler(sampler, seed=1), batch=2)
    assert first.shape == (2, 3, 16, 16) and torch.isfinite(first).all()
    assert torch.equal(first, sampled(pixel_env, ksampler(sampler, seed=1), batch=2))
    assert (first - sampled(pixel_env, ksampler(sampler, seed=2), batch=2)).abs().max() > 0.1


def test_unet_loader_and_checkpoint_loader_give_the_same_model(pixel_env):
    by_checkpoint = sampled(pixel_env, ksampler(seed=4))
    by_unet_loader = sampled(pixel_env, ksampler(seed=4), loader="UNETLoader")
    assert torch.equal(by_checkpoint, by_unet_loader)
    folder = sampled(pixel_env, ksampler(seed=4), ckpt=DDPM_FOLDER)
    assert torch.equal(folder, sampled(pixel_env, ksampler(seed=4), ckpt=DDPM_FOLDER, loader="DiffusersLoader"))
    assert (folder - by_checkpoint).abs().max() > 0.01


def test_ksampler_advanced_split_run_equals_one_run(pixel_env):
    def advanced(start: int, end: int, leftover: str, add_noise: str, latent: list) -> dict:
        return node("KSamplerAdvanced", model=["ckpt", 0], add_noise=add_noise, noise_seed=3, steps=6, cfg=1.0,
                    sampler_name="euler", scheduler="normal", positive="COND", negative="COND", latent_image=latent,
                    start_at_step=start, end_at_step=end, return_with_leftover_noise=leftover)

    graph = pixel_graph()
    graph.update(whole=advanced(0, 10000, "disable", "enable", ["latent", 0]),
                 first=advanced(0, 3, "enable", "enable", ["latent", 0]),
                 second=advanced(3, 10000, "disable", "disable", ["first", 0]),
                 out=capture(["whole", 0]), out2=capture(["second", 0]))
    result = pixel_env.run(finish(graph))
    assert result.ok, result.error
    whole, split = result.outputs["out"]["value"][0]["samples"], result.outputs["out2"]["value"][0]["samples"]
    assert (whole - split).abs().max() < 1e-4


def test_custom_sampling_nodes_drive_a_pixel_model(pixel_env):
    graph = pixel_graph()
    graph.update(
        sigmas=node("BasicScheduler", model=["ckpt", 0], scheduler="karras", steps=5, denoise=1.0),
        sampler=node("KSamplerSelect", sampler_name="euler"),
        sample=node("SamplerCustom", model=["ckpt", 0], add_noise=True, noise_seed=9, cfg=1.0, positive="COND",
                    negative="COND", sampler=["sampler", 0], sigmas=["sigmas", 0], latent_image=["latent", 0]),
        out=capture(["sample", 0]))
    samples = pixel_env.capture(finish(graph))["samples"]
    assert samples.shape == (1, 3, 16, 16) and torch.isfinite(samples).all()


def test_class_labels_change_the_result_and_are_required(pixel_env):
    zero = sampled(pixel_env, ksampler(seed=1), ckpt=CLASS_FILE, class_label=0)
    two = sampled(pixel_env, ksampler(seed=1), ckpt=CLASS_FILE, class_label=2)
    assert (zero - two).abs().max() > 0.01
    for options, message in (({}, "is class-conditional (3 classes): set the class with ConditioningSetClassLabel"),
                             ({"class_label": 3}, "class label 3 is out of range")):
        graph = pixel_graph(ckpt=CLASS_FILE, **options)
        graph.update(sample=ksampler(), out=capture(["sample", 0]))
        result = pixel_env.run(finish(graph))
        assert not result.ok and message in result.error["exception_message"]


def error_of(env, graph: dict) -> dict:
    result = env.run(graph)
    assert not result.ok
    return result.error


def test_pixel_model_outputs_fail_clearly_in_text_and_vae_nodes(pixel_env):
    graph = pixel_graph()
    graph.pop("cond")
    graph.update(text=node("CLIPTextEncode", clip=["ckpt", 1], text="a red circle"), out=capture(["text", 0]))
    assert "clip input is invalid: None" in error_of(pixel_env, graph)["exception_message"]
    graph = pixel_graph()
    graph.update(sample=ksampler(steps=1), decode=node("VAEDecode", samples=["sample", 0], vae=["ckpt", 2]),
                 out=capture(["decode", 0]))
    error = error_of(pixel_env, finish(graph))
    assert error["node_id"] == "decode"
    assert ("tiny_pixel.safetensors is a pixel-space model: it has no VAE, its LATENT is the image itself. Convert "
            "with PixelLatentToImage") in error["exception_message"]


def test_text_conditioning_and_vae_latents_are_refused_by_a_pixel_model(pixel_env):
    graph = pixel_graph()
    graph.update(sd=node("CheckpointLoaderSimple", ckpt_name=SD_FILE),
                 text=node("CLIPTextEncode", clip=["sd", 1], text="a red circle"),
                 sample=ksampler(), out=capture(["sample", 0]))
    graph["cond"] = ["text", 0]
    message = error_of(pixel_env, finish(graph))["exception_message"]
    assert "this pixel-space model is unconditional: text conditioning does not apply to it" in message
    graph = pixel_graph()
    graph["latent"] = node("EmptyLatentImage", width=64, height=64, batch_size=1)
    graph.update(sample=ksampler(), out=capture(["sample", 0]))
    message = error_of(pixel_env, finish(graph))["exception_message"]
    assert "denoises 3-channel images, got a 4-channel LATENT: start from EmptyPixelLatent" in message


def test_vae_latents_and_pixel_latents_do_not_mix(pixel_env):
    sd_latent = {"sd": node("CheckpointLoaderSimple", ckpt_name=SD_FILE),
                 "empty": node("EmptyLatentImage", width=64, height=64, batch_size=1)}
    graph = {**sd_latent, "image": node("PixelLatentToImage", samples=["empty", 0]), "out": capture(["image", 0])}
    assert "it is a VAE latent, not the image of a pixel-space model" in error_of(pixel_env, graph)[
        "exception_message"]
    graph = {**sd_latent, "pixels": node("EmptyPixelLatent", width=16, height=16, batch_size=1),
             "decode": node("VAEDecode", samples=["pixels", 0], vae=["sd", 2]), "out": capture(["decode", 0])}
    assert "a 3-channel LATENT: it is the image of a pixel-space model" in error_of(pixel_env, graph)[
        "exception_message"]


def test_image_and_pixel_latent_convert_both_ways():
    from nodes.pixel_diffusion import ImageToPixelLatent, PixelLatentToImage

    pixels = torch.rand(2, 8, 16, 3)
    (latent,) = ImageToPixelLatent.model_construct(pixels=pixels).execute(None)
    assert latent["samples"].shape == (2, 3, 8, 16)
    np.testing.assert_allclose(latent["samples"].numpy(), pixels.movedim(-1, 1).numpy() * 2 - 1, atol=1e-6)
    (image,) = PixelLatentToImage.model_construct(samples=latent).execute(None)
    np.testing.assert_allclose(image.numpy(), pixels.numpy(), atol=1e-6)


def test_loaded_scheduler_is_the_training_one(pixel_env):
    from nodes.pixel_model import model_sampling_from_scheduler

    ms = model_sampling_from_scheduler(dict(tiny_scheduler().config))
    alphas = tiny_scheduler().alphas_cumprod.to(torch.float64)
    np.testing.assert_allclose(ms.sigmas.numpy(), ((1 - alphas) / alphas).sqrt().numpy(), rtol=1e-4)  # diffusers builds its betas in float32
