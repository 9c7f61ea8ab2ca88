"""Tiny random pixel-space models (diffusers UNet2DModel + DDPMScheduler) for the tests."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

SIZE = 16


def tiny_pixel_unet(seed: int = 0, num_class_embeds: int | None = None) -> UNet2DModel:
    torch.manual_seed(seed)
    return UNet2DModel(sample_size=SIZE, in_channels=3, out_channels=3, block_out_channels=(8, 16),
                       layers_per_block=1, norm_num_groups=4, attention_head_dim=8,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), num_class_embeds=num_class_embeds).eval()


def tiny_scheduler() -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=True)


def scheduler_config(scheduler) -> dict:
    return {"_class_name": type(scheduler).__name__, **dict(scheduler.config)}


def write_pixel_file(path: Path, unet: UNet2DModel, dtype: torch.dtype = torch.float32) -> None:
    from nodes.models.pixel_unet import save_pixel_unet

    path.parent.mkdir(parents=True, exist_ok=True)
    save_pixel_unet(path, unet, scheduler_config(tiny_scheduler()), dtype=dtype)


def write_ddpm_folder(path: Path, unet: UNet2DModel) -> DDPMPipeline:
    pipeline = DDPMPipeline(unet=unet, scheduler=tiny_scheduler())
    pipeline.save_pretrained(path, safe_serialization=True)
    return pipeline
