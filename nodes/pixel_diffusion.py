"""Nodes for pixel-space models (a diffusers UNet2DModel, no VAE, no text): their empty image, the conversions between
their LATENT (the image in [-1, 1]) and IMAGE, and the empty / class-label conditioning they take."""

from __future__ import annotations

from typing import Annotated

import torch

from graphengine import Int, Node, Output

from . import costs
from .pixel_model import CLASS_LABEL_KEY
from .types import MAX_RESOLUTION, Conditioning, Image, Latent

PIXEL_CHANNELS = 3


def pixel_samples(latent: dict) -> torch.Tensor:
    """The [B, 3, H, W] samples of a pixel LATENT; a clear error for a VAE latent."""
    samples = latent.get("samples") if isinstance(latent, dict) else None
    if not isinstance(samples, torch.Tensor) or samples.ndim != 4:
        raise ValueError("Expected a LATENT: a dict with a 'samples' tensor [B, C, H, W]")
    if samples.shape[1] != PIXEL_CHANNELS:
        raise ValueError(f"this LATENT has {samples.shape[1]} channels: it is a VAE latent, not the image of a "
                         "pixel-space model (decode it with VAE Decode)")
    return samples


class EmptyPixelLatent(Node):
    """Create a batch of empty images (the LATENT of a pixel-space model) to be denoised by a sampler."""

    DISPLAY_NAME = "Empty Pixel Latent"
    CATEGORY = "latent/pixel"
    RETURNS = (Output("LATENT", tooltip="The empty image batch, in the sampler's [-1, 1] units."),)
    width: Annotated[int, Int(min=8, max=MAX_RESOLUTION, step=8, tooltip="Image width in pixels.")] = 32
    height: Annotated[int, Int(min=8, max=MAX_RESOLUTION, step=8, tooltip="Image height in pixels.")] = 32
    batch_size: Annotated[int, Int(min=1, max=4096, tooltip="The number of images in the batch.")] = 1

    @classmethod
    def estimate(cls, inputs, upstream, services=None):
        size = costs.constants(inputs, "batch_size", "width", "height")
        if not size:
            return None
        # The cost model reads a LATENT's size in image pixels (8 per latent pixel); here a latent pixel is a pixel.
        batch, width, height = size
        return costs.made(costs.extent("LATENT", batch, width * 8, height * 8, PIXEL_CHANNELS))

    def execute(self, ctx) -> tuple:
        return ({"samples": torch.zeros(self.batch_size, PIXEL_CHANNELS, self.height, self.width)},)


class PixelLatentToImage(Node):
    """Turn a pixel-space model's LATENT (the image in [-1, 1]) into an IMAGE."""

    DISPLAY_NAME = "Pixel Latent to Image"
    CATEGORY = "latent/pixel"
    RETURNS = (Output("IMAGE"),)
    samples: Latent

    def execute(self, ctx) -> tuple:
        pixels = pixel_samples(self.samples).to(torch.float32)
        return (((pixels + 1.0) / 2.0).clamp(0.0, 1.0).movedim(1, -1).contiguous(),)


class ImageToPixelLatent(Node):
    """Turn an IMAGE into the LATENT of a pixel-space model (for image-to-image with denoise below 1)."""

    DISPLAY_NAME = "Image to Pixel Latent"
    CATEGORY = "latent/pixel"
    RETURNS = (Output("LATENT"),)
    pixels: Image

    def execute(self, ctx) -> tuple:
        image = self.pixels[..., :PIXEL_CHANNELS].to(torch.float32)
        return ({"samples": (image * 2.0 - 1.0).movedim(-1, 1).contiguous()},)


class EmptyConditioning(Node):
    """Conditioning that says nothing: the positive and negative input of an unconditional model."""

    DISPLAY_NAME = "Empty Conditioning"
    CATEGORY = "conditioning"
    RETURNS = (Output("CONDITIONING"),)

    def execute(self, ctx) -> tuple:
        return ([[torch.zeros(1, 0, 1), {}]],)


class ConditioningSetClassLabel(Node):
    """Set the class a class-conditional pixel-space model (UNet2DModel with num_class_embeds) should draw."""

    DISPLAY_NAME = "Conditioning Set Class Label"
    CATEGORY = "conditioning"
    RETURNS = (Output("CONDITIONING"),)
    conditioning: Conditioning
    class_label: Annotated[int, Int(min=0, max=1_000_000, tooltip="The class index.")] = 0

    def execute(self, ctx) -> tuple:
        return ([[cond, {**extras, CLASS_LABEL_KEY: self.class_label}] for cond, extras in self.conditioning],)


NODE_CLASSES = [EmptyPixelLatent, PixelLatentToImage, ImageToPixelLatent, EmptyConditioning,
                ConditioningSetClassLabel]
