"""The golden-data toy network (golden README §2.1) behind the DiffusionModel protocol.

Used by the sampler tests (and by other test modules) in place of a real UNet.
"""
from __future__ import annotations

import torch

from nodes.samplers.model_sampling import ModelSamplingDiscrete


def toy_network(x_in: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """out = tanh(x)/2 + sin(0.01 t + c)/10 + mean(context)*0.2*(c+1)/4 + tanh(neighbour)/10."""
    channels = torch.arange(x_in.shape[1], dtype=torch.float32).reshape(1, -1, 1, 1)
    a = torch.tanh(x_in) * 0.5
    b = torch.sin(t.to(torch.float32).reshape(-1, 1, 1, 1) * 0.01 + channels) * 0.1
    m = context.mean(dim=(1, 2)).reshape(-1, 1, 1, 1)
    g = m * 0.2 * ((channels + 1) / 4)
    neighbour = torch.roll(x_in, shifts=(-1, 1), dims=(1, 3))  # x[n, (c+1)%C, h, (w-1)%W]
    r = torch.tanh(neighbour) * 0.1
    return ((a + b) + g) + r


class ToyModel:
    """DiffusionModel implementation around `toy_network`.

    `calls`, when given, receives one (x_in, t, out) tuple per network call.
    """

    latent_scale_factor = 0.18215
    in_channels = 4

    def __init__(self, prediction: str = "eps", calls: list | None = None) -> None:
        self.model_sampling = ModelSamplingDiscrete(prediction=prediction)
        self.calls = calls

    def apply_model(self, x_in, t, context, concat=None, **extra):
        if concat is not None:
            raise ValueError("the toy network takes no concat inputs")
        out = toy_network(x_in, t, context)
        if self.calls is not None:
            self.calls.append((x_in.clone(), t.clone(), out.clone()))
        return out

    def extra_conds(self, cond_dict, batch, height, width):
        return {}


def constant_conditioning(value: float, dim: int = 768) -> list:
    """A CONDITIONING list with one [1,77,dim] constant entry (golden §2.2)."""
    return [[torch.full((1, 77, dim), value, dtype=torch.float32), {}]]
