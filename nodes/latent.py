"""Latent nodes: empty latents, resizing, batch slicing/repeating and noise masks (ComfyUI's class names)."""

from __future__ import annotations

import math
from typing import Annotated, Any

import torch

from graphengine import Combo, Float, Int, Node, Output

from . import costs
from .imageio import common_upscale, scaled_size
from .types import MAX_RESOLUTION, Latent, Mask
from .work import map_batch

LATENT_CHANNELS = 4  # SD1/SD2/SDXL and the demo model; an all-zero latent is reshaped at sampling time
LATENT_UPSCALE_METHODS = ["nearest-exact", "bilinear", "area", "bicubic", "bislerp"]
CROP_METHODS = ["disabled", "center"]
MIN_LATENT_UPSCALE_PIXELS = 64


def _samples(latent: Any) -> torch.Tensor:
    if not isinstance(latent, dict) or not isinstance(latent.get("samples"), torch.Tensor):
        raise ValueError("Expected a LATENT: a dict with a 'samples' tensor")
    return latent["samples"]


def _masks_for_batch(masks: torch.Tensor, batch: int) -> torch.Tensor:
    """Noise masks cycled to cover a batch of `batch` latents."""
    if masks.shape[0] < batch:
        masks = masks.repeat(math.ceil(batch / masks.shape[0]), *([1] * (masks.ndim - 1)))[:batch]
    return masks


def upscale_latents(ctx, samples: torch.Tensor, width: int, height: int, method: str, crop: str) -> torch.Tensor:
    """common_upscale over a batch in chunks, checking for cancellation between them."""
    return map_batch(lambda chunk: common_upscale(chunk, width, height, method, crop), samples, ctx.check_cancelled,
                     samples.shape[1] * width * height)


