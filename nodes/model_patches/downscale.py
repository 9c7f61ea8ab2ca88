"""PatchModelAddDownscale (Kohya Deep Shrink, ComfyUI's node) as a module patch on the MODEL handle.

While the current sigma lies in [sigma(end_percent), sigma(start_percent)], the hidden state after ComfyUI's input
block `block_number` is resized by 1/downscale_factor (for the blocks after it only, or for its skip connection too
when `downscale_after_skip` is off). On the up path, wherever the hidden state and the skip it is joined with differ
in size, the hidden state is resized to the skip's size with `upscale_method`, and an upsampler whose doubled size
would not fit the next skip interpolates to that skip's size (as ComfyUI's Upsample does).

The current sigma comes from a pre-hook on the UNet: its timestep argument mapped back through the MODEL's
`model_sampling` (the nearest table entry of the sampler's sigma)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
import dataclasses
from dataclasses import dataclass, field
from typing import Annotated, Any

import torch

from graphengine import Boolean, Combo, Float, Int, Node, Output

from ..imageio import common_upscale
from ..types import Model
from . import required
from .hooks import HookSet, hook_set
from .layout import input_blocks

RESIZE_METHODS = ["bicubic", "nearest-exact", "bilinear", "area", "bislerp"]
Size = tuple[int, int]


def size_of(x: torch.Tensor) -> Size:
    return int(x.shape[-2]), int(x.shape[-1])


@dataclass
class _Run:
    """What the hooks of one UNet call share: whether to shrink, the skip sizes not yet used, the current
    up block's skip sizes in the order its resnets take them."""

    shrink: bool = False
    skips: list[Size] = field(default_factory=list)
    block_skips: list[Size] = field(default_factory=list)


@dataclass(frozen=True, eq=False)
class DeepShrinkPatch:
    """Kohya Deep Shrink at ComfyUI input block `block_number` while sigma_end <= sigma <= sigma_start."""

    block_number: int
    downscale_factor: float
    sigma_start: float
    sigma_end: float
    downscale_after_skip: bool
    downscale_method: str
    upscale_method: str
    model_sampling: Any  # maps the UNet's timestep argument back to a sigma

    def with_model_sampling(self, model_sampling: Any) -> DeepShrinkPatch:
        """The same patch reading timesteps through a later ModelSampling* node's parameterisation (the sigma
        window stays the one set when the node ran, as in ComfyUI)."""
        return dataclasses.replace(self, model_sampling=model_sampling)

    def shrinks_at(self, timestep: Any) -> bool:
        if timestep is None:
            return False
        first = torch.as_tensor(timestep).flatten()[0].detach().to("cpu", torch.float32)
        sigma = float(self.model_sampling.sigma(first))
        return self.sigma_end <= sigma <= self.sigma_start

    def downscaled(self, h: torch.Tensor) -> torch.Tensor:
        scale = 1.0 / self.downscale_factor
        return common_upscale(h, round(h.shape[-1] * scale), round(h.shape[-2] * scale), self.downscale_method,
                              "disabled")

    def fitted(self, h: torch.Tensor, size: Size) -> torch.Tensor:
        """h resized to a skip's size when they differ."""
        if size_of(h) == size:
            return h
        return common_upscale(h, size[1], size[0], self.upscale_method, "disabled")

    @contextlib.contextmanager
    def applied(self, unet: torch.nn.Module) -> Iterator[None]:
        blocks = input_blocks(unet)
        if self.block_number >= len(blocks):  # no such block: nothing to shrink (as in ComfyUI)
            yield
            return
        run = _Run()
        block = blocks[self.block_number]
        with hook_set() as hooks:
            hooks.before(unet, lambda _m, args, kwargs: self._start(run, args, kwargs))
            shrink = lambda h: self.downscaled(h) if run.shrink else h  # noqa: E731
            if not self.downscale_after_skip:
                hooks.map_output(block.producer, shrink)
            elif block.consumer is not None:
                hooks.map_input(block.consumer, shrink)
            self._track_skips(unet, hooks, run)
            yield

    def _start(self, run: _Run, args: tuple, kwargs: dict) -> None:
        run.shrink = self.shrinks_at(kwargs.get("timestep", args[1] if len(args) > 1 else None))
        run.skips, run.block_skips = [], []

    def _track_skips(self, unet: torch.nn.Module, hooks: HookSet, run: _Run) -> None:
        """Record the skip sizes on the way down; fit the hidden state to them on the way up."""
        def record(_m, _args, output):
            run.skips.extend(size_of(s) for s in (output[1] if isinstance(output, tuple) else (output,)))

        hooks.after(unet.conv_in, record)
        for down in unet.down_blocks:
            hooks.after(down, record)
        for up in unet.up_blocks:
            hooks.before(up, lambda module, args, kwargs: self._enter_up_block(run, module, args, kwargs))
            producers = getattr(up, "attentions", None) or up.resnets
            for j in range(1, len(up.resnets)):
                hooks.map_output(producers[j - 1], lambda h, j=j: self.fitted(h, run.block_skips[j]))

    def _enter_up_block(self, run: _Run, block: torch.nn.Module, args: tuple,
                        kwargs: dict) -> tuple[tuple, dict] | None:
        skips = kwargs.get("res_hidden_states_tuple")
        if not skips or "hidden_states" not in kwargs:
            return None
        run.block_skips = [size_of(s) for s in reversed(skips)]
        del run.skips[len(run.skips) - len(skips):]
        changed = {**kwargs, "hidden_states": self.fitted(kwargs["hidden_states"], run.block_skips[0])}
        if getattr(block, "upsamplers", None) and kwargs.get("upsample_size") is None and run.skips:
            height, width = run.block_skips[-1]  # the size h leaves the block's last resnet with
            if (2 * height, 2 * width) != run.skips[-1]:
                changed["upsample_size"] = run.skips[-1]
        return args, changed


Percent = Annotated[float, Float(min=0.0, max=1.0, step=0.001)]
ResizeMethod = Annotated[str, Combo(RESIZE_METHODS)]


class PatchModelAddDownscale(Node):
    """Kohya Deep Shrink: runs the deeper UNet blocks at a lower resolution during the early, high-noise steps."""

    DISPLAY_NAME = "PatchModelAddDownscale (Kohya Deep Shrink)"
    CATEGORY = "model_patches/unet"
    RETURNS = (Output("MODEL"),)

    model: Model
    block_number: Annotated[int, Int(min=1, max=32, step=1)] = 3
    downscale_factor: Annotated[float, Float(min=0.1, max=9.0, step=0.001)] = 2.0
    start_percent: Percent = 0.0
    end_percent: Percent = 0.35
    downscale_after_skip: Annotated[bool, Boolean()] = True
    downscale_method: ResizeMethod
    upscale_method: ResizeMethod

    def execute(self, ctx) -> tuple:
        model = required(self.model, "MODEL", "PatchModelAddDownscale")
        sampling = model.model_sampling
        patch = DeepShrinkPatch(self.block_number, self.downscale_factor, sampling.percent_to_sigma(self.start_percent),
                                sampling.percent_to_sigma(self.end_percent), self.downscale_after_skip,
                                self.downscale_method, self.upscale_method, sampling)
        return (model.with_module_patch(patch),)


NODE_CLASSES = [PatchModelAddDownscale]
