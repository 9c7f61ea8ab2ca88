"""Initial noise exactly as ComfyUI's KSampler draws it (CPU generator, float32)."""
from __future__ import annotations

import torch

SEED_LIMIT = 2**64


def seeded_generator(seed: int) -> torch.Generator:
    """CPU generator seeded like torch.manual_seed(seed); accepts 0 <= seed < 2**64.

    torch's CPU generator only uses the low 32 bits, which makes seeds that differ above
    bit 32 give the same numbers (ComfyUI behaviour, kept for reproducibility).
    """
    seed = int(seed)
    if not 0 <= seed < SEED_LIMIT:
        raise ValueError(f"seed must be in [0, 2**64), got {seed}")
    generator = torch.Generator("cpu")
    generator.manual_seed(seed)
    return generator


def prepare_noise(latent_samples: torch.Tensor, seed: int, batch_index: list[int] | None = None) -> torch.Tensor:
    """Unit Gaussian noise of the latent's shape, float32 on CPU, cast to the latent dtype.

    With `batch_index`, single-item draws are taken for indices 0..max(batch_index) so
    that a latent extracted from a batch keeps the noise it had in the full batch.
    """
    generator = seeded_generator(seed)
    shape = tuple(latent_samples.shape)
    if batch_index is None:
        noise = torch.randn(shape, generator=generator, dtype=torch.float32, device="cpu")
        return noise.to(latent_samples.dtype)
    wanted = set(int(i) for i in batch_index)
    drawn: dict[int, torch.Tensor] = {}
    for i in range(max(wanted) + 1):
        sample = torch.randn((1,) + shape[1:], generator=generator, dtype=torch.float32, device="cpu")
        if i in wanted:
            drawn[i] = sample
    noise = torch.cat([drawn[int(i)] for i in batch_index], dim=0)
    return noise.to(latent_samples.dtype)
