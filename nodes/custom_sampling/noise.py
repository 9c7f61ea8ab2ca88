"""NOISE values (seeded or none) and the nodes that make or add them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch

from graphengine import Int, Node, Output
from graphengine.spec import INT_LIMIT

from ..samplers.latent_format import latent_from_model
from ..samplers.pipeline import initial_noise, sampled_latent_in
from ..types import Latent, Model
from .sigmas import as_sigmas
from .types import Noise, Sigmas


@dataclass(frozen=True)
class RandomNoise:
    """Seeded unit Gaussian noise of a latent's shape, drawn exactly as KSampler draws it."""

    seed: int

    def generate(self, latent: dict) -> torch.Tensor:
        return initial_noise(latent, self.seed)


@dataclass(frozen=True)
class EmptyNoise:
    """No noise (zeros); its seed 0 still seeds a sampler's per-step noise, as in ComfyUI."""

    seed: int = 0

    def generate(self, latent: dict) -> torch.Tensor:
        return initial_noise(latent, self.seed, disable=True)


def noised_latent(model, noise: torch.Tensor, sigmas: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
    """AddNoise: the latent noised to |sigmas[0] - sigmas[-1]| (or sigmas[0] alone), in VAE units."""
    scale = torch.abs(sigmas[0] - sigmas[-1]) if len(sigmas) > 1 else sigmas[0]
    noisy = model.model_sampling.noise_scaling(scale, noise.to(latent.dtype), sampled_latent_in(model, latent))
    return torch.nan_to_num(latent_from_model(model, noisy), nan=0.0, posinf=0.0, neginf=0.0)


class RandomNoiseNode(Node):
    """Seeded noise for SamplerCustomAdvanced."""

    NAME = "RandomNoise"
    CATEGORY = "sampling/custom_sampling/noise"
    RETURNS = (Output("NOISE"),)

    noise_seed: Annotated[int, Int(min=0, max=INT_LIMIT, control_after_generate=True)] = 0

    def execute(self, ctx) -> tuple:
        return (RandomNoise(int(self.noise_seed)),)


class DisableNoise(Node):
    """No initial noise (continue from a latent that is already noisy)."""

    CATEGORY = "sampling/custom_sampling/noise"
    RETURNS = (Output("NOISE"),)

    def execute(self, ctx) -> tuple:
        return (EmptyNoise(),)


class AddNoise(Node):
    """Adds noise to a latent at the level the sigmas span."""

    CATEGORY = "_for_testing/custom_sampling/noise"
    EXPERIMENTAL = True
    RETURNS = (Output("LATENT"),)

    model: Model
    noise: Noise
    sigmas: Sigmas
    latent_image: Latent

    def execute(self, ctx) -> tuple:
        sigmas = as_sigmas(self.sigmas, "AddNoise")
        if len(sigmas) == 0:
            return (self.latent_image,)
        samples = self.latent_image["samples"]
        noisy = noised_latent(self.model, self.noise.generate(self.latent_image), sigmas, samples.float())
        return (dict(self.latent_image, samples=noisy.to(samples.dtype)),)


NODE_CLASSES = [RandomNoiseNode, DisableNoise, AddNoise]
