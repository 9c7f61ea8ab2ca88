"""Pasting, blending and geometric transforms of latents (ComfyUI's LatentComposite, LatentCompositeMasked,
LatentBlend, LatentCrop, LatentFlip, LatentRotate). Positions and sizes are given in pixels and used in latent units
(÷ 8). The output keeps the first LATENT's other fields; the transforms also move its `noise_mask` with the samples
(ComfyUI leaves the mask as it was, which no longer lines up)."""

from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F

from graphengine import Boolean, Combo, Float, Int, Node, Output

from . import costs
from .latent_ops import fit_batch, reshape_like, samples_of, with_samples
from .types import MAX_RESOLUTION, Latent, OptionalMask

LATENT_SCALE = 8
FLIP_METHODS = ["x-axis: vertically", "y-axis: horizontally"]
ROTATIONS = {"none": 0, "90 degrees": 1, "180 degrees": 2, "270 degrees": 3}  # rot90 k over dims (w, h): clockwise
MIN_CROP_LATENT = 8  # LatentCrop keeps at least 8 latent pixels (64 px) after its x / y offset


def edge_ramp(length: int, feather: int, start: bool, end: bool) -> torch.Tensor:
    """Weights along one side of a pasted latent: the first / last `feather` entries ramp up as (t+1)/feather at
    the edges that lie inside the destination."""
    ramp = torch.ones(length)
    step = 1.0 / feather
    for t in range(feather):
        if start:
            ramp[t:t + 1] *= step * (t + 1)
        if end:
            ramp[length - 1 - t:length - t] *= step * (t + 1)
    return ramp


def composite(destination: torch.Tensor, source: torch.Tensor, x: int, y: int, feather: int) -> torch.Tensor:
    """`source` pasted into a copy of `destination` at (x, y) (latent units), clipped to it, with edges inside the
    destination faded in over `feather` latent pixels."""
    out = destination.clone()
    height, width = destination.shape[-2:]
    source = fit_batch(source, destination.shape[0])[..., :max(0, height - y), :max(0, width - x)]
    h, w = source.shape[-2:]
    if h == 0 or w == 0:
        return out
    if feather == 0:
        out[..., y:y + h, x:x + w] = source
        return out
    rows = edge_ramp(h, feather, y != 0, y + h < height)
    cols = edge_ramp(w, feather, x != 0, x + w < width)
    weight = (rows[:, None] * cols[None, :]).to(out)
    out[..., y:y + h, x:x + w] = source * weight + out[..., y:y + h, x:x + w] * (1.0 - weight)
    return out


def paste_masked(destination: torch.Tensor, source: torch.Tensor, left: int, top: int, mask: torch.Tensor | None,
                 resize_source: bool) -> torch.Tensor:
    """[B, C, H, W] `source` blended into a copy of `destination` at (left, top) by `mask` (resized bilinearly to
    the source, 1 = source), clipped to the destination; `resize_source` first stretches it to the destination."""
    out = destination.clone()
    if resize_source:
        source = F.interpolate(source, size=tuple(destination.shape[-2:]), mode="bilinear")
    source = fit_batch(source.to(out), destination.shape[0])
    h = min(source.shape[-2], destination.shape[-2] - top)
    w = min(source.shape[-1], destination.shape[-1] - left)
    if h <= 0 or w <= 0:
        return out
    if mask is None:
        weight = torch.ones_like(source[:, :1])
    else:
        weight = F.interpolate(mask.to(out).reshape(-1, 1, *mask.shape[-2:]), size=tuple(source.shape[-2:]),
                               mode="bilinear")
        weight = fit_batch(weight, source.shape[0])
    weight = weight[..., :h, :w]
    region = out[..., top:top + h, left:left + w]
    out[..., top:top + h, left:left + w] = weight * source[..., :h, :w] + (1.0 - weight) * region
    return out


def _with_mask(latent: dict, samples: torch.Tensor, transform) -> dict:
    out = with_samples(latent, samples)
    mask = latent.get("noise_mask")
    if isinstance(mask, torch.Tensor):
        out["noise_mask"] = transform(mask)
    return out


