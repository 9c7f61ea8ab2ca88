"""Sigma parameterisations (ComfyUI's model_sampling): the schedule (sigma <-> timestep) and the prediction formulas.

Schedules: `ModelSamplingDiscrete` (the DDPM table of SD1.x / SD2.x / SDXL, optionally rescaled to zero terminal
SNR), `ModelSamplingDiscreteDistilled` (LCM's 50-entry sub-table), `ModelSamplingContinuousEDM` (t = 0.25 ln sigma)
and `ModelSamplingContinuousV` (t = 2 atan(sigma) / pi). Predictions (what the network outputs): eps, v, edm
(v with the opposite sign), x0, img_to_img (x0, unscaled input) and lcm (eps with LCM's boundary scalings).

All maps follow ComfyUI's numerics: the discrete table is built in float64 and stored as float32, log-sigmas come
from the float64 values, and the discrete `timestep` is the nearest table index.
"""
from __future__ import annotations

import math

import torch

PREDICTIONS = ("eps", "v", "edm", "x0", "img_to_img", "lcm")
# Zero-terminal-SNR tables end at alpha_bar = 0 (sigma = inf); ComfyUI clamps the last alpha_bar to this value.
ZSNR_LAST_ALPHA_CUMPROD = 4.8973451890853435e-08
LCM_SIGMA_DATA = 0.5
LCM_TIMESTEP_SCALING = 10.0


def make_betas(beta_schedule: str, linear_start: float, linear_end: float, timesteps: int) -> torch.Tensor:
    """Float64 beta vector of the DDPM forward process."""
    if beta_schedule == "scaled_linear":
        root = torch.linspace(linear_start**0.5, linear_end**0.5, timesteps, dtype=torch.float64)
        return root * root
    if beta_schedule == "linear":
        return torch.linspace(linear_start, linear_end, timesteps, dtype=torch.float64)
    raise ValueError(f"unknown beta_schedule {beta_schedule!r}")


def rescale_zero_terminal_snr(sigmas: torch.Tensor) -> torch.Tensor:
    """Lin et al. 2023 ("Common Diffusion Noise Schedules and Sample Steps are Flawed"), on a sigma table: shift
    sqrt(alpha_bar) so the last is 0 and scale it so the first keeps its value; the last alpha_bar is then clamped
    to ZSNR_LAST_ALPHA_CUMPROD so that its sigma stays finite."""
    root = (1.0 / (sigmas * sigmas + 1.0)).sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * (first / (first - last))
    alphas_cumprod = root * root
    alphas_cumprod[-1] = ZSNR_LAST_ALPHA_CUMPROD
    return ((1.0 - alphas_cumprod) / alphas_cumprod) ** 0.5


