"""CLIP vision, style models and unCLIP through the real executor, on tiny random models in the real key layouts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from nodes.clip_vision import clip_preprocess
from nodes.models.clip_vision import load_clip_vision, vision_config
from nodes.models.errors import ModelFileError
from nodes.models.state_dict import write_safetensors

from ..models.tiny import assert_same_weights
from .test_pipeline import base_nodes, capture, empty_latent, ksampler, load_image
from .vision_files import (PROJECTION_DIM, VISION_WIDTH, open_clip_layout, style_adapter_weights, tiny_vision,
                           write_unclip_checkpoint)

UNCLIP = "tiny_unclip.safetensors"


@pytest.fixture(scope="module")
def files(env):
    models = env.base / "models"
    for sub in ("clip_vision", "style_models"):
        (models / sub).mkdir(exist_ok=True)
    hf, open_clip = tiny_vision(20), tiny_vision(21, act="gelu")
    write_safetensors(models / "clip_vision" / "tiny_hf.safetensors", hf.state_dict())
    write_safetensors(models / "clip_vision" / "tiny_open_clip.safetensors", open_clip_layout(open_clip))
    write_safetensors(models / "style_models" / "tiny_style.safetensors", style_adapter_weights())
    unclip_vision = write_unclip_checkpoint(models / "checkpoints" / UNCLIP)
    image = np.random.default_rng(1).integers(0, 255, (48, 80, 3), dtype=np.uint8)
    PILImage.fromarray(image).save(env.base / "input" / "wide.png")
    return {"hf": hf, "open_clip": open_clip, "unclip": unclip_vision}


def encode(image: str = "scene.png", crop: str = "center", clip_name: str = "tiny_hf.safetensors") -> dict:
    return {"cv": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": clip_name}},
            "img": load_image(image),
            "enc": {"class_type": "CLIPVisionEncode", "inputs": {"clip_vision": ["cv", 0], "image": ["img", 0],
                                                                 "crop": crop}}}


# -- loading ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, key", [("tiny_hf.safetensors", "hf"), ("tiny_open_clip.safetensors", "open_clip")])
def test_loader_reads_both_layouts_into_the_same_weights(env, files, name, key):
    loaded = load_clip_vision(env.base / "models" / "clip_vision" / name)
    assert_same_weights(files[key], loaded)
    assert loaded.config.hidden_act == files[key].config.hidden_act  # transformers: quick_gelu, OpenCLIP: gelu
    pixels = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(loaded(pixel_values=pixels).image_embeds, files[key](pixel_values=pixels).image_embeds,
                              atol=1e-6)


def shapes(width: int, layers: int, mlp: int, projection: int, patch: int = 14, grid: int = 16) -> dict:
    meta = {"vision_model.embeddings.class_embedding": (width,),
            "vision_model.embeddings.patch_embedding.weight": (width, 3, patch, patch),
            "vision_model.embeddings.position_embedding.weight": (grid * grid + 1, width),
            "visual_projection.weight": (projection, width)}
    meta.update({f"vision_model.encoder.layers.{i}.mlp.fc1.weight": (mlp, width) for i in range(layers)})
    return {k: torch.empty(v, device="meta") for k, v in meta.items()}


@pytest.mark.parametrize("dims, name, act, image_size", [
    ((1024, 24, 4096, 768), "vit_l14", "quick_gelu", 224), ((1280, 32, 5120, 1024), "vit_h14", "gelu", 224),
    ((1664, 48, 8192, 1280), "vit_bigg14", "gelu", 224), ((1024, 24, 4096, 768, 14, 24), "vit_l14", "quick_gelu", 336)])
def test_published_sizes_get_their_configs(dims, name, act, image_size):
    config, picked = vision_config(shapes(*dims), "open_clip")
    assert picked == name and config["hidden_act"] == act and config["num_attention_heads"] == 16
    assert (config["hidden_size"], config["num_hidden_layers"], config["intermediate_size"],
            config["projection_dim"]) == dims[:4]
    assert config["image_size"] == image_size and config["patch_size"] == 14


def test_a_file_without_a_vision_tower_is_a_clear_error(env, files):
    with pytest.raises(ModelFileError, match=r"tiny_vae.safetensors: not a CLIP vision model"):
        load_clip_vision(env.base / "models" / "vae" / "tiny_vae.safetensors")
    write_safetensors(env.base / "models" / "clip_vision" / "not_vision.safetensors", style_adapter_weights())
    result = env.run({**encode(clip_name="not_vision.safetensors"), "out": capture(["enc", 0])})
    assert not result.ok and result.error["node_type"] == "CLIPVisionLoader"
    assert "not_vision.safetensors: not a CLIP vision model" in result.error["exception_message"]


# -- encoding --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("image", ["scene.png", "wide.png"])
def test_encode_gives_embeddings_and_hidden_states_per_image(env, files, image):
    out = env.capture({**encode(image), "out": capture(["enc", 0])})
    tokens = 7 * 7 + 1
    assert out.image_embeds.shape == (1, PROJECTION_DIM)
    assert out.last_hidden_state.shape == out.penultimate_hidden_states.shape == (1, tokens, VISION_WIDTH)
    assert out["image_embeds"] is out.image_embeds
    pixels = torch.from_numpy(np.array(PILImage.open(env.base / "input" / image).convert("RGB"))) / 255.0
    with torch.no_grad():
        direct = files["hf"](pixel_values=clip_preprocess(pixels[None].float(), 224, True),
                             output_hidden_states=True)
    assert torch.allclose(out.image_embeds, direct.image_embeds, atol=1e-5)
    assert torch.allclose(out.penultimate_hidden_states, direct.hidden_states[-2], atol=1e-5)


def test_crop_none_stretches_a_wide_image_and_differs_from_center(env, files):
    center = env.capture({**encode("wide.png", "center"), "out": capture(["enc", 0])})
    stretched = env.capture({**encode("wide.png", "none"), "out": capture(["enc", 0])})
    assert not torch.allclose(center.image_embeds, stretched.image_embeds, atol=1e-4)


@pytest.mark.parametrize("crop", [True, False])
def test_preprocessing_matches_transformers_image_processor(crop):
    from transformers import CLIPImageProcessor

    rgb = np.random.default_rng(3).integers(0, 255, (120, 200, 3), dtype=np.uint8)
    rgb = (np.clip(rgb.astype(float) * 0.3 + 90, 0, 255)).astype(np.uint8)  # smooth-ish values: resampling agrees
    size = {"shortest_edge": 224} if crop else {"height": 224, "width": 224}
    processor = CLIPImageProcessor(size=size, crop_size={"height": 224, "width": 224}, do_center_crop=crop)
    reference = torch.from_numpy(np.asarray(processor(images=PILImage.fromarray(rgb))["pixel_values"][0]))
    ours = clip_preprocess(torch.from_numpy(rgb)[None].float() / 255.0, 224, crop)[0]
    assert ours.shape == reference.shape == (3, 224, 224)
    # PIL's and torch's antialiased bicubic differ by a grey level or two; a shifted crop or a missing
    # normalisation would be off by far more (the normalised values span about ±2)
    assert (ours - reference).abs().mean() < 0.01 and (ours - reference).abs().max() < 0.05


# -- style models ----------------------------------------------------------------------------------------------------

def styled(strength: float = 1.0, strength_type: str = "multiply", image: str = "scene.png") -> dict:
    return {**encode(image), **base_nodes(),
            "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red circle", "clip": ["ckpt", 1]}},
            "sm": {"class_type": "StyleModelLoader", "inputs": {"style_model_name": "tiny_style.safetensors"}},
            "apply": {"class_type": "StyleModelApply", "inputs": {
                "conditioning": ["pos", 0], "style_model": ["sm", 0], "clip_vision_output": ["enc", 0],
                "strength": strength, "strength_type": strength_type}},
            "out": capture(["apply", 0]), "text": capture(["pos", 0])}


def test_style_model_appends_its_tokens_to_the_text_tokens(env, files):
    result = env.run(styled())
    assert result.ok, result.error
    (text, _), = result.outputs["text"]["value"][0]
    (cond, extras), = result.outputs["out"]["value"][0]
    assert cond.shape == (1, 77 + 3, 32)  # three style tokens, 32 wide like the tiny SD1 text encoder
    assert torch.equal(cond[:, :77], text) and "pooled_output" in extras
    half = env.capture(styled(0.5))
    assert torch.allclose(half[0][0][:, 77:], cond[:, 77:] * 0.5, atol=1e-6)
    assert torch.equal(env.capture(styled(0.5, "attn_bias"))[0][0], cond)


def test_style_tokens_follow_the_adapter_math(env, files):
    """A hand-written forward pass of the adapter file's weights (packed attention, QuickGELU MLP)."""
    sd = style_adapter_weights()
    vision = env.capture({**encode(), "out": capture(["enc", 0])})
    x = torch.cat([vision.last_hidden_state, sd["style_embedding"]], dim=1)
    x = torch.nn.functional.layer_norm(x, (VISION_WIDTH,), sd["ln_pre.weight"], sd["ln_pre.bias"])
    for i in range(2):
        p = f"transformer_layes.{i}."
        h = torch.nn.functional.layer_norm(x, (VISION_WIDTH,), sd[p + "ln_1.weight"], sd[p + "ln_1.bias"])
        q, k, v = (h @ sd[p + "attn.in_proj_weight"].t() + sd[p + "attn.in_proj_bias"]).chunk(3, dim=-1)
        attn = torch.softmax(q @ k.transpose(1, 2) / VISION_WIDTH ** 0.5, dim=-1) @ v
        x = x + attn @ sd[p + "attn.out_proj.weight"].t() + sd[p + "attn.out_proj.bias"]
        h = torch.nn.functional.layer_norm(x, (VISION_WIDTH,), sd[p + "ln_2.weight"], sd[p + "ln_2.bias"])
        h = h @ sd[p + "mlp.c_fc.weight"].t() + sd[p + "mlp.c_fc.bias"]
        x = x + (h * torch.sigmoid(1.702 * h)) @ sd[p + "mlp.c_proj.weight"].t() + sd[p + "mlp.c_proj.bias"]
    x = torch.nn.functional.layer_norm(x[:, -3:], (VISION_WIDTH,), sd["ln_post.weight"], sd["ln_post.bias"])
    expected = x @ sd["proj"]
    cond = env.capture(styled())[0][0]
    assert torch.allclose(cond[:, 77:], expected, atol=1e-5)


