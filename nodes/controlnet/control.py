"""CONTROL_NET values, ControlNets applied to conditioning, and the residuals they add inside the UNet.

A CONTROL_NET is a `ControlNetHandle`: a manager reference to a diffusers `ControlNetModel` or `T2IAdapter`.
`ControlNetApplyAdvanced` puts a `ControlLink` in a conditioning entry's `control` (ComfyUI's key): the net, the hint
image, strength and [start_percent, end_percent], and the link it stacks on (`previous`, ComfyUI's
`previous_controlnet`). At every network call the sampler binds an entry's chain to the call (`ControlLink.bind`):
links whose percent range holds the current sigma (mapped through the model's `percent_to_sigma`, as
ConditioningSetTimestepRange) get their hint resized to the pass's latent size x 8 ("nearest-exact", centre crop) and
repeated to the call's batch; the UNet then asks the bound `ControlCall` for residuals: a ControlNet's down and mid
residuals (scaled by its strength) go to `down_block_additional_residuals` / `mid_block_additional_residual`, a
T2I-Adapter's features (scaled) to `down_intrablock_additional_residuals`, as diffusers' pipelines pass them; stacked
links are summed. A chain with no active link binds to None, so those steps run exactly as without ControlNet.
A T2I-Adapter's features depend on its hint alone, not on the step: a sampling run gives its conditionings' chains
one `AdapterFeatures` (`ControlLink.for_run`), and each adapter runs once per (link, latent size, batch rows) in
that run.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..handles import LATENT_DOWNSCALE, held_bytes, live_module, module_device_dtype, on_compute_device
from ..imageio import common_upscale
from ..samplers.conds import repeat_to_batch
from .load import BASE_NAMES, base_of_config

HINT_UPSCALE = "nearest-exact"
# T2I-Adapters made for SD1.x also fit SD2.x UNets (same widths), as in ComfyUI.
ADAPTER_BASES = {"sd1": ("sd1", "sd2"), "sdxl": ("sdxl",)}


def _family(base: str | None) -> str:
    return BASE_NAMES.get(base, "an unknown family")


def _width(value: Any) -> int:
    return int(value[0] if isinstance(value, (list, tuple)) else value)


@dataclass
class Residuals:
    """What ControlNets (down/mid) and T2I-Adapters (intrablock) add inside one UNet call."""

    down: list[torch.Tensor] | None = None
    mid: torch.Tensor | None = None
    intrablock: list[torch.Tensor] | None = None

    def plus(self, other: Residuals) -> Residuals:
        def add_lists(a, b):
            return b if a is None else a if b is None else [x + y for x, y in zip(a, b, strict=True)]
        mid = other.mid if self.mid is None else self.mid if other.mid is None else self.mid + other.mid
        return Residuals(add_lists(self.down, other.down), mid, add_lists(self.intrablock, other.intrablock))

    def unet_kwargs(self, dtype: torch.dtype) -> dict:
        kwargs: dict[str, Any] = {}
        if self.down is not None:
            kwargs["down_block_additional_residuals"] = [r.to(dtype) for r in self.down]
            kwargs["mid_block_additional_residual"] = self.mid.to(dtype)
        if self.intrablock is not None:  # a fresh list: the UNet pops from it
            kwargs["down_intrablock_additional_residuals"] = [r.to(dtype) for r in self.intrablock]
        return kwargs


@dataclass(frozen=True, eq=False)
class ControlNetHandle:
    """CONTROL_NET: a ControlNetModel or T2IAdapter held through the model manager (`source`: a ModelRef or the
    module), its file name for messages, and the union control type set by SetUnionControlNetType."""

    source: Any
    name: str
    manager: Any = None
    union_type: int | None = None

    @property
    def config(self) -> Any:
        return self.source.config

    @property
    def kind(self) -> str:
        return "t2i_adapter" if "adapter_type" in self.config else "controlnet"

    @property
    def what(self) -> str:
        return "T2I-Adapter" if self.kind == "t2i_adapter" else "ControlNet"

    @property
    def nbytes(self) -> int:
        return held_bytes(self.source)

    @property
    def module(self) -> torch.nn.Module:
        return live_module(self.source)

    @property
    def base(self) -> str | None:
        if self.kind == "t2i_adapter":
            return "sdxl" if self.config["adapter_type"] == "full_adapter_xl" else "sd1"
        return base_of_config(self.config)

    @property
    def hint_channels(self) -> int:
        key = "in_channels" if self.kind == "t2i_adapter" else "conditioning_channels"
        return int(self.config[key])

    def with_union_type(self, union_type: int | None) -> ControlNetHandle:
        return dataclasses.replace(self, union_type=union_type)

    def _feature_widths(self) -> list[int]:
        config = self.config
        if self.kind == "t2i_adapter":
            channels = list(config["channels"])
            return channels + channels[-1:] if config["adapter_type"] == "light_adapter" else channels
        return list(config["block_out_channels"])

    def check_model(self, model: Any) -> None:
        """A clear error when this net was made for another model family (or structure) than `model`'s."""
        unet_config = model.unet_source.config
        mine, theirs = self.base, base_of_config(unet_config)
        allowed = ADAPTER_BASES.get(mine, (mine,)) if self.kind == "t2i_adapter" else (mine,)
        widths = list(unet_config["block_out_channels"])
        fits = all(w == widths[min(i, len(widths) - 1)] for i, w in enumerate(self._feature_widths()))
        if self.kind == "controlnet":
            fits = fits and len(widths) == len(self._feature_widths()) and all(
                self.config.get(k) == unet_config.get(k) for k in ("layers_per_block", "addition_embed_type")) \
                and _width(self.config["cross_attention_dim"]) == _width(unet_config["cross_attention_dim"])
        if (mine is not None and theirs is not None and theirs not in allowed) or not fits:
            raise ValueError(f"{self.what} {self.name!r} is for {_family(mine)} models (widths "
                             f"{self._feature_widths()}), but the model is {_family(theirs)} "
                             f"({getattr(model, 'family', 'unknown')}, widths {widths}): they cannot be combined")

    def hint_size(self, height: int, width: int) -> tuple[int, int]:
        """Hint pixels for a latent of height x width: x 8, rounded up to the adapter's pixel-unshuffle factor."""
        multiple = int(self.config["downscale_factor"]) if self.kind == "t2i_adapter" else 1
        return (math.ceil(height * LATENT_DOWNSCALE / multiple) * multiple,
                math.ceil(width * LATENT_DOWNSCALE / multiple) * multiple)

    def residuals(self, hint: torch.Tensor, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                  added: dict | None, strength: float) -> Residuals:
        """This net's residuals for a UNet call (x: the c_in-scaled latent rows, without concat channels)."""
        with on_compute_device(self.manager, self.source) as net, torch.no_grad():
            device, dtype = module_device_dtype(net)
            hint = hint.to(device, dtype)
            if self.kind == "t2i_adapter":
                return Residuals(intrablock=adapter_features(net, hint, x.shape[-2:], strength))
            added = {k: v.to(device, dtype) for k, v in added.items()} if added is not None else None
            down, mid = net(x.to(device, dtype), t.to(device), context.to(device, dtype), hint,
                            conditioning_scale=strength, added_cond_kwargs=added, return_dict=False)
            return Residuals(down=list(down), mid=mid)


