"""LATENT_OPERATION values (functions latent → latent) and the nodes that make and apply them: on a LATENT
(LatentApplyOperation) or on the guidance of every sampling step (LatentApplyOperationCFG, a pre-cfg hook on the
MODEL handle)."""

from __future__ import annotations

import functools
from typing import Annotated, Any, Callable

import torch
import torch.nn.functional as F

from graphengine import Float, Int, Node, Output, Socket

from .latent_ops import samples_of, with_samples
from .samplers import guidance
from .types import Latent, Model
from .work import map_batch

LatentOperation = Annotated[Any, Socket("LATENT_OPERATION")]
EPSILON_TONEMAP = 1e-10
EPSILON_SHARPEN = 1e-6


def tonemap_reinhard(latent: torch.Tensor, multiplier: float) -> torch.Tensor:
    """Reinhard tone mapping of the channel-vector lengths, per item: lengths are scaled by 1/top, mapped by
    l / (l + 1) and scaled back, with top = (mean + 5·std of the lengths) · multiplier; directions are kept."""
    length = torch.linalg.vector_norm(latent, dim=1, keepdim=True) + EPSILON_TONEMAP
    direction = latent / length
    mean = length.mean(dim=(1, 2, 3), keepdim=True)
    std = length.std(dim=(1, 2, 3), keepdim=True)
    top = (std * 5 + mean) * multiplier
    scaled = length / top
    return direction * (scaled / (scaled + 1.0) * top)


def gaussian_kernel(size: int, sigma: float) -> torch.Tensor:
    """A normalised size×size Gaussian over coordinates spanning -1..1 (sigma in those units)."""
    axis = torch.linspace(-1, 1, size)
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    weights = torch.exp(-(x * x + y * y) / (2.0 * sigma * sigma))
    return weights / weights.sum()


def sharpen(latent: torch.Tensor, radius: int, sigma: float, alpha: float) -> torch.Tensor:
    """Unsharp mask of the channel directions: a kernel of -10·alpha·Gaussian with its centre raised so it sums to
    1, over reflect-padded borders; the channel-vector lengths are kept."""
    if radius >= min(latent.shape[-2:]):
        raise ValueError(f"sharpen_radius {radius} needs a latent larger than {radius} on each side, got "
                         f"{latent.shape[-1]}x{latent.shape[-2]}")
    length = torch.linalg.vector_norm(latent, dim=1, keepdim=True) + EPSILON_SHARPEN
    direction = latent / length
    size = radius * 2 + 1
    kernel = gaussian_kernel(size, sigma).to(latent) * (alpha * -10)
    kernel[radius, radius] += 1.0 - kernel.sum()
    channels = latent.shape[1]
    padded = F.pad(direction, (radius, radius, radius, radius), mode="reflect")
    sharpened = F.conv2d(padded, kernel.expand(channels, 1, size, size), groups=channels)
    return length * sharpened


def cfg_operation_hook(operation: Callable[[torch.Tensor], torch.Tensor]) -> guidance.StatelessHook:
    """A pre-cfg hook applying `operation` to the guidance cond - uncond of x0 predictions (to the cond alone when
    the uncond pass is skipped: the hook then sees an all-zero uncond)."""
    def pre_cfg(args: guidance.CfgArgs) -> tuple[torch.Tensor, torch.Tensor]:
        uncond = args.uncond_denoised
        return operation(args.cond_denoised - uncond) + uncond, uncond
    return guidance.StatelessHook("pre_cfg", pre_cfg)


def _operation(value: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    if not callable(value):
        raise ValueError("operation: expected a LATENT_OPERATION")
    return value


class LatentApplyOperation(Node):
    """Apply a latent operation to a latent."""

    CATEGORY = "latent/advanced/operations"
    EXPERIMENTAL = True
    RETURNS = (Output("LATENT"),)
    samples: Latent
    operation: LatentOperation

    def execute(self, ctx) -> tuple:
        operation = _operation(self.operation)
        return (with_samples(self.samples, map_batch(operation, samples_of(self.samples), ctx.check_cancelled)),)


class LatentApplyOperationCFG(Node):
    """Apply a latent operation to the guidance (cond − uncond) at every sampling step."""

    CATEGORY = "latent/advanced/operations"
    EXPERIMENTAL = True
    RETURNS = (Output("MODEL"),)
    model: Model
    operation: LatentOperation

    def execute(self, ctx) -> tuple:
        if self.model is None:
            raise ValueError("LatentApplyOperationCFG: the MODEL input is empty (the checkpoint has no diffusion "
                             "model)")
        return (self.model.with_guidance(cfg_operation_hook(_operation(self.operation))),)


class LatentOperationTonemapReinhard(Node):
    """A latent operation: Reinhard tone mapping of the latent's magnitudes."""

    CATEGORY = "latent/advanced/operations"
    EXPERIMENTAL = True
    RETURNS = (Output("LATENT_OPERATION"),)
    multiplier: Annotated[float, Float(min=0.0, max=100.0, step=0.01)] = 1.0

    def execute(self, ctx) -> tuple:
        return (functools.partial(tonemap_reinhard, multiplier=float(self.multiplier)),)


class LatentOperationSharpen(Node):
    """A latent operation: sharpen the latent with an unsharp-mask kernel."""

    CATEGORY = "latent/advanced/operations"
    EXPERIMENTAL = True
    RETURNS = (Output("LATENT_OPERATION"),)
    sharpen_radius: Annotated[int, Int(min=1, max=31, step=1)] = 9
    sigma: Annotated[float, Float(min=0.1, max=10.0, step=0.1)] = 1.0
    alpha: Annotated[float, Float(min=0.0, max=5.0, step=0.01)] = 0.1

    def execute(self, ctx) -> tuple:
        return (functools.partial(sharpen, radius=int(self.sharpen_radius), sigma=float(self.sigma),
                                  alpha=float(self.alpha)),)


NODE_CLASSES = [LatentApplyOperation, LatentApplyOperationCFG, LatentOperationTonemapReinhard, LatentOperationSharpen]
