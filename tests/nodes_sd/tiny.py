"""Tiny random-weight SD1.x-layout models (and their inpaint / depth variants) for fast CPU tests.

Structure follows the real families (4 UNet levels with attention on the first three, 1x1-conv proj_in, 8x VAE,
CLIP-L style text encoder, 32 norm groups) so that family detection treats them like the real ones; only widths
are shrunk.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

CONTEXT_DIM = 32
SDXL_G_DIM = 64


def tiny_unet(in_channels: int = 4, seed: int = 0, sdxl: bool = False) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    if sdxl:
        return UNet2DConditionModel(
            sample_size=8, in_channels=in_channels, out_channels=4, block_out_channels=(16, 32),
            layers_per_block=1, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=CONTEXT_DIM,
            attention_head_dim=4, norm_num_groups=8, addition_embed_type="text_time", addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=CONTEXT_DIM + 6 * 8, use_linear_projection=True,
        ).eval()
    return UNet2DConditionModel(
        sample_size=8, in_channels=in_channels, out_channels=4, block_out_channels=(32, 32, 64, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=CONTEXT_DIM, attention_head_dim=8, norm_num_groups=32,
    ).eval()


def tiny_vae(seed: int = 1) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=(32, 32, 32, 32), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, norm_num_groups=32, layers_per_block=1,
    ).eval()


def tiny_text_encoder(seed: int = 2) -> CLIPTextModel:
    torch.manual_seed(seed)
    config = CLIPTextConfig(vocab_size=49408, hidden_size=CONTEXT_DIM, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=2, max_position_embeddings=77, hidden_act="quick_gelu",
                            bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
    return CLIPTextModel(config).eval()


def tiny_dpt(seed: int = 5):
    """A tiny transformers DPT depth model and a matching image processor (32x32 input)."""
    from transformers import DPTConfig, DPTForDepthEstimation
    from transformers.models.dpt.image_processing_pil_dpt import DPTImageProcessorPil

    torch.manual_seed(seed)
    config = DPTConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=37,
                       image_size=32, patch_size=8, backbone_out_indices=[0, 1, 2, 3],
                       neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16, head_hidden_size=8,
                       reassemble_factors=[4, 2, 1, 0.5])
    processor = DPTImageProcessorPil(size={"height": 32, "width": 32}, keep_aspect_ratio=False, ensure_multiple_of=8)
    return DPTForDepthEstimation(config).eval(), processor


def tiny_sdxl_unet(seed: int = 6) -> UNet2DConditionModel:
    """SDXL-base layout (3 levels, attention on the last two, linear proj_in, 6 × 256-wide time ids)."""
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(64, 64, 128), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=CONTEXT_DIM + SDXL_G_DIM, attention_head_dim=[1, 1, 2], transformer_layers_per_block=1,
        norm_num_groups=32, addition_embed_type="text_time", addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=SDXL_G_DIM + 6 * 256, use_linear_projection=True,
    ).eval()


def tiny_clip_g(seed: int = 7):
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(seed)
    config = CLIPTextConfig(vocab_size=49408, hidden_size=SDXL_G_DIM, intermediate_size=128, num_hidden_layers=2,
                            num_attention_heads=1, max_position_embeddings=77, hidden_act="gelu",
                            projection_dim=SDXL_G_DIM, bos_token_id=49406, eos_token_id=49407, pad_token_id=0)
    return CLIPTextModelWithProjection(config).eval()