def adapter_features(adapter: torch.nn.Module, hint: torch.Tensor, latent_size: torch.Size,
                     strength: float) -> list[torch.Tensor]:
    """A T2I-Adapter's features for `hint`, scaled by `strength` and cut to the UNet levels of `latent_size`."""
    return [_crop_feature(f * strength, latent_size, hint.shape[-2]) for f in adapter(hint)]


def _crop_feature(feature: torch.Tensor, latent_size: torch.Size, hint_height: int) -> torch.Tensor:
    """An adapter feature cut to the size of the UNet level it joins (the hint may have been rounded up)."""
    levels = round(math.log2(hint_height / (LATENT_DOWNSCALE * feature.shape[-2])))
    height, width = (math.ceil(int(s) / 2 ** levels) for s in latent_size)
    return feature[..., :height, :width]


def fit_channels(hint: torch.Tensor, channels: int) -> torch.Tensor:
    """[B,C,H,W] hint -> `channels` channels: grey as the mean, grey to RGB by repetition, extra channels dropped."""
    if hint.shape[1] == channels:
        return hint
    if channels == 1:
        return hint[:, :3].mean(dim=1, keepdim=True)
    if hint.shape[1] == 1:
        return hint.repeat(1, channels, 1, 1)
    return hint[:, :channels]


