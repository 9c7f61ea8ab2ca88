"""save_checkpoint (diffusers -> original layout, our mapping) then load_checkpoint (diffusers' converters):
every family is detected from its tiny model and every weight comes back bit-identical; forwards match too,
which checks the configs derived from the weights (heads, activations, depths)."""

from __future__ import annotations

import json

import pytest
import torch

from nodes.models import (
    FAMILIES, ModelFileError, load_checkpoint, load_text_encoder, load_unet, load_vae, save_checkpoint,
)
from nodes.models.attention import uses_sdpa
from nodes.models.families import CUSTOM_CONFIG_KEY
from nodes.models.export import original_state_dict
from nodes.models.ldm_layout import vae_to_original
from nodes.models.state_dict import read_state_dict, write_safetensors

from .tiny import DEMO_TEXT, assert_same_weights, demo_models, tiny_family_models, tiny_vae

EXPECTED = {
    "sd15": ("epsilon", 0.18215, 4, ("clip_l",)),
    "sd15_inpaint": ("epsilon", 0.18215, 9, ("clip_l",)),
    "sd2": ("epsilon", 0.18215, 4, ("open_clip_h",)),
    "sd2_v": ("v_prediction", 0.18215, 4, ("open_clip_h",)),
    "sd2_inpaint": ("epsilon", 0.18215, 9, ("open_clip_h",)),
    "sd2_depth": ("epsilon", 0.18215, 5, ("open_clip_h",)),
    "sd2_unclip": ("v_prediction", 0.18215, 4, ("open_clip_h",)),
    "sdxl": ("epsilon", 0.13025, 4, ("clip_l", "open_clip_g")),
    "sdxl_inpaint": ("epsilon", 0.13025, 9, ("clip_l", "open_clip_g")),
    "sdxl_refiner": ("epsilon", 0.13025, 4, ("open_clip_g",)),
    "sd15_ip2p": ("epsilon", 0.18215, 8, ("clip_l",)),
    "sdxl_ip2p": ("epsilon", 0.13025, 8, ("clip_l", "open_clip_g")),
}


def _unet_inputs(unet, text_width: int):
    g = torch.Generator().manual_seed(1)
    sample = torch.randn(1, unet.config.in_channels, 8, 8, generator=g)
    context = torch.randn(1, 5, unet.config.cross_attention_dim, generator=g)
    extra = {}
    if unet.config.class_embed_type == "projection":  # unCLIP: image embedding + noise level as class labels
        extra["class_labels"] = torch.randn(1, unet.config.projection_class_embeddings_input_dim, generator=g)
    if unet.config.addition_embed_type == "text_time":
        n_ids = (unet.config.projection_class_embeddings_input_dim - text_width) // unet.config.addition_time_embed_dim
        extra["added_cond_kwargs"] = {"text_embeds": torch.randn(1, text_width, generator=g),
                                      "time_ids": torch.randn(1, n_ids, generator=g) * 100}
    return sample, torch.tensor([500]), context, extra


def _assert_same_forward(unet_a, unet_b, encoders_a, encoders_b, vae_a, vae_b):
    with torch.no_grad():
        sample, t, context, extra = _unet_inputs(unet_a, 64)
        expected = unet_a(sample, t, context, **extra).sample
        torch.testing.assert_close(unet_b(sample, t, context, **extra).sample, expected)
        ids = torch.tensor([[49406 % 1000, 5, 17, 999]])
        for a, b in zip(encoders_a, encoders_b):
            out_a, out_b = a(ids, output_hidden_states=True), b(ids, output_hidden_states=True)
            torch.testing.assert_close(out_b.hidden_states[-1], out_a.hidden_states[-1])
        latent = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(2))
        torch.testing.assert_close(vae_b.decode(latent).sample, vae_a.decode(latent).sample)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_round_trip(tmp_path, family):
    unet, vae, encoders = tiny_family_models(family, seed=len(family))
    path = save_checkpoint(tmp_path / f"{family}.safetensors", unet, vae, encoders, family)
    loaded = load_checkpoint(path)

    prediction, scale, in_channels, kinds = EXPECTED[family]
    assert loaded.family.name == family
    assert (loaded.prediction_type, loaded.latent_scale_factor) == (prediction, scale)
    assert loaded.family.in_channels == in_channels == loaded.unet.config.in_channels
    assert tuple(te.kind for te in loaded.text_encoders) == kinds
    assert loaded.scheduler_config["prediction_type"] == prediction
    assert_same_weights(unet, loaded.unet)
    assert_same_weights(vae, loaded.vae)
    for original, te in zip(encoders, loaded.text_encoders, strict=True):
        assert type(te.model) is type(original)
        assert_same_weights(original, te.model)
    assert all(uses_sdpa(m) for m in (loaded.unet, loaded.vae, *(te.model for te in loaded.text_encoders)))
    _assert_same_forward(unet, loaded.unet, encoders, [te.model for te in loaded.text_encoders], vae, loaded.vae)


def test_tokenizers_pad_like_their_encoders(tmp_path):
    unet, vae, encoders = tiny_family_models("sdxl")
    loaded = load_checkpoint(save_checkpoint(tmp_path / "xl.safetensors", unet, vae, encoders, "sdxl"))
    clip_l, clip_g = loaded.tokenizers
    assert clip_l("a cat", padding="max_length", max_length=6).input_ids == [49406, 320, 2368, 49407, 49407, 49407]
    assert clip_g("a cat", padding="max_length", max_length=6).input_ids == [49406, 320, 2368, 49407, 0, 0]


