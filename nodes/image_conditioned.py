"""Conditioning nodes of the UNet families that take an image as extra input channels: InstructPix2Pix (8
channels: the latent plus the edited image's VAE latent, `concat_latent_image` in both prompts, so cfg compares the
prompts on the same image, as ComfyUI does) and the SD x4 upscaler (7 channels: the latent plus the low-resolution
pixels, `concat_image` and `noise_augmentation`). The x4 upscaler family itself is not loaded: its checkpoints are
refused by name, and so is sampling with this conditioning (`models.families.X4_UPSCALER_UNSUPPORTED`)."""

from __future__ import annotations

from typing import Annotated

import torch

from graphengine import Float, Node, Output

from . import costs
from .imageio import common_upscale
from .types import Conditioning, Image, Vae
from .vae import with_options


class InstructPixToPixConditioning(Node):
    """Conditioning and empty latent for InstructPix2Pix models: the image to edit goes into both prompts."""

    CATEGORY = "conditioning/instructpix2pix"
    RETURNS = (Output("CONDITIONING", "positive"), Output("CONDITIONING", "negative"), Output("LATENT", "latent"))

    positive: Conditioning
    negative: Conditioning
    vae: Vae
    pixels: Image

    @classmethod
    def estimate(cls, inputs, upstream, services=None):
        return costs.vae_encode(upstream.get("pixels"), extra=(None, None))

    def execute(self, ctx) -> tuple:
        image_latent = self.vae.encode(self.pixels, ctx.progress)  # centre-cropped to the VAE's grid
        latent = {"samples": torch.zeros_like(image_latent)}
        return (with_options(self.positive, concat_latent_image=image_latent),
                with_options(self.negative, concat_latent_image=image_latent), latent)


X4_DOWNSCALE = 4  # the x4 upscaler's VAE latent is a quarter of the output size


class SD_4XUpscale_Conditioning(Node):  # noqa: N801 (ComfyUI's class name)
    """Conditioning and empty latent for the SD x4 upscaler: the low-resolution image goes into both prompts."""

    CATEGORY = "conditioning/upscale_diffusion"
    RETURNS = (Output("CONDITIONING", "positive"), Output("CONDITIONING", "negative"), Output("LATENT", "latent"))

    images: Image
    positive: Conditioning
    negative: Conditioning
    scale_ratio: Annotated[float, Float(min=0.0, max=10.0, step=0.01)] = 4.0
    noise_augmentation: Annotated[float, Float(min=0.0, max=1.0, step=0.001)] = 0.0

    def execute(self, ctx) -> tuple:
        batch, height, width = self.images.shape[:3]
        out_w = max(1, round(width * float(self.scale_ratio)))
        out_h = max(1, round(height * float(self.scale_ratio)))
        latent_w, latent_h = out_w // X4_DOWNSCALE, out_h // X4_DOWNSCALE
        pixels = self.images[..., :3].movedim(-1, 1).to(torch.float32) * 2.0 - 1.0
        pixels = common_upscale(pixels, latent_w, latent_h, "bilinear", "center")
        options = {"concat_image": pixels, "noise_augmentation": float(self.noise_augmentation)}
        latent = {"samples": torch.zeros(batch, 4, latent_h, latent_w)}
        return with_options(self.positive, **options), with_options(self.negative, **options), latent


NODE_CLASSES = [InstructPixToPixConditioning, SD_4XUpscale_Conditioning]