def broadcast_hint(hint: torch.Tensor, batch: int, groups: int) -> torch.Tensor:
    """The hint for a call of `batch` rows made of `groups` equal passes (e.g. uncond + cond): one image for all,
    else each pass's rows take the hint's images in order (cycled, or cut)."""
    if hint.shape[0] == 1:
        return hint.expand(batch, -1, -1, -1)
    return repeat_to_batch(hint, batch // groups).repeat(groups, 1, 1, 1)


@dataclass(frozen=True, eq=False)
class ControlLink:
    """One ControlNet applied to a conditioning entry, stacked on `previous` (the entry's earlier control)."""

    net: ControlNetHandle
    hint: torch.Tensor  # [B, C, H, W], 0..1
    strength: float
    start_percent: float = 0.0
    end_percent: float = 1.0
    previous: ControlLink | None = None
    features: AdapterFeatures | None = None  # a sampling run's T2I-Adapter features (see `for_run`)

    def chain(self) -> list[ControlLink]:
        """Every link of the stack, the first applied first."""
        links, link = [], self
        while link is not None:
            links.append(link)
            link = link.previous
        return links[::-1]

    def held_values(self) -> list:
        """What the link keeps alive (for the result cache's size): the hint, the handle and the stack below."""
        return [self.hint, self.net, self.previous]

    def active(self, sigma: float, percent_to_sigma: Callable[[float], float]) -> bool:
        return percent_to_sigma(self.end_percent) <= sigma <= percent_to_sigma(self.start_percent)

    def prepared_hint(self, height: int, width: int, batch: int, groups: int) -> torch.Tensor:
        hint_h, hint_w = self.net.hint_size(height, width)
        hint = common_upscale(self.hint.to(torch.float32), hint_w, hint_h, HINT_UPSCALE, "center")
        return broadcast_hint(fit_channels(hint, self.net.hint_channels), batch, groups)

    def for_run(self, run: dict) -> ControlLink:
        """This chain for one sampling run: its T2I-Adapter links share the run's `AdapterFeatures`. `run` is one
        dict per run; it keeps the rebuilt links, so a chain that several entries share stays one object."""
        key = ("control link", id(self))  # the run's conditionings hold every link for the whole run
        if key not in run:
            previous = None if self.previous is None else self.previous.for_run(run)
            features = run.setdefault("adapter features", AdapterFeatures()) \
                if self.net.kind == "t2i_adapter" else None
            run[key] = self if previous is self.previous and features is None else \
                dataclasses.replace(self, previous=previous, features=features)
        return run[key]

    def bind(self, sigma: float, percent_to_sigma: Callable[[float], float], height: int, width: int, batch: int,
             groups: int) -> ControlCall | None:
        """The chain's active links for one network call over a height x width latent window (None: none active)."""
        links = [link for link in self.chain() if link.active(sigma, percent_to_sigma)]
        if not links:
            return None
        return ControlCall(tuple((link, link.prepared_hint(height, width, batch, groups)) for link in links),
                           (height, width, batch, groups))


class AdapterFeatures:
    """One sampling run's T2I-Adapter residuals, by (link, latent size, batch, groups, rows): the adapter runs once
    for each and every later step reuses its features (they depend on the hint, not on the step)."""

    def __init__(self) -> None:
        self._residuals: dict[tuple, tuple[torch.Tensor, ...]] = {}

    def residuals(self, key: tuple, compute: Callable[[], Residuals]) -> Residuals:
        if key not in self._residuals:
            self._residuals[key] = tuple(compute().intrablock)
        return Residuals(intrablock=list(self._residuals[key]))


@dataclass(frozen=True)
class ControlCall:
    """The active links of a chain bound to one network call, with their hints at the call's size and batch."""

    links: tuple[tuple[ControlLink, torch.Tensor], ...]
    shape: tuple[int, int, int, int] = (0, 0, 0, 0)  # the call's (latent height, width, batch, groups)

    def check_model(self, model: Any) -> None:
        for link, _ in self.links:
            link.net.check_model(model)

    def unet_kwargs(self, rows: slice, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, added: dict | None,
                    dtype: torch.dtype) -> dict:
        """UNet keyword arguments with the summed residuals of every active link, for the batch rows `rows`."""
        total = Residuals()
        for link, hint in self.links:
            def compute(link=link, hint=hint) -> Residuals:
                return link.net.residuals(hint[rows], x, t, context, added, link.strength)
            if link.features is not None:
                key = (link, *self.shape, rows.start, rows.stop, rows.step, x.device, dtype)
                total = total.plus(link.features.residuals(key, compute))
            else:
                total = total.plus(compute())
        return total.unet_kwargs(dtype)
