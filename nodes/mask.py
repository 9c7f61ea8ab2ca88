"""Mask nodes (MASK = [B, H, W] float 0..1, 1 = selected): create, invert, grow, feather, convert, composite."""

from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F

from graphengine import Boolean, Combo, Float, Int, Node, Output

from . import costs
from .types import MAX_RESOLUTION, Image, Mask
from .work import map_batch

CHANNELS = ["red", "green", "blue", "alpha"]
COMPOSITE_OPERATIONS = ["multiply", "add", "subtract", "and", "or", "xor"]


def as_mask_batch(mask: torch.Tensor) -> torch.Tensor:
    """Any [..., H, W] mask as [B, H, W]."""
    if not isinstance(mask, torch.Tensor) or mask.ndim < 2:
        raise ValueError("Expected a MASK tensor [B, H, W]")
    return mask.reshape(-1, mask.shape[-2], mask.shape[-1])


def morph_step(masks: torch.Tensor, grow: bool, tapered_corners: bool) -> torch.Tensor:
    """One grey dilation (grow) or erosion of [B, H, W] with a 3×3 plus (tapered) or square footprint.

    Outside pixels never win: padding replicates the edge, which is already in every window."""
    padded = F.pad(masks.unsqueeze(1), (1, 1, 1, 1), mode="replicate").squeeze(1)
    height, width = masks.shape[-2:]
    offsets = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)
               if not (tapered_corners and dy != 0 and dx != 0)]
    shifted = torch.stack([padded[:, 1 + dy:1 + dy + height, 1 + dx:1 + dx + width] for dy, dx in offsets])
    return shifted.amax(0) if grow else shifted.amin(0)


def feather_ramp(count: int) -> torch.Tensor:
    """Factors 1/count, 2/count, … count/count from the outer edge inwards."""
    return torch.arange(1, count + 1, dtype=torch.float32) / count


def binary(values: torch.Tensor) -> torch.Tensor:
    return values.round().bool()


def composite(destination: torch.Tensor, source: torch.Tensor, operation: str) -> torch.Tensor:
    if operation == "multiply":
        return destination * source
    if operation == "add":
        return destination + source
    if operation == "subtract":
        return destination - source
    if operation == "and":
        return (binary(destination) & binary(source)).float()
    if operation == "or":
        return (binary(destination) | binary(source)).float()
    if operation == "xor":
        return (binary(destination) ^ binary(source)).float()
    raise ValueError(f"Unknown MaskComposite operation {operation!r}")


class SolidMask(Node):
    """A mask of one value."""

    CATEGORY = "mask"
    RETURNS = (Output("MASK"),)
    value: Annotated[float, Float(min=0.0, max=1.0, step=0.01)] = 1.0
    width: Annotated[int, Int(min=1, max=MAX_RESOLUTION, step=1)] = 512
    height: Annotated[int, Int(min=1, max=MAX_RESOLUTION, step=1)] = 512

    @classmethod
    def estimate(cls, inputs, upstream, services=None):
        size = costs.constants(inputs, "width", "height")
        return costs.made(costs.mask(1, *size)) if size else None

    def execute(self, ctx) -> tuple:
        return (torch.full((1, self.height, self.width), float(self.value), dtype=torch.float32),)


class InvertMask(Node):
    """1 − mask."""

    CATEGORY = "mask"
    RETURNS = (Output("MASK"),)
    mask: Mask

    def execute(self, ctx) -> tuple:
        return (map_batch(lambda chunk: 1.0 - chunk, as_mask_batch(self.mask), ctx.check_cancelled),)


class GrowMask(Node):
    """Dilate (expand > 0) or erode (expand < 0) a mask by |expand| pixels."""

    DISPLAY_NAME = "Grow Mask"
    CATEGORY = "mask"
    RETURNS = (Output("MASK"),)
    mask: Mask
    expand: Annotated[int, Int(min=-MAX_RESOLUTION, max=MAX_RESOLUTION, step=1)] = 0
    tapered_corners: Annotated[bool, Boolean()] = True

    def execute(self, ctx) -> tuple:
        out = as_mask_batch(self.mask).float()
        for _ in range(abs(self.expand)):
            ctx.check_cancelled()
            out = morph_step(out, grow=self.expand > 0, tapered_corners=self.tapered_corners)
        return (out,)


