"""Conditioning nodes of the UNet families that take an image as extra input channels: InstructPix2Pix (8
channels: the latent plus the edited image's VAE latent, `concat_latent_image` in both prompts, so cfg compares the
prompts on the same image, as ComfyUI does)."""

from __future__ import annotations

import torch

from graphengine import Node, Output

from . import costs
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


NODE_CLASSES = [InstructPixToPixConditioning]