class EmptyLatentImage(Node):
    """Create a batch of empty latent images to be denoised by a sampler."""

    DISPLAY_NAME = "Empty Latent Image"
    CATEGORY = "latent"
    RETURNS = (Output("LATENT", tooltip="The empty latent image batch."),)
    width: Annotated[int, Int(min=16, max=MAX_RESOLUTION, step=8, tooltip="The width of the latent images in pixels.")] = 512
    height: Annotated[int, Int(min=16, max=MAX_RESOLUTION, step=8, tooltip="The height of the latent images in pixels.")] = 512
    batch_size: Annotated[int, Int(min=1, max=4096, tooltip="The number of latent images in the batch.")] = 1

    @classmethod
    def estimate(cls, inputs, upstream, services=None):
        size = costs.constants(inputs, "batch_size", "width", "height")
        return costs.made(costs.latent(*size)) if size else None

    def execute(self, ctx) -> tuple:
        shape = (self.batch_size, LATENT_CHANNELS, self.height // 8, self.width // 8)
        return ({"samples": torch.zeros(shape)},)


class LatentUpscale(Node):
    """Resize latents to a pixel size (0 on one side keeps the aspect ratio)."""

    DISPLAY_NAME = "Upscale Latent"
    CATEGORY = "latent"
    RETURNS = (Output("LATENT"),)
    samples: Latent
    upscale_method: Annotated[str, Combo(LATENT_UPSCALE_METHODS)]
    width: Annotated[int, Int(min=0, max=MAX_RESOLUTION, step=8)] = 512
    height: Annotated[int, Int(min=0, max=MAX_RESOLUTION, step=8)] = 512
    crop: Annotated[str, Combo(CROP_METHODS)]

    @classmethod
    def estimate(cls, inputs, upstream, services=None):
        return costs.made(costs.resized(upstream.get("samples"), inputs.get("width"), inputs.get("height")))

    def execute(self, ctx) -> tuple:
        samples = _samples(self.samples)
        out = dict(self.samples)
        if self.width == 0 and self.height == 0:
            return (out,)
        width, height = scaled_size(samples.shape[-1], samples.shape[-2], self.width, self.height,
                                    MIN_LATENT_UPSCALE_PIXELS)
        out["samples"] = upscale_latents(ctx, samples, width // 8, height // 8, self.upscale_method, self.crop)
        return (out,)


class LatentUpscaleBy(Node):
    """Resize latents by a factor."""

    DISPLAY_NAME = "Upscale Latent By"
    CATEGORY = "latent"
    RETURNS = (Output("LATENT"),)
    samples: Latent
    upscale_method: Annotated[str, Combo(LATENT_UPSCALE_METHODS)]
    scale_by: Annotated[float, Float(min=0.01, max=8.0, step=0.01)] = 1.5

    @classmethod
    def estimate(cls, inputs, upstream, services=None):
        return costs.made(costs.scaled(upstream.get("samples"), inputs.get("scale_by", 1.0)))

    def execute(self, ctx) -> tuple:
        samples = _samples(self.samples)
        width = max(1, round(samples.shape[-1] * self.scale_by))
        height = max(1, round(samples.shape[-2] * self.scale_by))
        out = dict(self.samples)
        out["samples"] = upscale_latents(ctx, samples, width, height, self.upscale_method, "disabled")
        return (out,)


class LatentFromBatch(Node):
    """Take `length` latents starting at `batch_index` (negative counts from the end), keeping their noise."""

    DISPLAY_NAME = "Latent From Batch"
    CATEGORY = "latent/batch"
    RETURNS = (Output("LATENT"),)
    samples: Latent
    batch_index: Annotated[int, Int(min=-MAX_RESOLUTION, max=MAX_RESOLUTION)] = 0
    length: Annotated[int, Int(min=1, max=64)] = 1

    @classmethod
    def estimate(cls, inputs, upstream, services=None):
        latent = upstream.get("samples")
        length = min(latent["batch"], inputs.get("length", 1)) if latent else None
        return costs.made(costs.resized(latent, batch=length))

    def execute(self, ctx) -> tuple:
        samples = _samples(self.samples)
        batch = samples.shape[0]
        start = self.batch_index + batch if self.batch_index < 0 else self.batch_index
        start = max(0, min(batch - 1, start))
        length = min(batch - start, self.length)
        out = dict(self.samples)
        out["samples"] = samples[start:start + length].clone()
        masks = self.samples.get("noise_mask")
        if masks is not None:
            out["noise_mask"] = masks.clone() if masks.shape[0] == 1 else \
                _masks_for_batch(masks, batch)[start:start + length].clone()
        previous = self.samples.get("batch_index")
        # Indices into the batch the noise was drawn for, so each latent keeps its own noise.
        out["batch_index"] = list(range(start, start + length)) if previous is None \
            else list(previous)[start:start + length]
        return (out,)


def repeated(ctx, samples: torch.Tensor, amount: int) -> torch.Tensor:
    """samples.repeat(amount, 1, …), one copy at a time with a cancellation check before each."""
    out = samples.new_empty((samples.shape[0] * amount, *samples.shape[1:]))
    for index in range(amount):
        ctx.check_cancelled()
        out[index * samples.shape[0]:(index + 1) * samples.shape[0]] = samples
    return out


class RepeatLatentBatch(Node):
    """Repeat a latent batch `amount` times."""

    DISPLAY_NAME = "Repeat Latent Batch"
    CATEGORY = "latent/batch"
    RETURNS = (Output("LATENT"),)
    samples: Latent
    amount: Annotated[int, Int(min=1, max=64)] = 1

    @classmethod
    def estimate(cls, inputs, upstream, services=None):
        latent = upstream.get("samples")
        batch = latent["batch"] * inputs.get("amount", 1) if latent else None
        return costs.made(costs.resized(latent, batch=batch))

    def execute(self, ctx) -> tuple:
        samples = _samples(self.samples)
        batch = samples.shape[0]
        out = dict(self.samples)
        out["samples"] = repeated(ctx, samples, self.amount)
        masks = self.samples.get("noise_mask")
        if masks is not None and masks.shape[0] > 1:
            masks = _masks_for_batch(masks, batch)
            out["noise_mask"] = masks.repeat(self.amount, *([1] * (masks.ndim - 1)))
        previous = self.samples.get("batch_index")
        if previous is not None:
            # Each copy continues past the previous one's index range, so copies get distinct noise.
            offset = max(previous) - min(previous) + 1
            out["batch_index"] = list(previous) + [x + i * offset for i in range(1, self.amount) for x in previous]
        return (out,)


class SetLatentNoiseMask(Node):
    """Attach a mask so only the masked area is re-sampled (base-model inpainting)."""

    DISPLAY_NAME = "Set Latent Noise Mask"
    CATEGORY = "latent/inpaint"
    RETURNS = (Output("LATENT"),)
    samples: Latent
    mask: Mask

    def execute(self, ctx) -> tuple:
        _samples(self.samples)
        out = dict(self.samples)
        out["noise_mask"] = self.mask.reshape(-1, 1, self.mask.shape[-2], self.mask.shape[-1])
        return (out,)


NODE_CLASSES = [EmptyLatentImage, LatentUpscale, LatentUpscaleBy, LatentFromBatch, RepeatLatentBatch,
                SetLatentNoiseMask]
