"""Component configs = the family's shipped config with every size read from the weights.

Sizes that the weights fix (channels, depths, context width, vocabulary...) are taken from the tensors, so any
model with a family's structure loads, whatever its width. What weights cannot tell (activation, norm groups,
attention head counts) comes from the family: SD1 uses 8 heads; SD2/SDXL UNets and all CLIP text towers use
64-channel heads (at least one head).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping

import torch

from .detect import UnetStructure
from .errors import ModelFileError


def _heads(channels: int) -> int:
    return max(1, channels // 64)


def derive_unet_config(base: Mapping, s: UnetStructure, head_rule: str) -> dict:
    config = copy.deepcopy(dict(base))
    levels = len(s.level_channels)
    # diffusers uses the last level's entry for the mid block; levels without attention get a placeholder
    depths = [d if d else 1 for d in s.transformer_depths]
    if not s.attention_levels[-1]:
        depths[-1] = s.mid_transformer_depth or 1
    elif s.mid_transformer_depth and depths[-1] != s.mid_transformer_depth:
        raise ModelFileError(
            f"unsupported UNet: last level depth {depths[-1]} != mid block depth {s.mid_transformer_depth}"
        )
    config.update(
        in_channels=s.in_channels,
        out_channels=s.out_channels,
        block_out_channels=list(s.level_channels),
        layers_per_block=s.layers_per_block,
        down_block_types=["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in s.attention_levels],
        up_block_types=["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(s.attention_levels)],
        transformer_layers_per_block=depths,
    )
    if s.context_dim is not None:
        config["cross_attention_dim"] = s.context_dim
    if s.linear_projection is not None:
        config["use_linear_projection"] = s.linear_projection
    if s.adm_in_channels is not None:
        if config.get("addition_embed_type") != "text_time" and config.get("class_embed_type") != "projection":
            raise ModelFileError("UNet has an ADM input (label_emb) but the family config has none")
        config["projection_class_embeddings_input_dim"] = s.adm_in_channels
    if head_rule == "head_dim_64":
        config["attention_head_dim"] = [_heads(c) for c in s.level_channels]
    if levels != len(config["down_block_types"]):
        raise ModelFileError("internal: level count mismatch")
    return config


def derive_vae_config(base: Mapping, sd: Mapping[str, torch.Tensor]) -> dict:
    """From LDM first-stage keys (prefix removed)."""
    try:
        levels = sorted({int(m.group(1)) for k in sd if (m := re.match(r"^encoder\.down\.(\d+)\.", k))})
        blocks = {int(m.group(1)) for k in sd if (m := re.match(r"^encoder\.down\.0\.block\.(\d+)\.", k))}
        channels = [int(sd[f"encoder.down.{i}.block.0.conv1.weight"].shape[0]) for i in levels]
        config = copy.deepcopy(dict(base))
        config.update(
            in_channels=int(sd["encoder.conv_in.weight"].shape[1]),
            out_channels=int(sd["decoder.conv_out.weight"].shape[0]),
            latent_channels=int(sd["decoder.conv_in.weight"].shape[1]),
            block_out_channels=channels,
            layers_per_block=len(blocks),
            down_block_types=["DownEncoderBlock2D"] * len(levels),
            up_block_types=["UpDecoderBlock2D"] * len(levels),
        )
    except KeyError as e:
        raise ModelFileError(f"not an LDM VAE: missing {e.args[0]!r}") from None
    if not levels:
        raise ModelFileError("not an LDM VAE: no encoder.down.* blocks")
    return config


def derive_text_config(base: Mapping, sd: Mapping[str, torch.Tensor]) -> dict:
    """From transformers CLIP text keys (``text_model.*`` form)."""
    try:
        tokens = sd["text_model.embeddings.token_embedding.weight"]
        positions = sd["text_model.embeddings.position_embedding.weight"]
        fc1 = sd["text_model.encoder.layers.0.mlp.fc1.weight"]
    except KeyError as e:
        raise ModelFileError(f"not a CLIP text encoder: missing {e.args[0]!r}") from None
    layers = {int(m.group(1)) for k in sd if (m := re.match(r"^text_model\.encoder\.layers\.(\d+)\.", k))}
    config = copy.deepcopy(dict(base))
    hidden = int(tokens.shape[1])
    config.update(
        vocab_size=int(tokens.shape[0]),
        hidden_size=hidden,
        max_position_embeddings=int(positions.shape[0]),
        intermediate_size=int(fc1.shape[0]),
        num_hidden_layers=len(layers),
        num_attention_heads=_heads(hidden),
    )
    if "text_projection.weight" in sd:
        config["projection_dim"] = int(sd["text_projection.weight"].shape[0])
    return config
