"""Latent arithmetic and slicing (ComfyUI's LatentAdd … LatentCut): pure tensor functions and their nodes.

Every node returns a copy of its first LATENT with new `samples`, so `noise_mask` and `batch_index` of that input
carry through unchanged, as in ComfyUI."""

from __future__ import annotations

import math
from typing import Annotated, Any

import torch

from graphengine import Combo, Float, Int, Node, Output

from . import costs
from .imageio import common_upscale
from .types import MAX_RESOLUTION, Latent

CONCAT_DIMS = ["x", "-x", "y", "-y", "t", "-t"]
CUT_DIMS = ["x", "y", "t"]


def samples_of(latent: Any, name: str = "samples") -> torch.Tensor:
    if not isinstance(latent, dict) or not isinstance(latent.get("samples"), torch.Tensor):
        raise ValueError(f"{name}: expected a LATENT (a dict with a 'samples' tensor)")
    return latent["samples"]


def with_samples(latent: dict, samples: torch.Tensor) -> dict:
    """A copy of the LATENT dict (noise_mask, batch_index … kept) holding new samples."""
    return {**latent, "samples": samples}


def fit_batch(tensor: torch.Tensor, batch: int) -> torch.Tensor:
    """The first `batch` items, cycling the batch when it is shorter (ComfyUI's repeat_to_batch_size)."""
    if tensor.shape[0] < batch:
        tensor = tensor.repeat(math.ceil(batch / tensor.shape[0]), *([1] * (tensor.ndim - 1)))
    return tensor[:batch]


def reshape_like(target: torch.Tensor, latent: torch.Tensor, method: str = "bilinear",
                 repeat_batch: bool = True) -> torch.Tensor:
    """`latent` resized (centre crop) to `target`'s channel-and-spatial shape when it differs, and fitted to its
    batch size."""
    if latent.shape[1:] != target.shape[1:]:
        if latent.shape[1] != target.shape[1]:
            raise ValueError(f"latents with {latent.shape[1]} and {target.shape[1]} channels cannot be combined")
        latent = common_upscale(latent, target.shape[-1], target.shape[-2], method, "center")
    return fit_batch(latent, target.shape[0]) if repeat_batch else latent


def channel_norm(samples: torch.Tensor) -> torch.Tensor:
    """Per-position vector length across channels, kept as a size-1 channel dim."""
    return torch.linalg.vector_norm(samples, dim=1, keepdim=True)


def interpolate(s1: torch.Tensor, s2: torch.Tensor, ratio: float) -> torch.Tensor:
    """Blend the per-position channel directions by `ratio` (1 = all s1) and the vector lengths linearly."""
    m1, m2 = channel_norm(s1), channel_norm(s2)
    mixed = torch.nan_to_num(s1 / m1) * ratio + torch.nan_to_num(s2 / m2) * (1.0 - ratio)
    return torch.nan_to_num(mixed / channel_norm(mixed)) * (m1 * ratio + m2 * (1.0 - ratio))


def _axis(dim: str, ndim: int) -> int:
    """x / y / t → tensor dim of a [B, C, (T,) h, w] latent; t needs a video latent."""
    if "t" in dim:
        if ndim < 5:
            raise ValueError(f"dim {dim!r} needs a video latent [B, C, T, h, w]; this one has shape of {ndim} dims")
        return ndim - 3
    return ndim - 1 if "x" in dim else ndim - 2


def concat(s1: torch.Tensor, s2: torch.Tensor, dim: str) -> torch.Tensor:
    """s2 (batch fitted to s1) appended after s1 along x / y / t, or before it for "-x" / "-y" / "-t"."""
    s2 = fit_batch(s2, s1.shape[0])
    axis = _axis(dim, s1.ndim)
    parts = (s2, s1) if dim.startswith("-") else (s1, s2)
    try:
        return torch.cat(parts, dim=axis)
    except RuntimeError as exc:
        raise ValueError(f"cannot concatenate latents of shapes {tuple(s1.shape)} and {tuple(s2.shape)} along "
                         f"{dim!r}: the other dimensions must match") from exc