class LatentComposite(Node):
    """Paste samples_from into samples_to at (x, y), optionally feathering the inner edges."""

    DISPLAY_NAME = "Latent Composite"
    CATEGORY = "latent"
    RETURNS = (Output("LATENT"),)
    samples_to: Latent
    samples_from: Latent
    x: Annotated[int, Int(min=0, max=MAX_RESOLUTION, step=8)] = 0
    y: Annotated[int, Int(min=0, max=MAX_RESOLUTION, step=8)] = 0
    feather: Annotated[int, Int(min=0, max=MAX_RESOLUTION, step=8)] = 0

    @classmethod
    def estimate(cls, inputs, upstream, services=None):
        return costs.made(upstream.get("samples_to"))

    def execute(self, ctx) -> tuple:
        out = composite(samples_of(self.samples_to, "samples_to"), samples_of(self.samples_from, "samples_from"),
                        self.x // LATENT_SCALE, self.y // LATENT_SCALE, self.feather // LATENT_SCALE)
        return (with_samples(self.samples_to, out),)


class LatentCompositeMasked(Node):
    """Paste source into destination at (x, y) through an optional mask (1 = source)."""

    CATEGORY = "latent"
    RETURNS = (Output("LATENT"),)
    destination: Latent
    source: Latent
    x: Annotated[int, Int(min=0, max=MAX_RESOLUTION, step=8)] = 0
    y: Annotated[int, Int(min=0, max=MAX_RESOLUTION, step=8)] = 0
    resize_source: Annotated[bool, Boolean()] = False
    mask: OptionalMask = None

    @classmethod
    def estimate(cls, inputs, upstream, services=None):
        return costs.made(upstream.get("destination"))

    def execute(self, ctx) -> tuple:
        out = paste_masked(samples_of(self.destination, "destination"), samples_of(self.source, "source"),
                           self.x // LATENT_SCALE, self.y // LATENT_SCALE, self.mask, self.resize_source)
        return (with_samples(self.destination, out),)


class LatentBlend(Node):
    """Blend two latents: samples1 · blend_factor + samples2 · (1 − blend_factor)."""

    DISPLAY_NAME = "Latent Blend"
    CATEGORY = "_for_testing"
    RETURNS = (Output("LATENT"),)
    samples1: Latent
    samples2: Latent
    blend_factor: Annotated[float, Float(min=0.0, max=1.0, step=0.01)] = 0.5

    @classmethod
    def estimate(cls, inputs, upstream, services=None):
        return costs.made(upstream.get("samples1"))

    def execute(self, ctx) -> tuple:
        s1 = samples_of(self.samples1, "samples1")
        s2 = reshape_like(s1, samples_of(self.samples2, "samples2"), "bicubic")
        return (with_samples(self.samples1, s1 * self.blend_factor + s2 * (1.0 - self.blend_factor)),)


def crop_box(samples: torch.Tensor, width: int, height: int, x: int, y: int) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) in latent units; the offset is pulled back to keep 8 latent pixels."""
    left = min(x // LATENT_SCALE, samples.shape[-1] - MIN_CROP_LATENT)
    top = min(y // LATENT_SCALE, samples.shape[-2] - MIN_CROP_LATENT)
    left, top = max(0, left), max(0, top)
    return top, top + height // LATENT_SCALE, left, left + width // LATENT_SCALE


def crop_mask(mask: torch.Tensor, box: tuple[int, int, int, int], latent_h: int, latent_w: int) -> torch.Tensor:
    """The part of a noise mask (any resolution, stretched over the latent) under a latent crop box."""
    top, bottom, left, right = box
    mh, mw = mask.shape[-2:]
    return mask[..., top * mh // latent_h:min(bottom, latent_h) * mh // latent_h,
                left * mw // latent_w:min(right, latent_w) * mw // latent_w]


class LatentCrop(Node):
    """Crop a latent to width×height at (x, y) (pixels)."""

    DISPLAY_NAME = "Crop Latent"
    CATEGORY = "latent/transform"
    RETURNS = (Output("LATENT"),)
    samples: Latent
    width: Annotated[int, Int(min=64, max=MAX_RESOLUTION, step=8)] = 512
    height: Annotated[int, Int(min=64, max=MAX_RESOLUTION, step=8)] = 512
    x: Annotated[int, Int(min=0, max=MAX_RESOLUTION, step=8)] = 0
    y: Annotated[int, Int(min=0, max=MAX_RESOLUTION, step=8)] = 0

    def execute(self, ctx) -> tuple:
        samples = samples_of(self.samples)
        box = crop_box(samples, self.width, self.height, self.x, self.y)
        top, bottom, left, right = box
        latent_h, latent_w = samples.shape[-2:]
        return (_with_mask(self.samples, samples[..., top:bottom, left:right].clone(),
                           lambda mask: crop_mask(mask, box, latent_h, latent_w)),)


class LatentFlip(Node):
    """Flip a latent vertically (x-axis) or horizontally (y-axis)."""

    DISPLAY_NAME = "Flip Latent"
    CATEGORY = "latent/transform"
    RETURNS = (Output("LATENT"),)
    samples: Latent
    flip_method: Annotated[str, Combo(FLIP_METHODS)]

    def execute(self, ctx) -> tuple:
        dims = [-2] if self.flip_method.startswith("x") else [-1]
        return (_with_mask(self.samples, torch.flip(samples_of(self.samples), dims),
                           lambda mask: torch.flip(mask, dims)),)


class LatentRotate(Node):
    """Rotate a latent clockwise by 90, 180 or 270 degrees."""

    DISPLAY_NAME = "Rotate Latent"
    CATEGORY = "latent/transform"
    RETURNS = (Output("LATENT"),)
    samples: Latent
    rotation: Annotated[str, Combo(list(ROTATIONS))]

    def execute(self, ctx) -> tuple:
        k = ROTATIONS[self.rotation]
        samples = samples_of(self.samples)
        if k == 0:
            return (with_samples(self.samples, samples),)
        return (_with_mask(self.samples, torch.rot90(samples, k, dims=[-1, -2]),
                           lambda mask: torch.rot90(mask, k, dims=[-1, -2])),)


NODE_CLASSES = [LatentComposite, LatentCompositeMasked, LatentBlend, LatentCrop, LatentFlip, LatentRotate]
