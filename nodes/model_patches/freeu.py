"""FreeU and FreeU_V2 (ComfyUI's nodes) as module patches on the MODEL handle.

At every up-path resnet whose backbone input `h` has 4× the model's base width (b1, s1) or 2× (b2, s2), as ComfyUI
selects them: the first half of h's channels is scaled (V1: by b; V2: by (b - 1) · m + 1 with m the channel-mean
map of h min-max normalised per sample) and the skip is Fourier-filtered (low frequencies, threshold 1, times s).
diffusers' own FreeU (`enable_freeu`) has the V1 block math but picks blocks by up-block index (first two up
blocks) rather than by width, and switches itself off when any factor is 0, so both versions are hooks here: a
pre-hook on each selected resnet rewrites its `cat([h, skip])` input."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from typing import Annotated, ClassVar

import torch
from diffusers.utils.torch_utils import fourier_filter

from graphengine import Float, Node, Output

from ..types import Model
from . import required
from .hooks import hook_set
from .layout import model_channels, up_resnet_backbones

FILTER_THRESHOLD = 1


def scaled_backbone(h: torch.Tensor, b: float, version: int) -> torch.Tensor:
    """h with its first half of channels scaled by FreeU's backbone factor."""
    half = h.shape[1] // 2
    if version == 1:
        factor = b
    else:
        mean = h.mean(1, keepdim=True)
        flat = mean.flatten(1)
        low = flat.min(-1).values.view(-1, 1, 1, 1)
        high = flat.max(-1).values.view(-1, 1, 1, 1)
        # A constant map (a 1x1 level) has no range: ComfyUI's division gives NaN there, this leaves h unscaled.
        spread = high - low
        normalised = torch.where(spread > 0, (mean - low) / spread.clamp_min(torch.finfo(h.dtype).tiny), 0.0)
        factor = (b - 1) * normalised + 1
    return torch.cat([h[:, :half] * factor, h[:, half:]], dim=1)


@dataclass(frozen=True, eq=False)
class FreeUPatch:
    """FreeU (version 1 or 2) with backbone factors b1/b2 and skip factors s1/s2."""

    b1: float
    b2: float
    s1: float
    s2: float
    version: int = 1

    def factors(self, unet: torch.nn.Module) -> dict[int, tuple[float, float]]:
        """Backbone width -> (b, s)."""
        width = model_channels(unet)
        return {4 * width: (self.b1, self.s1), 2 * width: (self.b2, self.s2)}

    def joined(self, width: int, b: float, s: float, x: torch.Tensor) -> torch.Tensor:
        """The patched `cat([h, skip])` for a resnet whose h has `width` channels."""
        h, skip = x[:, :width], x[:, width:]
        filtered = fourier_filter(skip.contiguous(), FILTER_THRESHOLD, s)
        return torch.cat([scaled_backbone(h, b, self.version), filtered], dim=1)

    @contextlib.contextmanager
    def applied(self, unet: torch.nn.Module) -> Iterator[None]:
        factors = self.factors(unet)
        with hook_set() as hooks:
            for resnet, width in up_resnet_backbones(unet):
                if width in factors:
                    hooks.map_input(resnet, partial(self.joined, width, *factors[width]))
            yield


Factor = Annotated[float, Float(min=0.0, max=10.0, step=0.01)]


class FreeU(Node):
    """FreeU: boosts the UNet's backbone features and damps the low frequencies of its skip connections."""

    CATEGORY = "model_patches/unet"
    RETURNS = (Output("MODEL"),)
    VERSION: ClassVar[int] = 1

    model: Model
    b1: Factor = 1.1
    b2: Factor = 1.2
    s1: Factor = 0.9
    s2: Factor = 0.2

    def execute(self, ctx) -> tuple:
        patch = FreeUPatch(self.b1, self.b2, self.s1, self.s2, version=self.VERSION)
        return (required(self.model, "MODEL", type(self).__name__).with_module_patch(patch),)


class FreeU_V2(FreeU):  # noqa: N801 (ComfyUI's class name)
    """FreeU v2: the backbone boost follows each sample's normalised mean feature map."""

    VERSION: ClassVar[int] = 2

    b1: Factor = 1.3
    b2: Factor = 1.4


NODE_CLASSES = [FreeU, FreeU_V2]
