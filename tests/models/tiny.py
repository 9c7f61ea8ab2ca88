"""Tiny random-weight models with each family's structure (fewer channels/layers, same key structure).

Shrinking keeps what detection reads: the number of resolution levels, which levels have attention, the
ADM input (SDXL), linear vs conv ``proj_in``, the in/out channel relation, and the text-encoder slots. Widths
stay multiples of 32 (the families' GroupNorm group count); attention head counts follow the family rules.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from nodes.models.families import FAMILIES, read_config

TEXT_SIZES = {
    "clip_l": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2),
    "open_clip_h": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3),
    "open_clip_g": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, projection_dim=64),
}


def _seeded_randomize(module: torch.nn.Module, seed: int) -> None:
    """Random values everywhere (norm weights/biases too), so a key swap in conversion cannot go unnoticed."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def tiny_text_encoder(family_name: str, index: int, seed: int = 0):
    family = FAMILIES[family_name]
    spec = family.text_encoders[index]
    config = read_config(family.config_dir, spec.subfolder)
    config.update(TEXT_SIZES[spec.kind], vocab_size=1000, num_attention_heads=1)
    config.pop("architectures", None)
    cls = CLIPTextModelWithProjection if spec.model_class == "CLIPTextModelWithProjection" else CLIPTextModel
    model = cls(CLIPTextConfig.from_dict(config))
    _seeded_randomize(model, seed)
    return model.eval()


def tiny_unet_config(family_name: str) -> dict:
    family = FAMILIES[family_name]
    config = read_config(family.config_dir, "unet")
    levels = len(config["block_out_channels"])
    channels = [32, 64, 64, 64][:levels]
    widths = [TEXT_SIZES[s.kind]["hidden_size"] for s in family.text_encoders]
    config.update(block_out_channels=channels, cross_attention_dim=sum(widths), sample_size=8)
    if family.head_rule == "head_dim_64":
        config["attention_head_dim"] = [max(1, c // 64) for c in channels]
    if family.base == "sdxl":
        config["transformer_layers_per_block"] = [1, 1, 2]  # keeps "deeper at the last level", like [1, 2, 10]
    if family.base == "sdxl_refiner":
        config["transformer_layers_per_block"] = [2, 2, 2, 2]
    if config.get("addition_embed_type") == "text_time":
        time_ids = 6 if family.base == "sdxl" else 5
        pooled = TEXT_SIZES["open_clip_g"]["projection_dim"]
        config["projection_class_embeddings_input_dim"] = pooled + time_ids * config["addition_time_embed_dim"]
    return config


def tiny_vae(seed: int = 0, family_name: str = "sd15") -> AutoencoderKL:
    config = read_config(FAMILIES[family_name].config_dir, "vae")
    config.update(block_out_channels=[32, 32, 64, 64], layers_per_block=1, sample_size=32)
    vae = AutoencoderKL.from_config(config)
    _seeded_randomize(vae, seed)
    return vae.eval()


def tiny_family_models(family_name: str, seed: int = 0):
    unet = UNet2DConditionModel.from_config(tiny_unet_config(family_name))
    _seeded_randomize(unet, seed)
    slots = range(len(FAMILIES[family_name].text_encoders))
    encoders = [tiny_text_encoder(family_name, i, seed + 1 + i) for i in slots]
    return unet.eval(), tiny_vae(seed + 10, family_name), encoders


DEMO_UNET = dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(64, 128, 128), layers_per_block=1,
                 down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                 cross_attention_dim=128, attention_head_dim=4)
DEMO_VAE = dict(block_out_channels=(16, 32, 64, 64), layers_per_block=1, norm_num_groups=16, latent_channels=4,
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                sample_size=64, scaling_factor=0.5232)
DEMO_TEXT = dict(hidden_size=128, num_hidden_layers=3, num_attention_heads=4, intermediate_size=512,
                 hidden_act="quick_gelu", vocab_size=49408, max_position_embeddings=77,
                 bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)


def demo_models(seed: int = 0):
    """The bundled demo model's architecture (random weights)."""
    unet = UNet2DConditionModel(**DEMO_UNET)
    vae = AutoencoderKL(**DEMO_VAE)
    text = CLIPTextModel(CLIPTextConfig(**DEMO_TEXT))
    for i, m in enumerate((unet, vae, text)):
        _seeded_randomize(m, seed + i)
    return unet.eval(), vae.eval(), text.eval()


def assert_same_weights(expected: torch.nn.Module, actual: torch.nn.Module) -> None:
    a, b = expected.state_dict(), actual.state_dict()
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))[:10]
    different = [k for k in a if a[k].shape != b[k].shape or not torch.equal(a[k], b[k])]
    assert not different, different[:10]