# -- unCLIP -------------------------------------------------------------------------------------------------------------

def unclip_graph(*records: tuple[float, float], seed: int = 3, batch_images: bool = False) -> dict:
    """txt2img with the unCLIP checkpoint; each record = (strength, noise_augmentation) on the positive prompt."""
    nodes = {"ckpt": {"class_type": "unCLIPCheckpointLoader", "inputs": {"ckpt_name": UNCLIP}},
             "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red circle", "clip": ["ckpt", 1]}},
             "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["ckpt", 1]}},
             "img": load_image("wide.png" if batch_images else "scene.png"),
             "enc": {"class_type": "CLIPVisionEncode",
                     "inputs": {"clip_vision": ["ckpt", 3], "image": ["img", 0], "crop": "center"}},
             "empty": empty_latent(size=64)}
    positive = ["pos", 0]
    for i, (strength, noise) in enumerate(records):
        nodes[f"u{i}"] = {"class_type": "unCLIPConditioning", "inputs": {
            "conditioning": positive, "clip_vision_output": ["enc", 0], "strength": strength,
            "noise_augmentation": noise}}
        positive = [f"u{i}", 0]
    nodes["sample"] = ksampler(["empty", 0], seed=seed, pos=positive)
    nodes["out"] = capture(["sample", 0])
    return nodes


