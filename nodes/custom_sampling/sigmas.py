"""Operations on SIGMAS vectors (pure functions) and ComfyUI's sigma nodes over them."""

from __future__ import annotations

import math
from typing import Annotated

import torch

from graphengine import Boolean, Combo, Float, Int, Node, Output

from ..types import Model
from .types import Sigmas

SPACINGS = {
    "linear": lambda x: x,
    "cosine": lambda x: torch.sin(x * math.pi / 2),
    "sine": lambda x: 1 - torch.cos(x * math.pi / 2),
}


def as_sigmas(value, node: str) -> torch.Tensor:
    """A SIGMAS input as a 1-D float tensor, or a clear error."""
    if not isinstance(value, torch.Tensor) or value.ndim != 1:
        raise ValueError(f"{node}: sigmas must be a 1-D tensor of noise levels, got {type(value).__name__}")
    return value


def split_at_step(sigmas: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(sigmas up to and including index `step`, sigmas from index `step`): both share the split sigma."""
    return sigmas[:step + 1], sigmas[step:]


def split_at_denoise(sigmas: torch.Tensor, denoise: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The last round(steps * denoise) steps become the low part; as in ComfyUI a 0-step low part leaves the high
    part empty too (sigmas[:-0])."""
    steps = max(sigmas.shape[-1] - 1, 0)
    total = round(steps * denoise)
    return sigmas[:-total], sigmas[-(total + 1):]


def flip(sigmas: torch.Tensor) -> torch.Tensor:
    """Reversed order; a leading 0 becomes 0.0001 (a sampler cannot start at sigma 0)."""
    if len(sigmas) == 0:
        return sigmas
    flipped = sigmas.flip(0)
    if flipped[0] == 0:
        flipped[0] = 0.0001
    return flipped


def set_first(sigmas: torch.Tensor, sigma: float) -> torch.Tensor:
    out = sigmas.clone()
    out[0] = sigma
    return out


def extend_intermediate(sigmas: torch.Tensor, steps: int, start_at_sigma: float, end_at_sigma: float,
                        spacing: str) -> torch.Tensor:
    """Insert steps - 1 sigmas into every interval whose upper sigma lies in [end_at_sigma, start_at_sigma]
    (start < 0: no upper bound), spaced by `spacing` between that sigma and the next."""
    upper = math.inf if start_at_sigma < 0 else start_at_sigma
    fractions = SPACINGS[spacing](torch.linspace(0, 1, steps + 1, device=sigmas.device)[1:-1])
    extended: list[float] = []
    for i in range(len(sigmas) - 1):
        current, following = sigmas[i], sigmas[i + 1]
        extended.append(float(current))
        if end_at_sigma <= current <= upper:
            extended.extend((fractions * (following - current) + current).tolist())
    if len(sigmas) > 0:
        extended.append(float(sigmas[-1]))
    return torch.tensor(extended, dtype=torch.float32)


def percent_sigma(model_sampling, percent: float, actual: bool) -> float:
    """The sigma at a sampling percentage; `actual` gives sigma_max / sigma_min at 0 / 1 instead of the interval
    values (a huge number and 0)."""
    sigma = float(model_sampling.percent_to_sigma(percent))
    if actual and percent == 0.0:
        return float(model_sampling.sigma_max)
    if actual and percent == 1.0:
        return float(model_sampling.sigma_min)
    return sigma


class SplitSigmas(Node):
    """Splits the sigmas at a step into a high part (up to the step) and a low part (from the step)."""

    CATEGORY = "sampling/custom_sampling/sigmas"
    RETURNS = (Output("SIGMAS", name="high_sigmas"), Output("SIGMAS", name="low_sigmas"))

    sigmas: Sigmas
    step: Annotated[int, Int(min=0, max=10000)] = 0

    def execute(self, ctx) -> tuple:
        return split_at_step(as_sigmas(self.sigmas, "SplitSigmas"), self.step)


class SplitSigmasDenoise(Node):
    """Splits the sigmas so that the low part holds the last denoise fraction of the steps."""

    CATEGORY = "sampling/custom_sampling/sigmas"
    RETURNS = (Output("SIGMAS", name="high_sigmas"), Output("SIGMAS", name="low_sigmas"))

    sigmas: Sigmas
    denoise: Annotated[float, Float(min=0.0, max=1.0, step=0.01)] = 1.0

    def execute(self, ctx) -> tuple:
        return split_at_denoise(as_sigmas(self.sigmas, "SplitSigmasDenoise"), self.denoise)


class FlipSigmas(Node):
    """Reverses the sigmas (for unsampling); a leading 0 becomes 0.0001."""

    CATEGORY = "sampling/custom_sampling/sigmas"
    RETURNS = (Output("SIGMAS"),)

    sigmas: Sigmas

    def execute(self, ctx) -> tuple:
        return (flip(as_sigmas(self.sigmas, "FlipSigmas")),)


class SetFirstSigma(Node):
    """Replaces the first sigma."""

    CATEGORY = "sampling/custom_sampling/sigmas"
    RETURNS = (Output("SIGMAS"),)

    sigmas: Sigmas
    sigma: Annotated[float, Float(min=0.0, max=20000.0, step=0.001, round=False)] = 136.0

    def execute(self, ctx) -> tuple:
        sigmas = as_sigmas(self.sigmas, "SetFirstSigma")
        if len(sigmas) == 0:
            raise ValueError("SetFirstSigma: the sigmas are empty")
        return (set_first(sigmas, self.sigma),)


class ExtendIntermediateSigmas(Node):
    """Adds sigmas between neighbouring ones inside a sigma range, linearly or with cosine / sine spacing."""

    CATEGORY = "sampling/custom_sampling/sigmas"
    RETURNS = (Output("SIGMAS"),)

    sigmas: Sigmas
    steps: Annotated[int, Int(min=1, max=100)] = 2
    start_at_sigma: Annotated[float, Float(min=-1.0, max=20000.0, step=0.01, round=False)] = -1.0
    end_at_sigma: Annotated[float, Float(min=0.0, max=20000.0, step=0.01, round=False)] = 12.0
    spacing: Annotated[str, Combo(list(SPACINGS))]

    def execute(self, ctx) -> tuple:
        sigmas = as_sigmas(self.sigmas, "ExtendIntermediateSigmas")
        return (extend_intermediate(sigmas, self.steps, self.start_at_sigma, self.end_at_sigma, self.spacing),)


class SamplingPercentToSigma(Node):
    """The model's sigma at a sampling percentage (0 = start, 1 = end)."""

    CATEGORY = "sampling/custom_sampling/sigmas"
    RETURNS = (Output("FLOAT", name="sigma_value"),)

    model: Model
    sampling_percent: Annotated[float, Float(min=0.0, max=1.0, step=0.0001)] = 0.0
    return_actual_sigma: Annotated[bool, Boolean(
        tooltip="Return the actual sigma value instead of the value used for interval checks.\n"
                "This only affects results at 0.0 and 1.0.")] = False

    def execute(self, ctx) -> tuple:
        return (percent_sigma(self.model.model_sampling, self.sampling_percent, self.return_actual_sigma),)


NODE_CLASSES = [SplitSigmas, SplitSigmasDenoise, FlipSigmas, SetFirstSigma, ExtendIntermediateSigmas,
                SamplingPercentToSigma]
