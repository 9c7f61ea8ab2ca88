"""Tiny random-weight CLIP vision, style adapter, unCLIP and GLIGEN files in the real key layouts.

The OpenCLIP writer below is the inverse of the loader's conversion, written independently from the layout facts
(packed q/k/v `in_proj`, transposed `proj`), so a loaded model that matches the original proves both directions."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModelWithProjection

VISION_WIDTH = 64  # one 64-channel head: the loader's rule for widths no published model has
PROJECTION_DIM = 24


def _randomize(module: torch.nn.Module, seed: int, scale: float = 0.05) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return module.eval()


def tiny_vision(seed: int = 20, act: str = "quick_gelu", projection_dim: int = PROJECTION_DIM):
    """ViT-style tower: 224 px in 32-px patches (7×7 + 1 tokens), 3 layers."""
    config = CLIPVisionConfig(hidden_size=VISION_WIDTH, intermediate_size=128, num_hidden_layers=3,
                              num_attention_heads=1, image_size=224, patch_size=32, projection_dim=projection_dim,
                              hidden_act=act)
    return _randomize(CLIPVisionModelWithProjection(config), seed, 0.2)


def open_clip_layout(model: CLIPVisionModelWithProjection, prefix: str = "") -> dict[str, torch.Tensor]:
    """transformers names -> OpenCLIP `visual.*` names."""
    sd = model.state_dict()
    out = {"visual.class_embedding": sd["vision_model.embeddings.class_embedding"],
           "visual.conv1.weight": sd["vision_model.embeddings.patch_embedding.weight"],
           "visual.positional_embedding": sd["vision_model.embeddings.position_embedding.weight"],
           "visual.proj": sd["visual_projection.weight"].t().contiguous()}
    for ours, theirs in (("pre_layrnorm", "ln_pre"), ("post_layernorm", "ln_post")):
        for param in ("weight", "bias"):
            out[f"visual.{theirs}.{param}"] = sd[f"vision_model.{ours}.{param}"]
    for i in range(model.config.num_hidden_layers):
        src, dst = f"vision_model.encoder.layers.{i}.", f"visual.transformer.resblocks.{i}."
        for param in ("weight", "bias"):
            out[f"{dst}attn.in_proj_{param}"] = torch.cat([sd[f"{src}self_attn.{n}_proj.{param}"] for n in "qkv"])
            for ours, theirs in (("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"),
                                 ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")):
                out[f"{dst}{theirs}.{param}"] = sd[f"{src}{ours}.{param}"]
    return {prefix + k: v for k, v in out.items()}


def style_adapter_weights(seed: int = 30, width: int = VISION_WIDTH, context_dim: int = 32, tokens: int = 3,
                          layers: int = 2) -> dict[str, torch.Tensor]:
    """A T2I style adapter in its file layout (`transformer_layes.N` with packed attention), random values."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape: int, scale: float = 0.1) -> torch.Tensor:
        return torch.randn(shape, generator=g) * scale

    sd = {"style_embedding": rand(1, tokens, width, scale=1.0), "proj": rand(width, context_dim, scale=0.3)}
    for name in ("ln_pre", "ln_post"):
        sd[f"{name}.weight"], sd[f"{name}.bias"] = 1 + rand(width), rand(width)
    for i in range(layers):
        p = f"transformer_layes.{i}."
        sd.update({p + "attn.in_proj_weight": rand(3 * width, width), p + "attn.in_proj_bias": rand(3 * width),
                   p + "attn.out_proj.weight": rand(width, width), p + "attn.out_proj.bias": rand(width),
                   p + "mlp.c_fc.weight": rand(4 * width, width), p + "mlp.c_fc.bias": rand(4 * width),
                   p + "mlp.c_proj.weight": rand(width, 4 * width), p + "mlp.c_proj.bias": rand(width)})
        for name in ("ln_1", "ln_2"):
            sd[f"{p}{name}.weight"], sd[f"{p}{name}.bias"] = 1 + rand(width), rand(width)
    return sd


def tiny_open_clip_h_text(seed: int = 40) -> CLIPTextModel:
    config = CLIPTextConfig(vocab_size=49408, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                            num_attention_heads=1, max_position_embeddings=77, hidden_act="gelu",
                            bos_token_id=49406, eos_token_id=49407, pad_token_id=0)
    return _randomize(CLIPTextModel(config), seed)


def write_unclip_checkpoint(path: Path, seed: int = 50) -> CLIPVisionModelWithProjection:
    """An SD2.1-unCLIP-layout checkpoint: UNet with `label_emb` (2 × embedding width), OpenCLIP-H text encoder,
    VAE, `noise_augmentor.*` buffers and an OpenCLIP vision tower under `embedder.model.visual.`."""
    from diffusers import DDPMScheduler, UNet2DConditionModel

    from nodes.models.export import save_checkpoint
    from nodes.models.state_dict import read_state_dict, write_safetensors

    from ..models.tiny import tiny_unet_config
    from .tiny import tiny_vae

    config = tiny_unet_config("sd2_unclip")
    config.update(projection_class_embeddings_input_dim=2 * PROJECTION_DIM, upcast_attention=False)
    unet = _randomize(UNet2DConditionModel.from_config(config), seed)
    save_checkpoint(path, unet, tiny_vae(), [tiny_open_clip_h_text()], "sd2_unclip", prediction_type="epsilon")
    sd, metadata = read_state_dict(path)
    vision = tiny_vision(seed + 1, act="gelu")
    sd.update(open_clip_layout(vision, "embedder.model."))
    alphas = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2").alphas_cumprod
    sd["noise_augmentor.alphas_cumprod"] = alphas
    write_safetensors(path, sd, metadata)
    return vision


def gated_reference_unet(base, seed: int = 60):
    """diffusers' own GLIGEN UNet (`attention_type="gated"`) with `base`'s weights and random gated layers of one
    64-channel-or-narrower head each (the loader's head rule for non-SD1 widths)."""
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention import GatedSelfAttentionDense

    from nodes.gligen import transformer_blocks

    config = {k: v for k, v in base.config.items() if k != "_use_default_values"}  # else defaults win again
    gated = UNet2DConditionModel.from_config({**config, "attention_type": "gated"})
    missing, unexpected = gated.load_state_dict(base.state_dict(), strict=False)
    assert not unexpected and all(".fuser." in k or k.startswith("position_net.") for k in missing)
    context = base.config.cross_attention_dim
    for block in transformer_blocks(gated):
        dim = block.norm1.normalized_shape[0]
        block.fuser = GatedSelfAttentionDense(dim, context, max(1, dim // 64), dim // max(1, dim // 64))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in gated.named_parameters():
            if ".fuser." in name or name.startswith("position_net."):
                p.copy_(torch.randn(p.shape, generator=g) * (0.8 if name.endswith(("alpha_attn", "alpha_dense"))
                                                               else 0.2))
    return gated.eval()


def gligen_file_weights(gated) -> dict[str, torch.Tensor]:
    """A gated UNet's GLIGEN layers in the GLIGEN file layout (LDM block names, `position_net.*`)."""
    from nodes.models.ldm_layout import unet_to_original

    sd = gated.state_dict()
    fusers = unet_to_original({k: v for k, v in sd.items() if ".fuser." in k}, gated.config.layers_per_block)
    return {**fusers, **{k: v for k, v in sd.items() if k.startswith("position_net.")}}