def unclip_samples(env, *records, **kw) -> torch.Tensor:
    return env.capture(unclip_graph(*records, **kw))["samples"]


def test_unclip_checkpoint_is_detected_and_brings_its_clip_vision(env, files):
    from nodes.models.single_file import load_checkpoint

    loaded = load_checkpoint(env.base / "models" / "checkpoints" / UNCLIP)
    assert loaded.family.name == "sd2_unclip" and loaded.unet.config.class_embed_type == "projection"
    assert loaded.unet.config.projection_class_embeddings_input_dim == 2 * PROJECTION_DIM
    result = env.run({**unclip_graph(), "vision": capture(["ckpt", 3]), "model": capture(["ckpt", 0])})
    assert result.ok, result.error.get("exception_message")
    vision = result.outputs["vision"]["value"][0]
    assert_same_weights(files["unclip"], vision.model)
    assert vision.model.config.hidden_act == "gelu"  # OpenCLIP-layout tower of unknown width: gelu
    assert result.outputs["model"]["value"][0].unclip.max_noise_level == 1000


def test_unclip_conditioning_reaches_the_unet(env, files):
    plain = unclip_samples(env)
    assert torch.equal(unclip_samples(env, (0.0, 0.0)), plain)  # strength 0: exactly no image
    with_image = unclip_samples(env, (1.0, 0.0))
    assert not torch.allclose(with_image, plain, atol=1e-4)
    assert not torch.allclose(unclip_samples(env, (1.0, 0.5)), with_image, atol=1e-4)  # noise augmentation counts
    assert not torch.allclose(unclip_samples(env, (2.0, 0.0)), with_image, atol=1e-4)  # so does strength
    assert torch.equal(unclip_samples(env, (1.0, 0.0)), with_image)  # and the run repeats itself


