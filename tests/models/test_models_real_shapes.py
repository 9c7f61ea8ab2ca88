"""Real-size architectures, built on the meta device (no memory, no weights): the shipped family configs give
the well-known original key names and shapes, detection recognises them, and the configs derived back from those
shapes equal the shipped ones. This checks the architecture facts in nodes/configs without any real checkpoint."""

from __future__ import annotations

import pytest
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from nodes.models import FAMILIES, detect_checkpoint
from nodes.models.derive import derive_text_config, derive_unet_config, derive_vae_config
from nodes.models.detect import strip_prefix
from nodes.models.export import original_state_dict
from nodes.models.families import read_config
from nodes.models.ldm_layout import hf_clip_keys

KNOWN_SHAPES = {
    "sd15": {"model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3),
             "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 768),
             "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.norm1.bias": (320,),
             "first_stage_model.encoder.down.3.block.1.conv2.weight": (512, 512, 3, 3),
             "first_stage_model.quant_conv.weight": (8, 8, 1, 1),
             "cond_stage_model.transformer.text_model.encoder.layers.11.mlp.fc1.weight": (3072, 768)},
    "sd2_v": {"model.diffusion_model.input_blocks.1.1.proj_in.weight": (320, 320),
              "model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight": (320, 1024),
              "cond_stage_model.model.transformer.resblocks.23.attn.in_proj_weight": (3072, 1024),
              "cond_stage_model.model.positional_embedding": (77, 1024)},
    "sd2_depth": {"model.diffusion_model.input_blocks.0.0.weight": (320, 5, 3, 3)},
    "sd15_inpaint": {"model.diffusion_model.input_blocks.0.0.weight": (320, 9, 3, 3)},
    "sdxl": {"model.diffusion_model.label_emb.0.0.weight": (1280, 2816),
             "model.diffusion_model.input_blocks.7.1.transformer_blocks.9.attn2.to_k.weight": (1280, 2048),
             "model.diffusion_model.middle_block.1.transformer_blocks.9.ff.net.2.weight": (1280, 5120),
             "model.diffusion_model.output_blocks.8.0.skip_connection.weight": (320, 640, 1, 1),
             "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight": (49408, 768),
             "conditioner.embedders.1.model.transformer.resblocks.31.mlp.c_proj.bias": (1280,),
             "conditioner.embedders.1.model.text_projection": (1280, 1280)},
    "sdxl_refiner": {"model.diffusion_model.label_emb.0.0.weight": (1536, 2560),
                     "model.diffusion_model.input_blocks.0.0.weight": (384, 4, 3, 3),
                     "model.diffusion_model.input_blocks.4.1.transformer_blocks.3.attn2.to_k.weight": (768, 1280),
                     "model.diffusion_model.output_blocks.11.0.out_layers.3.weight": (384, 384, 3, 3),
                     "conditioner.embedders.0.model.transformer.resblocks.31.attn.in_proj_weight": (3840, 1280)},
}
UNET_FACTS = ("in_channels", "block_out_channels", "layers_per_block", "down_block_types", "up_block_types",
              "cross_attention_dim", "use_linear_projection", "attention_head_dim",
              "projection_class_embeddings_input_dim")
TEXT_FACTS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size",
              "max_position_embeddings")


def _meta_models(family):
    config_dir = family.config_dir
    classes = {"CLIPTextModel": CLIPTextModel, "CLIPTextModelWithProjection": CLIPTextModelWithProjection}
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(read_config(config_dir, "unet"))
        vae = AutoencoderKL.from_config(read_config(config_dir, "vae"))
        encoders = [classes[s.model_class](CLIPTextConfig.from_dict(read_config(config_dir, s.subfolder)))
                    for s in family.text_encoders]
    return unet, vae, encoders


@pytest.mark.parametrize("name", list(KNOWN_SHAPES))
def test_real_architectures(name):
    family = FAMILIES[name]
    unet, vae, encoders = _meta_models(family)
    sd = original_state_dict(unet, vae, encoders, family.text_encoders)
    for key, shape in KNOWN_SHAPES[name].items():
        assert tuple(sd[key].shape) == shape, key
    detection = detect_checkpoint(sd, {"graphengine.prediction_type": family.prediction_type})
    assert detection.family.name == name

    shipped = read_config(family.config_dir, "unet")
    derived = derive_unet_config(shipped, detection.unet, family.head_rule)
    for fact in UNET_FACTS:
        assert derived.get(fact) == shipped.get(fact), fact
    levels = detection.unet.attention_levels
    attention_depths = [d for d, a in zip(derived["transformer_layers_per_block"], levels) if a]
    expected = shipped.get("transformer_layers_per_block", 1)
    expected = expected if isinstance(expected, list) else [expected] * len(attention_depths)
    attention_expected = [d for d, a in zip(expected, levels) if a]
    assert attention_depths == attention_expected
    shipped_vae = read_config(family.config_dir, "vae")
    assert derive_vae_config(shipped_vae, strip_prefix(sd, "first_stage_model.")) == shipped_vae
    for spec, model in zip(family.text_encoders, encoders):
        shipped_text = read_config(family.config_dir, spec.subfolder)
        derived_text = derive_text_config(shipped_text, hf_clip_keys(model.state_dict()))
        assert {f: derived_text[f] for f in TEXT_FACTS} == {f: shipped_text[f] for f in TEXT_FACTS}
