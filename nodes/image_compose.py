"""Compositing nodes: paste through a mask, Porter-Duff operators, alpha join/split, colour masks, mask crops.

IMAGE = [B, H, W, C] float 0..1; MASK = [B, H, W] float 0..1. An IMAGE's alpha is opacity; a MASK taken from or
given as alpha is 1 − alpha (ComfyUI's convention), except PorterDuffImageComposite's alpha inputs."""

from __future__ import annotations

import math
from typing import Annotated

import torch
import torch.nn.functional as F

from graphengine import Boolean, Combo, Int, Node, Output

from . import costs
from .imageio import common_upscale
from .mask import as_mask_batch
from .types import MAX_RESOLUTION, Image, Mask, OptionalMask

PORTER_DUFF_MODES = ["ADD", "CLEAR", "DARKEN", "DST", "DST_ATOP", "DST_IN", "DST_OUT", "DST_OVER", "LIGHTEN",
                     "MULTIPLY", "OVERLAY", "SCREEN", "SRC", "SRC_ATOP", "SRC_IN", "SRC_OUT", "SRC_OVER", "XOR"]


def repeat_to_batch(tensor: torch.Tensor, batch: int) -> torch.Tensor:
    """Cut or cycle the batch dimension to `batch` rows."""
    if tensor.shape[0] >= batch:
        return tensor[:batch]
    repeats = [math.ceil(batch / tensor.shape[0])] + [1] * (tensor.ndim - 1)
    return tensor.repeat(repeats)[:batch]


def fit_channels(source: torch.Tensor, channels: int) -> torch.Tensor:
    """[B, C, H, W] with `channels` channels: extra ones dropped, missing ones opaque (1)."""
    if source.shape[1] >= channels:
        return source[:, :channels]
    fill = source.new_ones(source.shape[0], channels - source.shape[1], *source.shape[2:])
    return torch.cat([source, fill], dim=1)


def paste(destination: torch.Tensor, source: torch.Tensor, x: int, y: int, mask: torch.Tensor | None,
          resize_source: bool) -> torch.Tensor:
    """Paste [B, C, H, W] `source` into a copy of `destination` with its top-left at (x, y), through `mask`.

    The mask (any [.., h, w]) is resized bilinearly to the source; source and mask batches follow the destination's;
    what falls outside the destination is cut off."""
    out = destination.clone()
    source = fit_channels(source.to(out), out.shape[1])
    if resize_source:
        source = F.interpolate(source, size=out.shape[2:], mode="bilinear")
    source = repeat_to_batch(source, out.shape[0])
    height, width = source.shape[2:]
    x = max(-width, min(x, out.shape[3]))
    y = max(-height, min(y, out.shape[2]))
    if mask is None:
        mask = torch.ones_like(source[:, :1])
    else:
        mask = F.interpolate(mask.reshape(-1, 1, *mask.shape[-2:]).to(out), size=(height, width),
                             mode="bilinear")
        mask = repeat_to_batch(mask, out.shape[0])
    # rows/cols of the destination covered, and the matching part of the source
    top, left = max(y, 0), max(x, 0)
    bottom, right = min(y + height, out.shape[2]), min(x + width, out.shape[3])
    if bottom <= top or right <= left:
        return out
    src_rows, src_cols = slice(top - y, bottom - y), slice(left - x, right - x)
    weight = mask[:, :, src_rows, src_cols]
    region = out[:, :, top:bottom, left:right]
    out[:, :, top:bottom, left:right] = weight * source[:, :, src_rows, src_cols] + (1 - weight) * region
    return out


