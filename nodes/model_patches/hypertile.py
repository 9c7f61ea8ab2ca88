"""HyperTile (ComfyUI's node) as a module patch on the MODEL handle.

Self-attention (attn1) at the top `max_depth + 1` resolutions runs tile by tile: the query tokens [B, h·w, C] are
split into nh × nw tiles (batched as B·nh·nw sequences), each attending to the matching contiguous run of h·w/(nh·nw)
tokens as keys and values (what ComfyUI's patch amounts to), and the output is put back in place. The
tile counts are `dim // d` for one of the `swap_size` smallest divisors d >= the latent tile size (tile_size / 8,
at least 4; × 2^depth with `scale_depth`), picked at random as ComfyUI does, but from a generator seeded afresh for
each patched run so that the same graph gives the same result. As in ComfyUI, h and w are sqrt(tokens × W/H) and
sqrt(tokens × H/W) of the latent's aspect ratio."""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

import torch

from graphengine import Boolean, Int, Node, Output

from ..types import Model
from . import required
from .hooks import around_self_attention, hook_set, track_sample_size

MIN_TILE_PIXELS = 32
LATENT_DOWNSCALE = 8
TILE_SEED = 0


def tile_count(value: int, min_size: int, options: int, rng: random.Random) -> int:
    """value // d for one of the `options` smallest divisors d of value that are >= min(min_size, value)."""
    floor = min(min_size, value)
    counts = [value // d for d in range(floor, value + 1) if value % d == 0][:options]
    return counts[rng.randint(0, len(counts) - 1)] if len(counts) > 1 else counts[0]


def to_tiles(x: torch.Tensor, nh: int, nw: int, h: int, w: int) -> torch.Tensor:
    """[B, h·w, C] -> [B·nh·nw, (h/nh)·(w/nw), C]."""
    b, _, c = x.shape
    x = x.reshape(b, nh, h // nh, nw, w // nw, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b * nh * nw, (h // nh) * (w // nw), c)


def from_tiles(x: torch.Tensor, nh: int, nw: int, h: int, w: int) -> torch.Tensor:
    """The inverse of `to_tiles`."""
    c = x.shape[-1]
    x = x.reshape(-1, nh, nw, h // nh, w // nw, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h * w, c)


@dataclass(frozen=True, eq=False)
class HyperTilePatch:
    """Tiled self-attention at the UNet's top `max_depth + 1` resolutions."""

    tile_size: int
    swap_size: int
    max_depth: int
    scale_depth: bool

    def grid(self, tokens: int, latent_hw: tuple[int, int], rng: random.Random) -> tuple[int, int, int, int] | None:
        """(nh, nw, h, w) for an attention input of `tokens` tokens, or None to leave it whole."""
        height, width = latent_hw
        areas = [(height / 2 ** i) * (width / 2 ** i) for i in range(self.max_depth + 1)]
        if tokens not in areas:
            return None
        aspect = width / height
        h, w = round(math.sqrt(tokens * aspect)), round(math.sqrt(tokens / aspect))
        scale = 2 ** areas.index(tokens) if self.scale_depth else 1
        latent_tile = max(MIN_TILE_PIXELS, self.tile_size) // LATENT_DOWNSCALE * scale
        nh = tile_count(h, latent_tile, self.swap_size, rng)
        nw = tile_count(w, latent_tile, self.swap_size, rng)
        return (nh, nw, h, w) if nh * nw > 1 else None

    @contextlib.contextmanager
    def applied(self, unet: torch.nn.Module) -> Iterator[None]:
        rng = random.Random(TILE_SEED)

        with hook_set() as hooks:
            sample_size = track_sample_size(hooks, unet)

            def tiled(x: torch.Tensor):
                grid = self.grid(int(x.shape[1]), sample_size(), rng)
                if grid is None:
                    return None
                tiles = to_tiles(x, *grid)
                # ComfyUI tiles only the queries; its attention then views the untiled keys/values with the tiled
                # batch size, so tile i attends to the i-th contiguous run of tokens. Passing that run as the context
                # gives the same attention.
                return tiles, x.reshape(tiles.shape[0], -1, x.shape[-1]), grid

            around_self_attention(hooks, unet, tiled, lambda output, grid: from_tiles(output, *grid))
            yield

class HyperTile(Node):
    """HyperTile: runs the UNet's high-resolution self-attention on tiles, which is faster on large images."""

    CATEGORY = "model_patches/unet"
    RETURNS = (Output("MODEL"),)

    model: Model
    tile_size: Annotated[int, Int(min=1, max=2048)] = 256
    swap_size: Annotated[int, Int(min=1, max=128)] = 2
    max_depth: Annotated[int, Int(min=0, max=10)] = 0
    scale_depth: Annotated[bool, Boolean()] = False

    def execute(self, ctx) -> tuple:
        patch = HyperTilePatch(self.tile_size, self.swap_size, self.max_depth, self.scale_depth)
        return (required(self.model, "MODEL", "HyperTile").with_module_patch(patch),)


NODE_CLASSES = [HyperTile]