class FeatherMask(Node):
    """Fade a mask linearly to the given number of pixels from each edge."""

    DISPLAY_NAME = "Feather Mask"
    CATEGORY = "mask"
    RETURNS = (Output("MASK"),)
    mask: Mask
    left: Annotated[int, Int(min=0, max=MAX_RESOLUTION, step=1)] = 0
    top: Annotated[int, Int(min=0, max=MAX_RESOLUTION, step=1)] = 0
    right: Annotated[int, Int(min=0, max=MAX_RESOLUTION, step=1)] = 0
    bottom: Annotated[int, Int(min=0, max=MAX_RESOLUTION, step=1)] = 0

    def execute(self, ctx) -> tuple:
        out = as_mask_batch(self.mask).clone().float()
        height, width = out.shape[-2:]
        left, right = min(self.left, width), min(self.right, width)
        top, bottom = min(self.top, height), min(self.bottom, height)
        if left:
            out[:, :, :left] *= feather_ramp(left)
        if right:
            out[:, :, width - right:] *= feather_ramp(right).flip(0)
        if top:
            out[:, :top, :] *= feather_ramp(top).unsqueeze(-1)
        if bottom:
            out[:, height - bottom:, :] *= feather_ramp(bottom).flip(0).unsqueeze(-1)
        return (out,)


class MaskToImage(Node):
    """A mask as a grey RGB image."""

    DISPLAY_NAME = "Convert Mask to Image"
    CATEGORY = "mask"
    RETURNS = (Output("IMAGE"),)
    mask: Mask

    def execute(self, ctx) -> tuple:
        return (map_batch(lambda chunk: chunk.unsqueeze(-1).expand(-1, -1, -1, 3).clone(), as_mask_batch(self.mask),
                          ctx.check_cancelled),)


class ImageToMask(Node):
    """One channel of an image as a mask."""

    DISPLAY_NAME = "Convert Image to Mask"
    CATEGORY = "mask"
    RETURNS = (Output("MASK"),)
    image: Image
    channel: Annotated[str, Combo(CHANNELS)]

    def execute(self, ctx) -> tuple:
        index = CHANNELS.index(self.channel)
        if self.image.shape[-1] <= index:
            raise ValueError(f"ImageToMask: the image has {self.image.shape[-1]} channels, no {self.channel} channel")
        return (self.image[..., index].reshape(-1, self.image.shape[-3], self.image.shape[-2]).clone(),)


class MaskComposite(Node):
    """Combine `source` into `destination` at (x, y) with an operation; the result is clamped to 0..1."""

    CATEGORY = "mask"
    RETURNS = (Output("MASK"),)
    destination: Mask
    source: Mask
    x: Annotated[int, Int(min=0, max=MAX_RESOLUTION, step=1)] = 0
    y: Annotated[int, Int(min=0, max=MAX_RESOLUTION, step=1)] = 0
    operation: Annotated[str, Combo(COMPOSITE_OPERATIONS)]

    def execute(self, ctx) -> tuple:
        destination = as_mask_batch(self.destination).clone().float()
        source = as_mask_batch(self.source).float()
        height, width = destination.shape[-2:]
        right = min(self.x + source.shape[-1], width)
        bottom = min(self.y + source.shape[-2], height)
        if right > self.x and bottom > self.y:
            region = destination[:, self.y:bottom, self.x:right]
            mixed = composite(region, source[:, :bottom - self.y, :right - self.x], self.operation)
            if mixed.shape[0] != destination.shape[0]:  # a batch-1 destination takes the source's batch
                destination = destination.expand(mixed.shape[0], -1, -1).clone()
            destination[:, self.y:bottom, self.x:right] = mixed
        return (destination.clamp(0.0, 1.0),)


class ThresholdMask(Node):
    """1 where mask > value, else 0."""

    CATEGORY = "mask"
    RETURNS = (Output("MASK"),)
    mask: Mask
    value: Annotated[float, Float(min=0.0, max=1.0, step=0.01)] = 0.5

    def execute(self, ctx) -> tuple:
        return (map_batch(lambda chunk: (chunk > self.value).float(), as_mask_batch(self.mask), ctx.check_cancelled),)


NODE_CLASSES = [SolidMask, InvertMask, GrowMask, FeatherMask, MaskToImage, ImageToMask, MaskComposite, ThresholdMask]