def cut(samples: torch.Tensor, dim: str, index: int, amount: int) -> torch.Tensor:
    """`amount` entries from `index` (negative counts from the end) along x / y / t, clamped to the latent."""
    axis = _axis(dim, samples.ndim)
    size = samples.shape[axis]
    if index >= 0:
        index = min(index, size - 1)
        amount = min(size - index, amount)
    else:
        index = max(index, -size)
        amount = min(-index, amount)
    return torch.narrow(samples, axis, index, amount).clone()


def _made_like(name: str):
    """An estimate for nodes whose output is a fresh tensor the size of input `name`."""
    @classmethod
    def estimate(cls, inputs, upstream, services=None):
        return costs.made(upstream.get(name))
    return estimate


class LatentAdd(Node):
    """Add two latents (the second resized and batch-fitted to the first)."""

    CATEGORY = "latent/advanced"
    RETURNS = (Output("LATENT"),)
    samples1: Latent
    samples2: Latent
    estimate = _made_like("samples1")

    def execute(self, ctx) -> tuple:
        s1 = samples_of(self.samples1, "samples1")
        return (with_samples(self.samples1, s1 + reshape_like(s1, samples_of(self.samples2, "samples2"))),)


class LatentSubtract(LatentAdd):
    """Subtract the second latent from the first (the second resized and batch-fitted to the first)."""

    def execute(self, ctx) -> tuple:
        s1 = samples_of(self.samples1, "samples1")
        return (with_samples(self.samples1, s1 - reshape_like(s1, samples_of(self.samples2, "samples2"))),)


class LatentMultiply(Node):
    """Multiply a latent by a number."""

    CATEGORY = "latent/advanced"
    RETURNS = (Output("LATENT"),)
    samples: Latent
    multiplier: Annotated[float, Float(min=-10.0, max=10.0, step=0.01)] = 1.0
    estimate = _made_like("samples")

    def execute(self, ctx) -> tuple:
        return (with_samples(self.samples, samples_of(self.samples) * self.multiplier),)


class LatentInterpolate(Node):
    """Interpolate two latents: directions and lengths of the channel vectors blended by ratio (1 = samples1)."""

    CATEGORY = "latent/advanced"
    RETURNS = (Output("LATENT"),)
    samples1: Latent
    samples2: Latent
    ratio: Annotated[float, Float(min=0.0, max=1.0, step=0.01)] = 1.0
    estimate = _made_like("samples1")

    def execute(self, ctx) -> tuple:
        s1 = samples_of(self.samples1, "samples1")
        s2 = reshape_like(s1, samples_of(self.samples2, "samples2"))
        return (with_samples(self.samples1, interpolate(s1, s2, self.ratio)),)


class LatentConcat(Node):
    """Join two latents side by side along x, y or t ("-" puts samples2 first)."""

    CATEGORY = "latent/advanced"
    RETURNS = (Output("LATENT"),)
    samples1: Latent
    samples2: Latent
    dim: Annotated[str, Combo(CONCAT_DIMS)]

    @classmethod
    def estimate(cls, inputs, upstream, services=None):
        a, b = upstream.get("samples1"), upstream.get("samples2")
        if a is None or b is None:
            return None
        dim = inputs.get("dim") or "x"
        width = a["width"] + (b["width"] if "x" in dim else 0)
        height = a["height"] + (b["height"] if "y" in dim else 0)
        return costs.made(costs.resized(a, width, height))

    def execute(self, ctx) -> tuple:
        s1 = samples_of(self.samples1, "samples1")
        return (with_samples(self.samples1, concat(s1, samples_of(self.samples2, "samples2"), self.dim)),)


class LatentCut(Node):
    """Keep `amount` rows, columns or frames of a latent starting at `index` (negative counts from the end)."""

    CATEGORY = "latent/advanced"
    RETURNS = (Output("LATENT"),)
    samples: Latent
    dim: Annotated[str, Combo(CUT_DIMS)]
    index: Annotated[int, Int(min=-MAX_RESOLUTION, max=MAX_RESOLUTION)] = 0
    amount: Annotated[int, Int(min=1, max=MAX_RESOLUTION)] = 1

    def execute(self, ctx) -> tuple:
        return (with_samples(self.samples, cut(samples_of(self.samples), self.dim, self.index, self.amount)),)


NODE_CLASSES = [LatentAdd, LatentSubtract, LatentMultiply, LatentInterpolate, LatentConcat, LatentCut]