def test_unclip_class_labels_follow_comfyuis_formula(env, files):
    """The class-label vector from the noise augmentor, checked against the formula written out here."""
    from diffusers import DDPMScheduler

    result = env.run({**unclip_graph((0.7, 0.25), (0.5, 0.0)), "model": capture(["ckpt", 0]),
                      "cond": capture(["u1", 0]), "embeds": capture(["enc", 0])})
    assert result.ok, result.error
    model, cond = result.outputs["model"]["value"][0], result.outputs["cond"]["value"][0]
    embed = result.outputs["embeds"]["value"][0].image_embeds
    alphas = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2").alphas_cumprod

    def augmented(x: torch.Tensor, level: int) -> torch.Tensor:
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
        half = PROJECTION_DIM // 2
        freqs = torch.exp(-torch.log(torch.tensor(10000.0)) * torch.arange(half) / half)
        level_embedding = torch.cat([torch.cos(level * freqs), torch.sin(level * freqs)])[None]
        return torch.cat([alphas[level].sqrt() * x + (1 - alphas[level]).sqrt() * noise, level_embedding], dim=1)

    summed = augmented(embed, round(999 * 0.25)) * 0.7 + augmented(embed, 0) * 0.5
    expected = augmented(summed[:, :PROJECTION_DIM], 0)  # several records: the sum is augmented again at level 0
    prepared = model.prepare_conditioning(cond, seed=3)
    assert torch.allclose(prepared[0][1]["unclip_adm"], expected, atol=1e-5)
    assert torch.equal(model.prepare_conditioning([[cond[0][0], {}]], seed=3)[0][1]["unclip_adm"],
                       torch.zeros(1, 2 * PROJECTION_DIM))


def test_object_info_has_comfyuis_inputs(env):
    info = env.registry.object_info()
    assert info["CLIPVisionEncode"]["input"]["required"]["crop"] == [["center", "none"], {"default": "center"}]
    assert info["unCLIPCheckpointLoader"]["output"] == ["MODEL", "CLIP", "VAE", "CLIP_VISION"]
    unclip = info["unCLIPConditioning"]["input"]["required"]
    assert list(unclip) == ["conditioning", "clip_vision_output", "strength", "noise_augmentation"]
    assert unclip["strength"][1] == {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01}
    assert unclip["noise_augmentation"][1] == {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01}
    style = info["StyleModelApply"]["input"]["required"]
    assert list(style) == ["conditioning", "style_model", "clip_vision_output", "strength", "strength_type"]
    boxes = info["GLIGENTextBoxApply"]["input"]["required"]
    assert list(boxes) == ["conditioning_to", "clip", "gligen_textbox_model", "text", "width", "height", "x", "y"]
    assert boxes["width"][1] == {"default": 64, "min": 8, "max": 16384, "step": 8}
    for loader, folder_input in (("CLIPVisionLoader", "clip_name"), ("StyleModelLoader", "style_model_name"),
                                 ("GLIGENLoader", "gligen_name")):
        assert list(info[loader]["input"]["required"]) == [folder_input]