WELL_KNOWN_KEYS = {
    "sdxl": ("model.diffusion_model.input_blocks.0.0.weight", "model.diffusion_model.label_emb.0.0.weight",
             "model.diffusion_model.input_blocks.3.0.op.weight", "model.diffusion_model.middle_block.1.proj_in.weight",
             "model.diffusion_model.output_blocks.2.2.conv.weight",
             "model.diffusion_model.output_blocks.5.2.conv.weight",
             "model.diffusion_model.out.2.weight", "first_stage_model.encoder.down.0.block.0.norm1.weight",
             "first_stage_model.decoder.up.3.upsample.conv.weight", "first_stage_model.encoder.mid.attn_1.q.weight",
             "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight",
             "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight",
             "conditioner.embedders.1.model.text_projection", "conditioner.embedders.1.model.positional_embedding"),
    "sd15": ("model.diffusion_model.output_blocks.2.1.conv.weight",
             "model.diffusion_model.input_blocks.1.1.proj_in.weight",
             "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.norm1.bias",
             "model.diffusion_model.input_blocks.4.0.skip_connection.weight", "model.diffusion_model.time_embed.2.bias",
             "first_stage_model.decoder.mid.block_2.conv2.weight",
             "first_stage_model.encoder.down.2.block.0.nin_shortcut.weight",
             "cond_stage_model.transformer.text_model.final_layer_norm.weight"),
    "sd2": ("cond_stage_model.model.ln_final.weight",
            "cond_stage_model.model.transformer.resblocks.2.mlp.c_proj.weight",
            "cond_stage_model.model.token_embedding.weight"),
}


@pytest.mark.parametrize("family", list(WELL_KNOWN_KEYS))
def test_original_layout_key_names(family):
    """Spot-check the written layout against well-known original key names (and shapes of 1x1-conv attention)."""
    unet, vae, encoders = tiny_family_models(family)
    sd = original_state_dict(unet, vae, encoders, FAMILIES[family].text_encoders)
    missing = [k for k in WELL_KNOWN_KEYS[family] if k not in sd]
    assert not missing
    if family == "sd15":
        assert sd["first_stage_model.encoder.mid.attn_1.q.weight"].ndim == 4
        assert sd["model.diffusion_model.input_blocks.1.1.proj_in.weight"].ndim == 4


def test_ckpt_fp16_and_components(tmp_path):
    unet, vae, encoders = tiny_family_models("sd15")
    path = save_checkpoint(tmp_path / "half.ckpt", unet, vae, encoders, "sd15", dtype=torch.float16)
    loaded = load_checkpoint(path, components=("unet",))
    assert loaded.vae is None and loaded.text_encoders == []
    assert loaded.unet.dtype == torch.float32  # CPU policy: upcast on load
    assert_same_weights(unet.half().float(), loaded.unet)


def test_custom_demo_model_loads_from_one_file(tmp_path):
    unet, vae, text = demo_models()
    path = save_checkpoint(tmp_path / "demo.safetensors", unet, vae, [text], "custom")
    config = json.loads(read_state_dict(path)[1][CUSTOM_CONFIG_KEY])
    assert config["unet"]["block_out_channels"] == [64, 128, 128]
    loaded = load_checkpoint(path)
    assert loaded.family.name == "custom"
    assert loaded.latent_scale_factor == pytest.approx(0.5232)
    assert loaded.vae.config.norm_num_groups == 16
    assert loaded.text_encoders[0].model.config.hidden_size == DEMO_TEXT["hidden_size"]
    assert loaded.text_encoders[0].spec.layer == -1 and loaded.text_encoders[0].spec.final_norm
    assert_same_weights(unet, loaded.unet)
    assert_same_weights(vae, loaded.vae)
    assert_same_weights(text, loaded.text_encoders[0].model)
    with torch.no_grad():
        ids = loaded.tokenizers[0]("a red circle", padding="max_length", max_length=77, return_tensors="pt").input_ids
        torch.testing.assert_close(loaded.text_encoders[0].model(ids).last_hidden_state, text(ids).last_hidden_state)


def test_components_load_alone(tmp_path):
    unet, vae, encoders = tiny_family_models("sdxl")
    full = save_checkpoint(tmp_path / "xl.safetensors", unet, vae, encoders, "sdxl")

    alone = load_unet(full)
    assert alone.family.name == "sdxl" and alone.vae is None
    assert_same_weights(unet, alone.unet)
    write_safetensors(tmp_path / "unet_diffusers.safetensors", unet.state_dict())
    assert_same_weights(unet, load_unet(tmp_path / "unet_diffusers.safetensors").unet)
    assert load_unet(tmp_path / "unet_diffusers.safetensors").family.name == "sdxl"

    assert_same_weights(vae, load_vae(full))
    write_safetensors(tmp_path / "vae_ldm.safetensors", vae_to_original(vae.state_dict()))
    write_safetensors(tmp_path / "vae_diffusers.safetensors", vae.state_dict())
    assert_same_weights(vae, load_vae(tmp_path / "vae_ldm.safetensors"))
    assert_same_weights(vae, load_vae(tmp_path / "vae_diffusers.safetensors"))

    g = load_text_encoder(full, kind="open_clip_g")
    assert g.spec.pooled and g.tokenizer.pad_token == "!"
    assert_same_weights(encoders[1], g.model)
    with pytest.raises(ModelFileError, match="pass kind"):
        load_text_encoder(full)
    write_safetensors(tmp_path / "clip_l.safetensors", encoders[0].state_dict())
    standalone = load_text_encoder(tmp_path / "clip_l.safetensors", kind="clip_l")
    assert_same_weights(encoders[0], standalone.model)


def test_vae_only_file_is_not_a_checkpoint(tmp_path):
    write_safetensors(tmp_path / "vae.safetensors", vae_to_original(tiny_vae().state_dict()))
    with pytest.raises(ModelFileError, match="vae.safetensors"):
        load_checkpoint(tmp_path / "vae.safetensors")
