"""`nodes` (ComfyUI's core node names) and the MODEL / CLIP / VAE handle methods, run on the demo model: the
results are compared with the engine's own nodes given the same inputs."""

from __future__ import annotations

import importlib

import pytest
import torch
from PIL import Image

import nodes

from .conftest import demo_graph, node


def test_v1_class_shape_comes_from_the_engine_schema(env):
    assert nodes.KSampler.FUNCTION == "sample" and nodes.KSampler.RETURN_TYPES == ("LATENT",)
    required = nodes.KSampler.INPUT_TYPES()["required"]
    assert list(required)[:3] == ["model", "seed", "steps"]
    assert required["sampler_name"][0][0] == "euler"
    assert "graphengine-demo.safetensors" in nodes.CheckpointLoaderSimple.INPUT_TYPES()["required"]["ckpt_name"][0]
    assert nodes.NODE_CLASS_MAPPINGS["VAEDecode"] is nodes.VAEDecode
    assert nodes.NODE_DISPLAY_NAME_MAPPINGS["VAEDecode"] == "VAE Decode"
    assert nodes.MAX_RESOLUTION == 16384
    with pytest.raises(AttributeError, match="NoSuchNode"):
        nodes.NoSuchNode  # noqa: B018
    with pytest.raises(RuntimeError, match="inside a running node"):
        nodes.EmptyLatentImage().generate(64, 64, 1)


def test_v1_classes_run_engine_nodes_inside_a_pack_node(env):
    def pack_function(vae):
        (latent,) = nodes.EmptyLatentImage().generate(64, 32, 2)
        (image,) = nodes.VAEDecode().decode(vae, latent)
        (inverted,) = nodes.ImageInvert().invert(image=image)
        return latent["samples"].shape, image, inverted

    shape, image, inverted = env.call(pack_function, demo_graph(), a=["ckpt", 2])
    assert shape == (2, 4, 4, 8)
    assert image.shape == (2, 32, 64, 3) and torch.allclose(inverted, 1.0 - image)


def test_save_image_subclass_writes_where_the_subclass_says(env):
    class PackPreview(nodes.SaveImage):
        def __init__(self):
            folder_paths = importlib.import_module("folder_paths")
            self.output_dir = folder_paths.get_temp_directory()
            self.type = "temp"
            self.prefix_append = "_pack"
            self.compress_level = 1

    pixels = torch.zeros(1, 8, 8, 3)
    pixels[..., 0] = 1.0
    ui = env.call(lambda: PackPreview().save_images(pixels, "shot"))
    (entry,) = ui["ui"]["images"]
    assert entry == {"filename": "shot_pack_00001_.png", "subfolder": "", "type": "temp"}
    with Image.open(env.base / "temp" / entry["filename"]) as saved:
        assert saved.getpixel((3, 3)) == (255, 0, 0)
    ui = env.call(lambda: nodes.SaveImage().save_images(pixels, "sub/plain", prompt={"1": {}}))
    assert ui["ui"]["images"][0]["type"] == "output"
    with Image.open(env.base / "output" / "sub" / "plain_00001_.png") as saved:
        assert saved.text["prompt"] == '{"1": {}}'


def test_common_ksampler_matches_the_ksampler_node(env):
    graph = demo_graph(steps=3)
    expected = env.call(lambda a: a, graph, a=["sample", 0])["samples"]

    def pack_function(model, positive, negative, latent):
        return nodes.common_ksampler(model, 7, 3, 5.0, "euler", "normal", positive, negative, latent)[0]

    got = env.call(pack_function, graph, a=["ckpt", 0], b=["pos", 0], c=["neg", 0], d=["empty", 0])
    assert torch.equal(got["samples"], expected)
    half = env.call(lambda model, positive, negative, latent: nodes.common_ksampler(
        model, 7, 3, 5.0, "euler", "normal", positive, negative, latent, last_step=1,
        force_full_denoise=True)[0], graph, a=["ckpt", 0], b=["pos", 0], c=["neg", 0], d=["empty", 0])
    assert not torch.equal(half["samples"], expected)


