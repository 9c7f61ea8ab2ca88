"""UNetSelfAttentionMultiply, UNetCrossAttentionMultiply and CLIPAttentionMultiply (ComfyUI's nodes).

ComfyUI scales the weight and bias of the attention projections; a linear layer's output scales the same way, so
the patch is a forward hook on each matching projection that multiplies its output (a factor of 1 adds no hook).
Weight patches (LoRA) are applied before module patches, so a LoRA's delta is scaled too."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, ClassVar

import torch

from graphengine import Float, Node, Output

from ..types import Clip, Model
from . import required
from .hooks import hook_set

UNET_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")
CLIP_PROJECTIONS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj")


@dataclass(frozen=True, eq=False)
class ProjectionScale:
    """Multiplies the output of every submodule whose path ends with one of `factors`' suffixes by its factor."""

    factors: tuple[tuple[str, float], ...]  # (module path suffix, factor)

    def matches(self, module: torch.nn.Module) -> list[tuple[torch.nn.Module, float]]:
        found = []
        for name, sub in module.named_modules():
            for suffix, factor in self.factors:
                if factor != 1.0 and (name == suffix or name.endswith("." + suffix)):
                    found.append((sub, factor))
        return found

    @contextlib.contextmanager
    def applied(self, module: torch.nn.Module) -> Iterator[None]:
        with hook_set() as hooks:
            for sub, factor in self.matches(module):
                hooks.map_output(sub, lambda out, factor=factor: out * factor)
            yield


def projection_scale(prefix: str, suffixes: tuple[str, ...], q: float, k: float, v: float,
                     out: float) -> ProjectionScale:
    return ProjectionScale(tuple((f"{prefix}{s}", f) for s, f in zip(suffixes, (q, k, v, out))))


Factor = Annotated[float, Float(min=0.0, max=10.0, step=0.01)]
CATEGORY = "_for_testing/attention_experiments"


class UNetSelfAttentionMultiply(Node):
    """Scales the query, key, value and output projections of the UNet's self-attention layers."""

    CATEGORY = CATEGORY
    RETURNS = (Output("MODEL"),)
    ATTENTION: ClassVar[str] = "attn1."

    model: Model
    q: Factor = 1.0
    k: Factor = 1.0
    v: Factor = 1.0
    out: Factor = 1.0

    def execute(self, ctx) -> tuple:
        model = required(self.model, "MODEL", type(self).__name__)
        return (model.with_module_patch(projection_scale(self.ATTENTION, UNET_PROJECTIONS, self.q, self.k, self.v,
                                                         self.out)),)


class UNetCrossAttentionMultiply(UNetSelfAttentionMultiply):
    """Scales the query, key, value and output projections of the UNet's cross-attention layers."""

    ATTENTION: ClassVar[str] = "attn2."


class CLIPAttentionMultiply(Node):
    """Scales the query, key, value and output projections of the text encoders' self-attention layers."""

    CATEGORY = CATEGORY
    RETURNS = (Output("CLIP"),)

    clip: Clip
    q: Factor = 1.0
    k: Factor = 1.0
    v: Factor = 1.0
    out: Factor = 1.0

    def execute(self, ctx) -> tuple:
        clip = required(self.clip, "CLIP", "CLIPAttentionMultiply")
        return (clip.with_module_patch(projection_scale("", CLIP_PROJECTIONS, self.q, self.k, self.v, self.out)),)


NODE_CLASSES = [UNetSelfAttentionMultiply, UNetCrossAttentionMultiply, CLIPAttentionMultiply]
