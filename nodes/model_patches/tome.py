"""TomePatchModel (ComfyUI's node): token merging (ToMe for SD) on the UNet's self-attention, as a module patch.

As in ComfyUI, only self-attention (attn1) whose token count is the latent's (h·w, the top resolution level) is
patched, and only its queries are merged: the attention runs on N - r query rows (r = int(N · ratio)) against all
N tokens as keys and values, and its output is unmerged back to N tokens. The matching's metric is the attention
input itself, destinations are picked one per 2×2 window at random, from a generator seeded afresh for each patched
run (ComfyUI draws from torch's global generator), so the same graph gives the same result."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

import torch

from graphengine import Float, Node, Output

from ..types import Model
from . import required
from .hooks import around_self_attention, hook_set, track_sample_size
from .token_merging import Matching, bipartite_matching, merge, unmerge

STRIDE = 2  # destination windows are STRIDE × STRIDE tokens
MAX_DOWNSAMPLE = 1  # patch only levels whose downsampling (ceil sqrt of the token ratio) is at most this
MERGE_SEED = 0


def top_level(tokens: int, latent_hw: tuple[int, int]) -> bool:
    """Whether an attention input of `tokens` tokens is at a patched level (ComfyUI's downsample test)."""
    height, width = latent_hw
    return tokens > 0 and math.ceil(math.sqrt(height * width // tokens)) <= MAX_DOWNSAMPLE


@dataclass(frozen=True, eq=False)
class TomePatch:
    """Merges a `ratio` of the top-level self-attention queries before attn1 and unmerges its output after."""

    ratio: float

    def matching(self, x: torch.Tensor, latent_hw: tuple[int, int], generator: torch.Generator) -> Matching | None:
        height, width = latent_hw
        if x.shape[1] != height * width or not top_level(x.shape[1], latent_hw):
            return None
        return bipartite_matching(x, height, width, int(x.shape[1] * self.ratio), sy=STRIDE, sx=STRIDE,
                                  generator=generator)

    @contextlib.contextmanager
    def applied(self, unet: torch.nn.Module) -> Iterator[None]:
        if self.ratio <= 0:
            yield
            return
        generator = torch.Generator().manual_seed(MERGE_SEED)

        with hook_set() as hooks:
            sample_size = track_sample_size(hooks, unet)

            def merged_queries(x: torch.Tensor):
                matching = self.matching(x, sample_size(), generator)
                return None if matching is None else (merge(x, matching), x, matching)

            around_self_attention(hooks, unet, merged_queries, unmerge)
            yield

class TomePatchModel(Node):
    """Token merging (ToMe): merges similar high-resolution self-attention queries, which is faster on large images."""

    CATEGORY = "_for_testing"
    RETURNS = (Output("MODEL"),)

    model: Model
    ratio: Annotated[float, Float(min=0.0, max=1.0, step=0.01)] = 0.3

    def execute(self, ctx) -> tuple:
        return (required(self.model, "MODEL", "TomePatchModel").with_module_patch(TomePatch(self.ratio)),)


NODE_CLASSES = [TomePatchModel]
