"""Latent batches (ComfyUI's LatentBatch, LatentBatchSeedBehavior, RebatchLatents). `batch_index` tells the sampler
which index of the seeded noise batch each latent takes, so these nodes keep or set it deliberately."""

from __future__ import annotations

from typing import Annotated, Any, Callable

import torch
import torch.nn.functional as F

from graphengine import Combo, Int, Node, Output

from . import costs
from .latent_ops import fit_batch, reshape_like, samples_of
from .types import Latent

LATENT_SCALE = 8
SEED_BEHAVIORS = ["random", "fixed"]


def batch_indices(latent: dict, samples: torch.Tensor, offset: int = 0) -> list[int]:
    """The latent's batch_index, or offset, offset + 1, … when it has none."""
    indices = latent.get("batch_index")
    return list(indices) if indices is not None else list(range(offset, offset + samples.shape[0]))


def batch_latents(first: dict, second: dict) -> dict:
    """The second batch (resized to the first's size) appended to the first; batch indices of both kept."""
    s1, s2 = samples_of(first, "samples1"), samples_of(second, "samples2")
    s2 = reshape_like(s1, s2, repeat_batch=False)
    return {**first, "samples": torch.cat((s1, s2)),
            "batch_index": batch_indices(first, s1) + batch_indices(second, s2)}


def seed_behavior(latent: dict, behavior: str) -> dict:
    """"random": drop batch_index (each latent its own noise); "fixed": every latent takes the first one's noise."""
    out = dict(latent)
    if behavior == "random":
        out.pop("batch_index", None)
    else:
        first = (latent.get("batch_index") or [0])[0]
        out["batch_index"] = [first] * samples_of(latent).shape[0]
    return out


def pixel_masks(latent: dict, samples: torch.Tensor) -> torch.Tensor:
    """The noise mask as [B, 1, 8h, 8w] covering the batch (all ones when there is none)."""
    batch, height, width = samples.shape[0], samples.shape[-2] * LATENT_SCALE, samples.shape[-1] * LATENT_SCALE
    mask = latent.get("noise_mask")
    if not isinstance(mask, torch.Tensor):
        return torch.ones((batch, 1, height, width))
    mask = mask.reshape(-1, 1, *mask.shape[-2:]).float()
    if tuple(mask.shape[-2:]) != (height, width):
        mask = F.interpolate(mask, size=(height, width), mode="bilinear")
    return fit_batch(mask, batch) if mask.shape[0] < batch else mask


def _part(group: list[Any], start: int, size: int) -> dict:
    samples, masks, indices = group
    return {"samples": samples[start:start + size], "noise_mask": masks[start:start + size],
            "batch_index": indices[start:start + size]}


def rebatch(latents: list[dict], batch_size: int, interrupt: Callable[[], None]) -> list[dict]:
    """Latents regrouped into batches of `batch_size`, in order; a change of latent size starts a new batch.
    Noise masks and batch indices follow their latents; all-ones masks are dropped."""
    out: list[dict] = []
    group: list[Any] | None = None  # [samples, masks, batch indices] not yet emitted
    processed = 0
    for latent in latents:
        interrupt()
        samples = samples_of(latent, "latents")
        item = [samples, pixel_masks(latent, samples), batch_indices(latent, samples, processed)]
        processed += len(item[2])
        if group is None:
            group = item
        elif samples.shape[-2:] != group[0].shape[-2:]:
            out.append(_part(group, 0, batch_size))
            group = item
        else:
            group = [torch.cat((group[0], item[0])), torch.cat((group[1], item[1])), group[2] + item[2]]
        if group[0].shape[0] > batch_size:
            full = group[0].shape[0] // batch_size
            out.extend(_part(group, i * batch_size, batch_size) for i in range(full))
            rest = full * batch_size
            group = [group[0][rest:], group[1][rest:], group[2][rest:]] if group[0].shape[0] > rest else None
    if group is not None:
        out.append(_part(group, 0, batch_size))
    for entry in out:
        if entry["noise_mask"].mean() == 1.0:
            del entry["noise_mask"]
    return out


class LatentBatch(Node):
    """Join two latent batches into one (samples2 resized to samples1's size)."""

    CATEGORY = "latent/batch"
    RETURNS = (Output("LATENT"),)
    samples1: Latent
    samples2: Latent

    @classmethod
    def estimate(cls, inputs, upstream, services=None):
        a, b = upstream.get("samples1"), upstream.get("samples2")
        return costs.made(costs.resized(a, batch=a["batch"] + b["batch"])) if a and b else None

    def execute(self, ctx) -> tuple:
        return (batch_latents(self.samples1, self.samples2),)


class LatentBatchSeedBehavior(Node):
    """Choose whether the latents of a batch get distinct noise (random) or the first one's (fixed)."""

    CATEGORY = "latent/advanced"
    RETURNS = (Output("LATENT"),)
    samples: Latent
    seed_behavior: Annotated[str, Combo(SEED_BEHAVIORS)] = "fixed"

    def execute(self, ctx) -> tuple:
        return (seed_behavior(self.samples, self.seed_behavior),)


class RebatchLatents(Node):
    """Regroup a list of latent batches into batches of batch_size."""

    DISPLAY_NAME = "Rebatch Latents"
    CATEGORY = "latent/batch"
    INPUT_IS_LIST = True
    RETURNS = (Output("LATENT", is_list=True),)
    latents: Latent
    batch_size: Annotated[int, Int(min=1, max=4096)] = 1

    def execute(self, ctx) -> tuple:
        return (rebatch(list(self.latents), int(self.batch_size[0]), ctx.check_cancelled),)


NODE_CLASSES = [LatentBatch, LatentBatchSeedBehavior, RebatchLatents]
