"""VAE nodes: encode/decode (plain and tiled) and the two inpaint preparations."""

from __future__ import annotations

import math
from typing import Annotated

import torch
import torch.nn.functional as F

from graphengine import Boolean, Int, Node, Output, Socket

from . import costs
from .handles import crop_to_multiple
from .types import Conditioning, Image, Latent, Mask, Vae

GREY = 0.5


def mask_at_pixels(mask: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """MASK [B,H,W] or [H,W] -> [B,1,height,width] float, bilinear-resized."""
    mask = mask.reshape((-1, 1) + tuple(mask.shape[-2:])).to(torch.float32)
    if tuple(mask.shape[-2:]) != (height, width):
        mask = F.interpolate(mask, size=(height, width), mode="bilinear", align_corners=False)
    return mask


def grow_mask(mask: torch.Tensor, grow_by: int) -> torch.Tensor:
    """Round a [B,1,H,W] mask and dilate it with a `grow_by`-wide box kernel (0 = just round)."""
    mask = mask.round()
    if grow_by <= 0:
        return mask
    kernel = torch.ones(1, 1, grow_by, grow_by)
    pad = math.ceil((grow_by - 1) / 2)
    grown = F.conv2d(mask, kernel, padding=pad)[..., : mask.shape[-2], : mask.shape[-1]]
    return grown.clamp(0.0, 1.0)


def grey_out(pixels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Set pixels [B,H,W,C] under the rounded mask [B,1,H,W] to mid grey (what inpaint models expect to fill)."""
    keep = (1.0 - mask.round()).movedim(1, -1)
    return (pixels[..., :3] - GREY) * keep + GREY


def prepare_inpaint(pixels: torch.Tensor, mask: torch.Tensor, downscale: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixels and the mask [B,1,H,W] (resized to the pixels first), both centre-cropped to the VAE grid."""
    mask = mask_at_pixels(mask, pixels.shape[1], pixels.shape[2])
    cropped_mask = crop_to_multiple(mask.movedim(1, -1), downscale).movedim(-1, 1)
    return crop_to_multiple(pixels, downscale), cropped_mask


def with_options(conditioning: list, **options) -> list:
    """A copy of a CONDITIONING with extra keys in every entry's options."""
    return [[context, {**opts, **options}] for context, opts in conditioning]


class VAEDecode(Node):
    """Decodes latent images back into pixel space images."""

    DISPLAY_NAME = "VAE Decode"
    CATEGORY = "latent"
    RETURNS = (Output("IMAGE", tooltip="The decoded image."),)

    samples: Annotated[dict, Socket("LATENT", tooltip="The latent to decode.")]
    vae: Annotated[object, Socket("VAE", tooltip="The VAE that decodes it.")]

    @classmethod
    def estimate(cls, inputs, upstream, services=None):
        return costs.vae_decode(upstream.get("samples"))

    def execute(self, ctx) -> tuple:
        return (self.vae.decode(self.samples["samples"], ctx.progress),)


class VAEEncode(Node):
    """Encodes pixel space images into latent images."""

    DISPLAY_NAME = "VAE Encode"
    CATEGORY = "latent"
    RETURNS = (Output("LATENT"),)

    pixels: Image
    vae: Vae

    @classmethod
    def estimate(cls, inputs, upstream, services=None):
        return costs.vae_encode(upstream.get("pixels"))

    def execute(self, ctx) -> tuple:
        return ({"samples": self.vae.encode(self.pixels, ctx.progress)},)


TileSize = Annotated[int, Int(min=64, max=4096, step=32)]
Overlap = Annotated[int, Int(min=0, max=4096, step=32)]
TemporalSize = Annotated[int, Int(min=8, max=4096, step=4, tooltip="Frames per pass; ignored for image VAEs.")]
TemporalOverlap = Annotated[int, Int(min=4, max=4096, step=4, tooltip="Frames per pass; ignored for image VAEs.")]


class VAEDecodeTiled(Node):
    """Decodes latents tile by tile, for large images or small GPUs."""

    DISPLAY_NAME = "VAE Decode (Tiled)"
    CATEGORY = "_for_testing"
    RETURNS = (Output("IMAGE"),)

    samples: Latent
    vae: Vae
    tile_size: TileSize = 512
    overlap: Overlap = 64
    temporal_size: TemporalSize = 64
    temporal_overlap: TemporalOverlap = 8

    @classmethod
    def estimate(cls, inputs, upstream, services=None):
        return costs.vae_decode(upstream.get("samples"), tile=inputs.get("tile_size", 512))

    def execute(self, ctx) -> tuple:
        downscale = self.vae.downscale
        tile = max(1, self.tile_size // downscale)
        overlap = self.overlap // downscale
        return (self.vae.decode_tiled(self.samples["samples"], tile, overlap, ctx.progress),)


class VAEEncodeTiled(Node):
    """Encodes images tile by tile, for large images or small GPUs."""

    DISPLAY_NAME = "VAE Encode (Tiled)"
    CATEGORY = "_for_testing"
    RETURNS = (Output("LATENT"),)

    pixels: Image
    vae: Vae
    tile_size: Annotated[int, Int(min=64, max=4096, step=64)] = 512
    overlap: Overlap = 64
    temporal_size: TemporalSize = 64
    temporal_overlap: TemporalOverlap = 8

    @classmethod
    def estimate(cls, inputs, upstream, services=None):
        return costs.vae_encode(upstream.get("pixels"), tile=inputs.get("tile_size", 512))

    def execute(self, ctx) -> tuple:
        return ({"samples": self.vae.encode_tiled(self.pixels, self.tile_size, self.overlap, ctx.progress)},)


class VAEEncodeForInpaint(Node):
    """Encodes an image with its masked area greyed out, and sets the grown mask as the latent's noise mask."""

    DISPLAY_NAME = "VAE Encode (for Inpainting)"
    CATEGORY = "latent/inpaint"
    RETURNS = (Output("LATENT"),)

    pixels: Image
    vae: Vae
    mask: Mask
    grow_mask_by: Annotated[int, Int(min=0, max=64, step=1)] = 6

    @classmethod
    def estimate(cls, inputs, upstream, services=None):
        return costs.vae_encode(upstream.get("pixels"))

    def execute(self, ctx) -> tuple:
        pixels, mask = prepare_inpaint(self.pixels, self.mask, self.vae.downscale)
        latent = self.vae.encode(grey_out(pixels, mask), ctx.progress)
        return ({"samples": latent, "noise_mask": grow_mask(mask, self.grow_mask_by)},)


class InpaintModelConditioning(Node):
    """Conditioning and latent for inpaint models: the masked image and mask go into the conditioning."""

    DISPLAY_NAME = "InpaintModelConditioning"
    CATEGORY = "conditioning/inpaint"
    RETURNS = (Output("CONDITIONING", "positive"), Output("CONDITIONING", "negative"), Output("LATENT", "latent"))

    positive: Conditioning
    negative: Conditioning
    vae: Vae
    pixels: Image
    mask: Mask
    noise_mask: Annotated[bool, Boolean(tooltip="Also set the mask as the latent's noise mask, "
                                                "so only the masked area is resampled.")] = True

    @classmethod
    def estimate(cls, inputs, upstream, services=None):
        return costs.vae_encode(upstream.get("pixels"), extra=(None, None))

    def execute(self, ctx) -> tuple:
        pixels, mask = prepare_inpaint(self.pixels, self.mask, self.vae.downscale)
        masked_latent = self.vae.encode(grey_out(pixels, mask), ctx.progress)
        latent = {"samples": self.vae.encode(pixels, ctx.progress)}
        if self.noise_mask:
            latent["noise_mask"] = mask
        extra = {"concat_latent_image": masked_latent, "concat_mask": mask}
        return with_options(self.positive, **extra), with_options(self.negative, **extra), latent


NODE_CLASSES = [VAEDecode, VAEEncode, VAEDecodeTiled, VAEEncodeTiled, VAEEncodeForInpaint, InpaintModelConditioning]
