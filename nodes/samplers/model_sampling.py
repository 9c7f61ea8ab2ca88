"""Discrete-time (DDPM table) sigma parameterisation used by SD1.x / SD2.x / SDXL.

All maps follow ComfyUI's numerics: the table is built in float64 and stored as float32,
log-sigmas come from the float64 values, and `timestep` is the nearest table index.
"""
from __future__ import annotations

import math

import torch


def make_betas(beta_schedule: str, linear_start: float, linear_end: float, timesteps: int) -> torch.Tensor:
    """Float64 beta vector of the DDPM forward process."""
    if beta_schedule == "scaled_linear":
        root = torch.linspace(linear_start**0.5, linear_end**0.5, timesteps, dtype=torch.float64)
        return root * root
    if beta_schedule == "linear":
        return torch.linspace(linear_start, linear_end, timesteps, dtype=torch.float64)
    raise ValueError(f"unknown beta_schedule {beta_schedule!r}")


class ModelSamplingDiscrete:
    """Sigma table and the eps / v prediction formulas (sigma_data = 1)."""

    def __init__(
        self,
        prediction: str = "eps",
        beta_schedule: str = "scaled_linear",
        linear_start: float = 0.00085,
        linear_end: float = 0.012,
        timesteps: int = 1000,
    ) -> None:
        if prediction not in ("eps", "v"):
            raise ValueError(f"prediction must be 'eps' or 'v', got {prediction!r}")
        self.prediction = prediction
        betas = make_betas(beta_schedule, linear_start, linear_end, timesteps)
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        sigmas64 = ((1.0 - alphas_cumprod) / alphas_cumprod) ** 0.5
        self.sigmas64 = sigmas64
        self.sigmas = sigmas64.to(torch.float32)
        self.log_sigmas = sigmas64.log().to(torch.float32)

    @property
    def sigma_min(self) -> torch.Tensor:
        return self.sigmas[0]

    @property
    def sigma_max(self) -> torch.Tensor:
        return self.sigmas[-1]

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """Nearest table index (int64) in log-sigma space; first index wins ties."""
        sigma = torch.as_tensor(sigma, dtype=torch.float32)
        dists = sigma.log().reshape(1, -1) - self.log_sigmas.to(sigma.device).reshape(-1, 1)
        return dists.abs().argmin(dim=0).reshape(sigma.shape)

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        """Log-linear interpolation of the table at a (fractional) timestep."""
        t = torch.as_tensor(timestep, dtype=torch.float32).clamp(0, len(self.sigmas) - 1)
        low = t.floor().long()
        high = t.ceil().long()
        w = t.frac()
        log_sigmas = self.log_sigmas.to(t.device)
        log_sigma = (1 - w) * log_sigmas[low] + w * log_sigmas[high]
        return log_sigma.exp()

    def percent_to_sigma(self, percent: float) -> float:
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        t = torch.tensor((1.0 - percent) * (len(self.sigmas) - 1), dtype=torch.float32)
        return float(self.sigma(t))

    @staticmethod
    def _per_row(sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
        return sigma.reshape(sigma.shape[:1] + (1,) * (x.ndim - 1)) if sigma.ndim else sigma

    def calculate_input(self, sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """c_in-scaled network input x / sqrt(sigma^2 + 1)."""
        s = self._per_row(sigma, x)
        return x / (s * s + 1.0) ** 0.5

    def calculate_denoised(self, sigma: torch.Tensor, model_output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        s = self._per_row(sigma, x)
        if self.prediction == "eps":
            return x - model_output * s
        var = s * s + 1.0
        return x / var - model_output * s / var**0.5

    def noise_scaling(
        self, sigma: torch.Tensor, noise: torch.Tensor, latent_image: torch.Tensor, max_denoise: bool = False
    ) -> torch.Tensor:
        s = torch.as_tensor(sigma, dtype=noise.dtype, device=noise.device)
        scale = torch.sqrt(1.0 + s * s) if max_denoise else s
        return noise * scale + latent_image

    def inverse_noise_scaling(self, sigma: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        return latent

    def is_max_denoise(self, first_sigma: float) -> bool:
        """ComfyUI's test for "start from pure noise" (variance-preserving start latent)."""
        sigma_max = float(self.sigma_max)
        return math.isclose(sigma_max, first_sigma, rel_tol=1e-5) or first_sigma > sigma_max
