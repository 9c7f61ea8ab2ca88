"""Between the LATENT a VAE produces and the units the diffusion model samples in.

Most models scale by one factor (SD1.x 0.18215, SDXL 0.13025). Playground v2.5 normalises each channel with the
mean and standard deviation published in its VAE config and then scales by 0.5; ModelSamplingContinuousEDM's
`edm_playground_v2.5` sets that format on the MODEL, as ComfyUI does.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LatentStats:
    """Per-channel mean and standard deviation of a model's VAE latents."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def tensors(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if like.shape[1] != len(self.mean):
            raise ValueError(f"the latent has {like.shape[1]} channels; this model's latent format has "
                             f"{len(self.mean)}")
        shape = (1, -1) + (1,) * (like.dim() - 2)
        return (torch.tensor(self.mean, dtype=like.dtype, device=like.device).view(shape),
                torch.tensor(self.std, dtype=like.dtype, device=like.device).view(shape))


PLAYGROUND_V25_STATS = LatentStats(mean=(-1.6574, 1.886, -1.383, 2.5155), std=(8.4927, 5.9022, 6.5498, 5.2299))
PLAYGROUND_V25_SCALE = 0.5


def latent_to_model(model, samples: torch.Tensor) -> torch.Tensor:
    """VAE latent -> model units."""
    stats = getattr(model, "latent_stats", None)
    if stats is None:
        return samples * model.latent_scale_factor
    mean, std = stats.tensors(samples)
    return (samples - mean) * model.latent_scale_factor / std


def latent_from_model(model, x: torch.Tensor) -> torch.Tensor:
    """Model units -> VAE latent."""
    stats = getattr(model, "latent_stats", None)
    if stats is None:
        return x / model.latent_scale_factor
    mean, std = stats.tensors(x)
    return x * std / model.latent_scale_factor + mean
