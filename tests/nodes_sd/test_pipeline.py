"""End-to-end prompts through the real executor with tiny checkpoints written by the real single-file writer."""

from __future__ import annotations

import pytest
import torch
from PIL import Image as PILImage

from graphengine import CancelToken, Progress, ProgressPreview

from .conftest import IMAGE_SIZE

CKPT = "tiny_sd15.safetensors"


def base_nodes(ckpt: str = CKPT) -> dict:
    return {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red circle", "clip": ["ckpt", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["ckpt", 1]}},
    }


def ksampler(latent: list, *, seed: int = 1, steps: int = 3, denoise: float = 1.0, sampler: str = "euler",
             scheduler: str = "normal", model: list | None = None, pos: list | None = None,
             neg: list | None = None) -> dict:
    return {"class_type": "KSampler", "inputs": {
        "model": model or ["ckpt", 0], "seed": seed, "steps": steps, "cfg": 5.0, "sampler_name": sampler,
        "scheduler": scheduler, "positive": pos or ["pos", 0], "negative": neg or ["neg", 0],
        "latent_image": latent, "denoise": denoise}}


def empty_latent(batch: int = 1, size: int = IMAGE_SIZE) -> dict:
    return {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": batch}}


def capture(link: list) -> dict:
    return {"class_type": "Capture", "inputs": {"value": link}}


def load_image(name: str = "scene.png") -> dict:
    return {"class_type": "LoadImage", "inputs": {"image": name}}


def saved_pngs(env, result, node: str) -> list[PILImage.Image]:
    images = result.outputs[node]["images"]
    return [PILImage.open(env.base / "output" / i["subfolder"] / i["filename"]) for i in images]


def txt2img(seed: int = 1, **kw) -> dict:
    return {**base_nodes(), "empty": empty_latent(), "sample": ksampler(["empty", 0], seed=seed, **kw),
            "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["sample", 0], "vae": ["ckpt", 2]}},
            "out": capture(["decode", 0])}


def test_txt2img_writes_a_png_of_the_requested_size(env):
    prompt = {**base_nodes(), "empty": {"class_type": "EmptyLatentImage",
                                        "inputs": {"width": 64, "height": 48, "batch_size": 2}},
              "sample": ksampler(["empty", 0]),
              "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["sample", 0], "vae": ["ckpt", 2]}},
              "save": {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": "t2i"}}}
    result = env.run(prompt)
    assert result.ok, result.error
    pngs = saved_pngs(env, result, "save")
    assert [p.size for p in pngs] == [(64, 48), (64, 48)]


def test_same_seed_same_image_and_other_seed_differs(env):
    first = env.capture(txt2img(seed=7))
    again = env.capture(txt2img(seed=7))
    other = env.capture(txt2img(seed=8))
    assert first.shape == (1, IMAGE_SIZE, IMAGE_SIZE, 3)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_img2img_at_denoise_zero_returns_the_input_latent(env):
    prompt = {**base_nodes(), "img": load_image(),
              "enc": {"class_type": "VAEEncode", "inputs": {"pixels": ["img", 0], "vae": ["ckpt", 2]}},
              "sample": ksampler(["enc", 0], denoise=0.0),
              "out": capture(["sample", 0]), "orig": capture(["enc", 0])}
    result = env.run(prompt)
    assert result.ok, result.error
    sampled = result.outputs["out"]["value"][0]["samples"]
    original = result.outputs["orig"]["value"][0]["samples"]
    assert sampled.shape == (1, 4, IMAGE_SIZE // 8, IMAGE_SIZE // 8)
    assert torch.equal(sampled, original)


def test_img2img_partial_denoise_changes_the_latent(env):
    prompt = {**base_nodes(), "img": load_image(),
              "enc": {"class_type": "VAEEncode", "inputs": {"pixels": ["img", 0], "vae": ["ckpt", 2]}},
              "sample": ksampler(["enc", 0], denoise=0.5), "out": capture(["sample", 0]), "orig": capture(["enc", 0])}
    result = env.run(prompt)
    assert result.ok, result.error
    assert not torch.equal(result.outputs["out"]["value"][0]["samples"], result.outputs["orig"]["value"][0]["samples"])


def test_batch_item_equals_the_single_image_taken_from_the_batch(env):
    batch = env.capture({**base_nodes(), "empty": empty_latent(batch=3), "sample": ksampler(["empty", 0], seed=11),
                         "out": capture(["sample", 0])})["samples"]
    single = env.capture({**base_nodes(), "empty": empty_latent(batch=3),
                          "pick": {"class_type": "LatentFromBatch",
                                   "inputs": {"samples": ["empty", 0], "batch_index": 2, "length": 1}},
                          "sample": ksampler(["pick", 0], seed=11), "out": capture(["sample", 0])})["samples"]
    assert batch.shape[0] == 3 and single.shape[0] == 1
    # equal up to float reassociation in batched kernels (an untrained UNet amplifies it; values are ~1e2)
    torch.testing.assert_close(single[0], batch[2], rtol=1e-3, atol=1e-3)
    assert (batch[0] - batch[2]).abs().mean() > 1.0


def test_base_model_inpaint_keeps_the_unmasked_latent(env):
    prompt = {**base_nodes(), "img": load_image("scene_masked.png"),
              "enc": {"class_type": "VAEEncode", "inputs": {"pixels": ["img", 0], "vae": ["ckpt", 2]}},
              "masked": {"class_type": "SetLatentNoiseMask", "inputs": {"samples": ["enc", 0], "mask": ["img", 1]}},
              "sample": ksampler(["masked", 0], steps=4), "out": capture(["sample", 0]), "orig": capture(["enc", 0])}
    result = env.run(prompt)
    assert result.ok, result.error
    sampled = result.outputs["out"]["value"][0]["samples"]
    original = result.outputs["orig"]["value"][0]["samples"]
    half = IMAGE_SIZE // 16  # latent columns of the left (masked) half
    torch.testing.assert_close(sampled[..., half:], original[..., half:], rtol=1e-5, atol=1e-5)
    assert (sampled[..., :half] - original[..., :half]).abs().mean() > 0.05


@pytest.mark.parametrize("how", ["VAEEncodeForInpaint", "InpaintModelConditioning"])
def test_inpaint_model_end_to_end(env, how):
    nodes = {**base_nodes("tiny_inpaint.safetensors"), "img": load_image("scene_masked.png")}
    if how == "VAEEncodeForInpaint":
        nodes["prep"] = {"class_type": how, "inputs": {"pixels": ["img", 0], "vae": ["ckpt", 2], "mask": ["img", 1],
                                                       "grow_mask_by": 6}}
        nodes["sample"] = ksampler(["prep", 0])
    else:
        nodes["prep"] = {"class_type": how, "inputs": {"positive": ["pos", 0], "negative": ["neg", 0],
                                                       "vae": ["ckpt", 2], "pixels": ["img", 0], "mask": ["img", 1],
                                                       "noise_mask": True}}
        nodes["sample"] = ksampler(["prep", 2], pos=["prep", 0], neg=["prep", 1])
        nodes["cond"] = capture(["prep", 0])
    nodes["decode"] = {"class_type": "VAEDecode", "inputs": {"samples": ["sample", 0], "vae": ["ckpt", 2]}}
    nodes["save"] = {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": how}}
    result = env.run(nodes)
    assert result.ok, result.error
    assert [p.size for p in saved_pngs(env, result, "save")] == [(IMAGE_SIZE, IMAGE_SIZE)]
    if how == "InpaintModelConditioning":
        options = result.outputs["cond"]["value"][0][0][1]
        assert options["concat_latent_image"].shape == (1, 4, IMAGE_SIZE // 8, IMAGE_SIZE // 8)
        assert options["concat_mask"].shape == (1, 1, IMAGE_SIZE, IMAGE_SIZE)


def test_depth2img_end_to_end(env):
    nodes = {**base_nodes("tiny_depth.safetensors"), "img": load_image(),
             "depth": {"class_type": "DepthEstimate", "inputs": {"image": ["img", 0], "model_name": "tiny_dpt"}},
             "cond": {"class_type": "ConditioningSetDepth",
                      "inputs": {"positive": ["pos", 0], "negative": ["neg", 0], "depth_map": ["depth", 0]}},
             "empty": empty_latent(),
             "sample": ksampler(["empty", 0], pos=["cond", 0], neg=["cond", 1]),
             "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["sample", 0], "vae": ["ckpt", 2]}},
             "save": {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": "depth"}},
             "map": capture(["depth", 0])}
    events = []
    result = env.run(nodes, listener=events.append, extra_data={"preview_method": "auto"})
    assert result.ok, result.error
    assert [p.size for p in saved_pngs(env, result, "save")] == [(IMAGE_SIZE, IMAGE_SIZE)]
    # a custom-family latent space has no RGB factors: its previews are decoded by the checkpoint's own VAE
    previews = [e.image for e in events if isinstance(e, ProgressPreview) and e.node == "sample"]
    assert [p.size for p in previews] == [(IMAGE_SIZE, IMAGE_SIZE)] * 3
    depth = result.outputs["map"]["value"][0]
    assert depth.shape == (1, IMAGE_SIZE, IMAGE_SIZE, 3) and depth.min() == 0 and depth.max() == 1


def test_depth_model_without_depth_conditioning_fails_clearly(env):
    nodes = {**base_nodes("tiny_depth.safetensors"), "empty": empty_latent(),
             "sample": ksampler(["empty", 0]), "out": capture(["sample", 0])}
    result = env.run(nodes)
    assert result.status == "error"
    assert "concat_depth" in result.error["exception_message"]


def advanced(latent: list, *, add_noise: str, start: int, end: int, leftover: str, steps: int = 4) -> dict:
    return {"class_type": "KSamplerAdvanced", "inputs": {
        "model": ["ckpt", 0], "add_noise": add_noise, "noise_seed": 5, "steps": steps, "cfg": 5.0,
        "sampler_name": "euler", "scheduler": "normal", "positive": ["pos", 0], "negative": ["neg", 0],
        "latent_image": latent, "start_at_step": start, "end_at_step": end, "return_with_leftover_noise": leftover}}


def test_advanced_two_stages_equal_one_full_run(env):
    full = env.capture({**base_nodes(), "empty": empty_latent(), "sample": ksampler(["empty", 0], seed=5, steps=4),
                        "out": capture(["sample", 0])})["samples"]
    staged = env.capture({**base_nodes(), "empty": empty_latent(),
                          "a": advanced(["empty", 0], add_noise="enable", start=0, end=2, leftover="enable"),
                          "b": advanced(["a", 0], add_noise="disable", start=2, end=10000, leftover="disable"),
                          "out": capture(["b", 0])})["samples"]
    first_half = env.capture({**base_nodes(), "empty": empty_latent(),
                              "a": advanced(["empty", 0], add_noise="enable", start=0, end=2, leftover="enable"),
                              "out": capture(["a", 0])})["samples"]
    torch.testing.assert_close(staged, full, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(first_half, full, rtol=1e-2, atol=1e-2)  # stopped early, with leftover noise


def test_progress_once_per_step_with_previews(env):
    events = []
    result = env.run(txt2img(steps=4), listener=events.append, extra_data={"preview_method": "latent2rgb"})
    assert result.ok, result.error
    ticks = [(e.value, e.max) for e in events if isinstance(e, Progress) and e.node == "sample"]
    assert ticks == [(1, 4), (2, 4), (3, 4), (4, 4)]
    previews = [e.image for e in events if isinstance(e, ProgressPreview) and e.node == "sample"]
    assert len(previews) == 4 and previews[0].size == (IMAGE_SIZE // 8, IMAGE_SIZE // 8)


def test_no_previews_when_preview_method_is_none(env):
    events = []
    assert env.run(txt2img(steps=2), listener=events.append).ok
    assert not [e for e in events if isinstance(e, ProgressPreview)]


def test_cancellation_interrupts_within_one_step(env):
    cancel = CancelToken()
    ticks = []

    def on_event(event):
        if isinstance(event, Progress) and event.node == "sample":
            ticks.append(event.value)
            cancel.cancel()

    result = env.run(txt2img(steps=50), cancel=cancel, listener=on_event)
    assert result.status == "interrupted"
    assert ticks == [1]


def test_bad_checkpoint_gives_an_execution_error_naming_the_file(env):
    result = env.run({**txt2img(), "ckpt": {"class_type": "CheckpointLoaderSimple",
                                            "inputs": {"ckpt_name": "broken.safetensors"}}})
    assert result.status == "error"
    assert result.error["node_type"] == "CheckpointLoaderSimple"
    assert "broken.safetensors" in result.error["exception_message"]


def test_separate_loaders_match_the_checkpoint(env):
    reference = env.capture(txt2img(seed=3))
    nodes = {"unet": {"class_type": "UNETLoader", "inputs": {"unet_name": "tiny_unet.safetensors",
                                                             "weight_dtype": "default"}},
             "clip": {"class_type": "CLIPLoader", "inputs": {"clip_name": "tiny_clip.safetensors",
                                                             "type": "stable_diffusion"}},
             "vae": {"class_type": "VAELoader", "inputs": {"vae_name": "tiny_vae.safetensors"}},
             "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red circle", "clip": ["clip", 0]}},
             "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["clip", 0]}},
             "empty": empty_latent(), "sample": ksampler(["empty", 0], seed=3, model=["unet", 0]),
             "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["sample", 0], "vae": ["vae", 0]}},
             "out": capture(["decode", 0])}
    torch.testing.assert_close(env.capture(nodes), reference, rtol=1e-5, atol=1e-5)


def test_checkpoint_loader_with_config(env):
    nodes = {**txt2img(seed=3), "ckpt": {"class_type": "CheckpointLoader", "inputs": {
        "config_name": "v1-inference.yaml", "ckpt_name": CKPT}}}
    torch.testing.assert_close(env.capture(nodes), env.capture(txt2img(seed=3)))


def test_checkpoint_loader_config_selects_v_prediction(env):
    def model_for(config: str):
        return env.capture({"ckpt": {"class_type": "CheckpointLoader",
                                     "inputs": {"config_name": config, "ckpt_name": CKPT}}, "out": capture(["ckpt", 0])})

    assert model_for("v2-inference-v.yaml").model_sampling.prediction == "v"
    assert model_for("v1-inference.yaml").model_sampling.prediction == "eps"


def test_tiled_vae_nodes_round_trip_shapes(env):
    nodes = {**base_nodes(), "img": load_image(),
             "enc": {"class_type": "VAEEncodeTiled", "inputs": {"pixels": ["img", 0], "vae": ["ckpt", 2],
                                                                "tile_size": 64, "overlap": 32,
                                                                "temporal_size": 64, "temporal_overlap": 8}},
             "dec": {"class_type": "VAEDecodeTiled", "inputs": {"samples": ["enc", 0], "vae": ["ckpt", 2],
                                                                "tile_size": 64, "overlap": 32,
                                                                "temporal_size": 64, "temporal_overlap": 8}},
             "plain": {"class_type": "VAEEncode", "inputs": {"pixels": ["img", 0], "vae": ["ckpt", 2]}},
             "out": capture(["dec", 0]), "lat": capture(["enc", 0]), "ref": capture(["plain", 0])}
    result = env.run(nodes)
    assert result.ok, result.error
    assert result.outputs["out"]["value"][0].shape == (1, IMAGE_SIZE, IMAGE_SIZE, 3)
    # one tile covers the whole 64x64 image, so the tiled encode equals the plain one
    torch.testing.assert_close(result.outputs["lat"]["value"][0]["samples"],
                               result.outputs["ref"]["value"][0]["samples"])


def sdxl_encode(text: str, size: int) -> dict:
    return {"class_type": "CLIPTextEncodeSDXL", "inputs": {
        "clip": ["ckpt", 1], "width": size, "height": size, "crop_w": 0, "crop_h": 0, "target_width": size,
        "target_height": size, "text_g": text, "text_l": text}}


def test_sdxl_size_conditioning_defaults_to_the_latent_size(env):
    plain = {**base_nodes("tiny_sdxl.safetensors"), "empty": empty_latent(),
             "sample": ksampler(["empty", 0]), "out": capture(["sample", 0])}
    explicit = {**plain, "pos": sdxl_encode("a red circle", IMAGE_SIZE), "neg": sdxl_encode("", IMAGE_SIZE)}
    other = {**plain, "pos": sdxl_encode("a red circle", 1024), "neg": sdxl_encode("", 1024)}
    reference = env.capture(plain)["samples"]
    assert torch.equal(env.capture(explicit)["samples"], reference)
    assert not torch.allclose(env.capture(other)["samples"], reference)