def porter_duff(src: torch.Tensor, src_a: torch.Tensor, dst: torch.Tensor, dst_a: torch.Tensor,
                mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Porter-Duff compositing of straight-alpha colours; returns straight-alpha (colour, alpha)."""
    src, dst = src * src_a, dst * dst_a  # premultiplied
    union = src_a + dst_a - src_a * dst_a
    results = {
        "ADD": lambda: ((src + dst).clamp(0, 1), (src_a + dst_a).clamp(0, 1)),
        "CLEAR": lambda: (torch.zeros_like(dst), torch.zeros_like(dst_a)),
        "DARKEN": lambda: ((1 - dst_a) * src + (1 - src_a) * dst + torch.minimum(src, dst), union),
        "DST": lambda: (dst, dst_a),
        "DST_ATOP": lambda: (src_a * dst + (1 - dst_a) * src, src_a),
        "DST_IN": lambda: (dst * src_a, src_a * dst_a),
        "DST_OUT": lambda: ((1 - src_a) * dst, (1 - src_a) * dst_a),
        "DST_OVER": lambda: (dst + (1 - dst_a) * src, dst_a + (1 - dst_a) * src_a),
        "LIGHTEN": lambda: ((1 - dst_a) * src + (1 - src_a) * dst + torch.maximum(src, dst), union),
        "MULTIPLY": lambda: (src * dst, src_a * dst_a),
        "OVERLAY": lambda: (torch.where(2 * dst < dst_a, 2 * src * dst,
                                        src_a * dst_a - 2 * (dst_a - src) * (src_a - dst)), union),
        "SCREEN": lambda: (src + dst - src * dst, union),
        "SRC": lambda: (src, src_a),
        "SRC_ATOP": lambda: (dst_a * src + (1 - src_a) * dst, dst_a),
        "SRC_IN": lambda: (src * dst_a, src_a * dst_a),
        "SRC_OUT": lambda: ((1 - dst_a) * src, (1 - dst_a) * src_a),
        "SRC_OVER": lambda: (src + (1 - src_a) * dst, src_a + (1 - src_a) * dst_a),
        "XOR": lambda: ((1 - dst_a) * src + (1 - src_a) * dst, (1 - dst_a) * src_a + (1 - src_a) * dst_a),
    }
    if mode not in results:
        raise ValueError(f"Unknown Porter-Duff mode {mode!r}")
    colour, alpha = results[mode]()
    nonzero = alpha.expand_as(colour) != 0
    colour = torch.where(nonzero, colour / torch.where(alpha == 0, torch.ones_like(alpha), alpha), colour)
    return colour, alpha


def resized_hwc(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[H, W, C] resized bicubically (centre crop) to height×width."""
    return common_upscale(image.movedim(-1, 0).unsqueeze(0), width, height, "bicubic", "center")[0].movedim(0, -1)


def color_mask(images: torch.Tensor, color: int) -> torch.Tensor:
    """1 where a pixel's 8-bit RGB (rounded) is exactly 0xRRGGBB, else 0."""
    rgb = (images[..., :3].clamp(0.0, 1.0) * 255.0).round().to(torch.int64)
    packed = (rgb[..., 0] << 16) + (rgb[..., 1] << 8) + rgb[..., 2]
    return (packed == color).float()


class ImageCompositeMasked(Node):
    """Paste `source` onto `destination` at (x, y), through an optional mask."""

    CATEGORY = "image"
    RETURNS = (Output("IMAGE"),)
    destination: Image
    source: Image
    x: Annotated[int, Int(min=0, max=MAX_RESOLUTION, step=1)] = 0
    y: Annotated[int, Int(min=0, max=MAX_RESOLUTION, step=1)] = 0
    resize_source: Annotated[bool, Boolean()] = False
    mask: OptionalMask = None

    def execute(self, ctx) -> tuple:
        ctx.check_cancelled()
        out = paste(self.destination.movedim(-1, 1), self.source.movedim(-1, 1), self.x, self.y, self.mask,
                    self.resize_source)
        return (out.movedim(1, -1),)


class ImageColorToMask(Node):
    """A mask of the pixels of exactly one colour (0xRRGGBB)."""

    CATEGORY = "mask"
    RETURNS = (Output("MASK"),)
    image: Image
    color: Annotated[int, Int(min=0, max=0xFFFFFF, step=1, display="color")] = 0

    @classmethod
    def estimate(cls, inputs, upstream, services=None):
        pixels = upstream.get("image")
        return costs.made(costs.mask(pixels["batch"], pixels["width"], pixels["height"])) if pixels else None

    def execute(self, ctx) -> tuple:
        ctx.check_cancelled()
        return (color_mask(self.image, self.color),)


class CropMask(Node):
    """Crop a width×height region of a mask at (x, y)."""

    CATEGORY = "mask"
    RETURNS = (Output("MASK"),)
    mask: Mask
    x: Annotated[int, Int(min=0, max=MAX_RESOLUTION, step=1)] = 0
    y: Annotated[int, Int(min=0, max=MAX_RESOLUTION, step=1)] = 0
    width: Annotated[int, Int(min=1, max=MAX_RESOLUTION, step=1)] = 512
    height: Annotated[int, Int(min=1, max=MAX_RESOLUTION, step=1)] = 512

    def execute(self, ctx) -> tuple:
        masks = as_mask_batch(self.mask)
        if self.x >= masks.shape[2] or self.y >= masks.shape[1]:
            raise ValueError(f"CropMask: the corner ({self.x}, {self.y}) is outside the {masks.shape[2]}x"
                             f"{masks.shape[1]} mask")
        return (masks[:, self.y:self.y + self.height, self.x:self.x + self.width].clone(),)


class JoinImageWithAlpha(Node):
    """Add an alpha channel to RGB images: alpha = 1 − mask (resized to the image)."""

    DISPLAY_NAME = "Join Image with Alpha"
    CATEGORY = "mask/compositing"
    RETURNS = (Output("IMAGE"),)
    image: Image
    alpha: Mask

    @classmethod
    def estimate(cls, inputs, upstream, services=None):
        pixels = upstream.get("image")
        return costs.made(costs.image(pixels["batch"], pixels["width"], pixels["height"], 4)) if pixels else None

    def execute(self, ctx) -> tuple:
        ctx.check_cancelled()
        masks = as_mask_batch(self.alpha).to(self.image)
        batch = min(self.image.shape[0], masks.shape[0])
        opacity = 1.0 - F.interpolate(masks.unsqueeze(1), size=self.image.shape[1:3], mode="bilinear")[:, 0]
        return (torch.cat([self.image[:batch, ..., :3], opacity[:batch].unsqueeze(-1)], dim=-1),)


class SplitImageWithAlpha(Node):
    """Split images into RGB and a mask of 1 − alpha (0 when there is no alpha channel)."""

    DISPLAY_NAME = "Split Image with Alpha"
    CATEGORY = "mask/compositing"
    RETURNS = (Output("IMAGE"), Output("MASK"))
    image: Image

    @classmethod
    def estimate(cls, inputs, upstream, services=None):
        pixels = upstream.get("image")
        if pixels is None:
            return None
        return costs.made(costs.image(pixels["batch"], pixels["width"], pixels["height"]),
                          costs.mask(pixels["batch"], pixels["width"], pixels["height"]))

    def execute(self, ctx) -> tuple:
        ctx.check_cancelled()
        alpha = self.image[..., 3] if self.image.shape[-1] > 3 else torch.ones_like(self.image[..., 0])
        return (self.image[..., :3].clone(), 1.0 - alpha)


class PorterDuffImageComposite(Node):
    """Composite source over destination with a Porter-Duff operator; alphas are given as masks (1 = opaque)."""

    DISPLAY_NAME = "Porter-Duff Image Composite"
    CATEGORY = "mask/compositing"
    RETURNS = (Output("IMAGE"), Output("MASK"))
    source: Image
    source_alpha: Mask
    destination: Image
    destination_alpha: Mask
    mode: Annotated[str, Combo(PORTER_DUFF_MODES)] = "DST"

    @classmethod
    def estimate(cls, inputs, upstream, services=None):
        pixels = upstream.get("destination")
        if pixels is None:
            return None
        batch = min(ext["batch"] for ext in upstream.values() if ext)  # the shortest input sets the batch
        return costs.made(costs.resized(pixels, batch=batch), costs.mask(batch, pixels["width"], pixels["height"]))

    def execute(self, ctx) -> tuple:
        source_alpha, destination_alpha = as_mask_batch(self.source_alpha), as_mask_batch(self.destination_alpha)
        batch = min(len(self.source), len(source_alpha), len(self.destination), len(destination_alpha))
        images, alphas = [], []
        for index in range(batch):
            ctx.check_cancelled()
            dst = self.destination[index]
            src = self.source[index]
            if src.shape[-1] != dst.shape[-1]:
                raise ValueError(f"PorterDuffImageComposite: source has {src.shape[-1]} channels, destination "
                                 f"{dst.shape[-1]}")
            height, width = dst.shape[:2]
            dst_a = destination_alpha[index].unsqueeze(-1)
            src_a = source_alpha[index].unsqueeze(-1)
            if dst_a.shape[:2] != (height, width):
                dst_a = resized_hwc(dst_a, height, width)
            if src.shape != dst.shape:
                src = resized_hwc(src, height, width)
            if src_a.shape != dst_a.shape:
                src_a = resized_hwc(src_a, height, width)
            colour, alpha = porter_duff(src, src_a, dst, dst_a, self.mode)
            images.append(colour)
            alphas.append(alpha[..., 0])
        return (torch.stack(images), torch.stack(alphas))


NODE_CLASSES = [ImageCompositeMasked, ImageColorToMask, CropMask, JoinImageWithAlpha, SplitImageWithAlpha,
                PorterDuffImageComposite]