def test_model_cfg_function_on_a_clone_steers_sampling(env):
    graph = demo_graph(steps=3, cfg=1.0)
    cfg1 = env.call(lambda a: a, graph, a=["sample", 0])["samples"]

    def cond_only(model):
        patched = model.clone()
        patched.set_model_sampler_cfg_function(lambda args: args["cond"])  # x - cond x0: the cond prediction
        with pytest.raises(RuntimeError, match="clone"):
            model.set_model_sampler_cfg_function(lambda args: args["cond"])
        assert "sampler_cfg_function" in patched.model_options
        assert "sampler_cfg_function" not in model.model_options
        assert patched.get_model_object("model_sampling") is model.model_sampling
        assert patched.model.model_sampling is model.model_sampling  # ComfyUI's BaseModel view
        sigma = torch.tensor([1.0])
        assert torch.equal(patched.model.model_sampling.timestep(sigma), model.model_sampling.timestep(sigma))
        with pytest.raises(AttributeError, match="MODEL object has no attribute 'model.apply_model'"):
            patched.model.apply_model  # noqa: B018
        return patched

    graph5 = demo_graph(steps=3, cfg=5.0)
    model = env.call(lambda a: a, graph5, a=["ckpt", 0])
    with pytest.raises(AttributeError, match="MODEL object has no attribute 'model_patches_to'"):
        model.model_patches_to("cpu")

    def sample_with_patch(model, positive, negative, latent):
        return nodes.common_ksampler(cond_only(model), 7, 3, 5.0, "euler", "normal", positive, negative, latent)[0]

    got = env.call(sample_with_patch, graph5, a=["ckpt", 0], b=["pos", 0], c=["neg", 0], d=["empty", 0])
    assert torch.allclose(got["samples"], cfg1, atol=1e-5)  # cfg 5 steered to the cond prediction = cfg 1

    def post_cfg_zero(model, positive, negative, latent):
        patched = model.clone()
        patched.set_model_sampler_post_cfg_function(lambda args: args["denoised"] * 0.0)
        return nodes.common_ksampler(patched, 7, 1, 5.0, "euler", "normal", positive, negative, latent)[0]

    zeroed = env.call(post_cfg_zero, graph5, a=["ckpt", 0], b=["pos", 0], c=["neg", 0], d=["empty", 0])
    assert zeroed["samples"].abs().max() < 1e-4  # one euler step to a zero x0 lands on zero


def test_clip_and_vae_methods_match_the_nodes(env):
    graph = demo_graph()
    graph["dec"] = node("VAEDecode", vae=["ckpt", 2], samples=["sample", 0])
    expected_cond = env.call(lambda a: a, graph, a=["pos", 0])[0][0]
    expected_image = env.call(lambda a: a, graph, a=["dec", 0])

    def pack_function(clip, vae, latent):
        tokens = clip.tokenize("a small red circle on the left on a blue background")
        cond, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
        as_dict = clip.encode_from_tokens(tokens, return_dict=True)
        image = vae.decode(latent["samples"])
        round_trip = vae.encode(image)
        return cond, pooled, as_dict, image, round_trip, vae.downscale_ratio

    cond, pooled, as_dict, image, round_trip, ratio = env.call(pack_function, graph, a=["ckpt", 1],
                                                               b=["ckpt", 2], c=["sample", 0])
    assert torch.equal(cond, expected_cond) and torch.equal(as_dict["cond"], cond)
    assert torch.equal(as_dict["pooled_output"], pooled)
    assert torch.equal(image, expected_image) and image.shape == (1, 64, 64, 3)
    assert round_trip.shape == (1, 4, 64 // ratio, 64 // ratio) and ratio == 8