class ModelSampling:
    """The prediction formulas, shared by every schedule; subclasses set `sigmas`/`log_sigmas` and the
    timestep maps."""

    sigmas: torch.Tensor
    log_sigmas: torch.Tensor

    def __init__(self, prediction: str = "eps", sigma_data: float = 1.0) -> None:
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {', '.join(PREDICTIONS)}; got {prediction!r}")
        self.prediction = prediction
        self.sigma_data = float(sigma_data)

    @property
    def sigma_min(self) -> torch.Tensor:
        return self.sigmas[0]

    @property
    def sigma_max(self) -> torch.Tensor:
        return self.sigmas[-1]

    @staticmethod
    def _per_row(sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
        return sigma.reshape(sigma.shape[:1] + (1,) * (x.ndim - 1)) if sigma.ndim else sigma

    def calculate_input(self, sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """c_in-scaled network input x / sqrt(sigma^2 + sigma_data^2) (img_to_img: x itself)."""
        if self.prediction == "img_to_img":
            return x
        s = self._per_row(sigma, x)
        return x / (s * s + self.sigma_data**2) ** 0.5

    def calculate_denoised(self, sigma: torch.Tensor, model_output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        s = self._per_row(sigma, x)
        if self.prediction == "eps":
            return x - model_output * s
        if self.prediction in ("x0", "img_to_img"):
            return model_output
        if self.prediction == "lcm":
            t = self._per_row(self.timestep(sigma), x) * LCM_TIMESTEP_SCALING
            c_skip = LCM_SIGMA_DATA**2 / (t * t + LCM_SIGMA_DATA**2)
            c_out = t / (t * t + LCM_SIGMA_DATA**2) ** 0.5
            return c_out * (x - model_output * s) + c_skip * x
        data2 = self.sigma_data**2
        var = s * s + data2
        if self.prediction == "v":
            return x * data2 / var - model_output * s * self.sigma_data / var**0.5
        return x * data2 / var + model_output * s * self.sigma_data / var**0.5  # edm

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

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class ModelSamplingDiscrete(ModelSampling):
    """The DDPM sigma table (sigma_data = 1); `zsnr` rescales it to zero terminal SNR."""

    def __init__(
        self,
        prediction: str = "eps",
        beta_schedule: str = "scaled_linear",
        linear_start: float = 0.00085,
        linear_end: float = 0.012,
        timesteps: int = 1000,
        zsnr: bool = False,
    ) -> None:
        super().__init__(prediction)
        betas = make_betas(beta_schedule, linear_start, linear_end, timesteps)
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        sigmas64 = ((1.0 - alphas_cumprod) / alphas_cumprod) ** 0.5
        if zsnr:
            sigmas64 = rescale_zero_terminal_snr(sigmas64)
        self.zsnr = bool(zsnr)
        self.num_timesteps = int(timesteps)
        self.sigmas64 = sigmas64
        self.sigmas = sigmas64.to(torch.float32)
        self.log_sigmas = sigmas64.log().to(torch.float32)

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """Nearest table index (int64) in log-sigma space; first index wins ties."""
        sigma = torch.as_tensor(sigma, dtype=torch.float32)
        dists = sigma.log().reshape(1, -1) - self.log_sigmas.to(sigma.device).reshape(-1, 1)
        return dists.abs().argmin(dim=0).reshape(sigma.shape)

    def _table_sigma(self, t: torch.Tensor) -> torch.Tensor:
        """Log-linear interpolation of the table at a fractional index."""
        t = t.clamp(0, len(self.sigmas) - 1)
        low = t.floor().long()
        high = t.ceil().long()
        w = t.frac()
        log_sigmas = self.log_sigmas.to(t.device)
        log_sigma = (1 - w) * log_sigmas[low] + w * log_sigmas[high]
        return log_sigma.exp()

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        """Log-linear interpolation of the table at a (fractional) timestep."""
        return self._table_sigma(torch.as_tensor(timestep, dtype=torch.float32))

    def percent_to_sigma(self, percent: float) -> float:
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        t = torch.tensor((1.0 - percent) * (self.num_timesteps - 1), dtype=torch.float32)
        return float(self.sigma(t))


class ModelSamplingDiscreteDistilled(ModelSamplingDiscrete):
    """LCM's schedule: every 20th entry of the 1000-step table (50 entries, ending at the last); timesteps map to
    the original indices (index * 20 + 19)."""

    original_timesteps = 50

    def __init__(self, prediction: str = "lcm", zsnr: bool = False, **schedule) -> None:
        super().__init__(prediction, zsnr=zsnr, **schedule)
        self.skip_steps = self.num_timesteps // self.original_timesteps
        picked = [self.num_timesteps - 1 - k * self.skip_steps for k in reversed(range(self.original_timesteps))]
        self.sigmas = self.sigmas[picked].clone()
        self.log_sigmas = self.sigmas.log()

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        return super().timestep(sigma) * self.skip_steps + (self.skip_steps - 1)

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(timestep, dtype=torch.float32)
        return self._table_sigma(((t - (self.skip_steps - 1)) / self.skip_steps).float())


class ModelSamplingContinuousEDM(ModelSampling):
    """Continuous sigmas in [sigma_min, sigma_max], timestep = 0.25 ln(sigma); `sigmas` is a 1000-entry log-spaced
    table for the table-based schedules."""

    def __init__(self, prediction: str = "v", sigma_min: float = 0.002, sigma_max: float = 120.0,
                 sigma_data: float = 1.0) -> None:
        super().__init__(prediction, sigma_data)
        if not 0.0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
        self.sigmas = torch.linspace(math.log(sigma_min), math.log(sigma_max), 1000).exp()
        self.log_sigmas = self.sigmas.log()

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        return 0.25 * torch.as_tensor(sigma, dtype=torch.float32).log()

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        return (torch.as_tensor(timestep, dtype=torch.float32) / 0.25).exp()

    def percent_to_sigma(self, percent: float) -> float:
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        log_min = math.log(self.sigma_min)
        return math.exp((math.log(self.sigma_max) - log_min) * (1.0 - percent) + log_min)


class ModelSamplingContinuousV(ModelSamplingContinuousEDM):
    """ModelSamplingContinuousEDM with timestep = 2 atan(sigma) / pi (0..1)."""

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(sigma, dtype=torch.float32).atan() / math.pi * 2

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        return (torch.as_tensor(timestep, dtype=torch.float32) * math.pi / 2).tan()
