"""The KSampler / KSamplerAdvanced pipeline: noise, sigmas, latent scaling, CFG, inpaint.

Sampler convention (k-diffusion style, shared with `stochastic.py`):
    sample_<name>(model, x, sigmas, extra_args=None, callback=None, disable=None, **opts) -> x
* `model(x, sigma_batch, **extra_args)` returns the guided x0 prediction; extra_args carries
  `seed` (for per-step noise).  cfg++ samplers call `model(x, s, return_uncond=True, **extra_args)`
  and get `(x0, x0_uncond)`.
* `callback` is called once per step with a dict {"i", "x", "sigma", "sigma_hat", "denoised"}.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch
import torch.nn.functional as F

from .conds import controls_for_run, controls_for_uncond, guided_x0, repeat_to_batch, resize_mask
from .guidance import RunGuidance
from .latent_format import latent_from_model, latent_to_model
from .model_sampling import ModelSampling
from .noise import SEED_LIMIT, prepare_noise
from .schedules import advanced_trim, ksampler_sigmas

StepCallback = Callable[[int, int, torch.Tensor, torch.Tensor], None]


class DiffusionModel(Protocol):
    """What `ksample` needs from a model.  An optional `device` attribute (default CPU) says where
    sampling runs; the initial noise is always drawn on the CPU (ComfyUI's cross-device seeds)."""

    model_sampling: ModelSampling
    latent_scale_factor: float
    in_channels: int

    def apply_model(
        self, x_in: torch.Tensor, t: torch.Tensor, context: torch.Tensor, concat: torch.Tensor | None = None, **extra
    ) -> torch.Tensor:
        """Raw network output (eps or v) for a c_in-scaled input; `concat` goes on dim 1."""
        ...

    def extra_conds(self, cond_dict: dict, batch: int, height: int, width: int) -> dict:
        """Extra apply_model kwargs derived from one conditioning entry ({} when none)."""
        ...


def prepare_denoise_mask(noise_mask: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """SetLatentNoiseMask mask -> [B,C,h,w]: bilinear resize to latent size, repeat channels/batch."""
    mask = noise_mask.reshape((-1, 1) + tuple(noise_mask.shape[-2:])).to(torch.float32)
    mask = F.interpolate(mask, size=(shape[2], shape[3]), mode="bilinear", align_corners=False)
    mask = mask.expand(-1, shape[1], -1, -1)
    return repeat_to_batch(mask, shape[0]).contiguous()


def _resize_latent(latent: torch.Tensor, height: int, width: int) -> torch.Tensor:
    if tuple(latent.shape[-2:]) == (height, width):
        return latent
    return F.interpolate(latent, size=(height, width), mode="bilinear", align_corners=False)


def build_concat(
    in_channels: int,
    cond_dict: dict,
    *,
    shape: torch.Size,
    latent_scale_factor: float,
    latent_in: torch.Tensor | None,
    denoise_mask: torch.Tensor | None,
    to_model: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor | None:
    """Extra input channels for inpaint (9), InstructPix2Pix (8) and depth (5) UNets, [B, k, h, w]; None for
    4-channel models.

    Inpaint: [mask (1ch, rounded), masked-image latent (4ch, model units)] from the cond's
    `concat_mask` / `concat_latent_image`, else from the sampled latent and its noise mask. InstructPix2Pix: the
    cond's `concat_latent_image` as the VAE gave it (not scaled, as the model was trained), zeros without one.
    """
    batch, _, height, width = shape
    if in_channels == 8:
        image = cond_dict.get("concat_latent_image")
        image = torch.zeros(shape) if image is None else _resize_latent(image.to(torch.float32), height, width)
        return repeat_to_batch(image, batch)
    if in_channels == 5:
        depth = cond_dict.get("concat_depth")
        if depth is None:
            raise ValueError("a depth model needs `concat_depth` in its conditioning")
        depth = _resize_latent(depth.reshape((-1, 1) + tuple(depth.shape[-2:])).to(torch.float32), height, width)
        return repeat_to_batch(depth, batch)
    if in_channels != 9:
        return None
    image = cond_dict.get("concat_latent_image")
    if image is not None:
        image = image.to(torch.float32)
        image = to_model(image) if to_model is not None else image * latent_scale_factor
    elif latent_in is not None:
        image = latent_in
    else:
        image = torch.zeros(shape)
    image = repeat_to_batch(_resize_latent(image, height, width), batch)
    mask = cond_dict.get("concat_mask")
    if mask is not None:
        mask = resize_mask(mask, height, width).unsqueeze(1)
    elif denoise_mask is not None:
        mask = denoise_mask[:, :1]
    else:
        mask = torch.ones((batch, 1, height, width))
    mask = repeat_to_batch(mask.round(), batch).to(image.device)
    return torch.cat([mask, image], dim=1)


@dataclass(frozen=True)
class InpaintBlend:
    """Base-model masked sampling: keep the re-noised original outside the mask."""

    mask: torch.Tensor  # [B,C,h,w], 1 = regenerate
    latent_in: torch.Tensor
    noise: torch.Tensor  # unscaled noise used to re-noise the original

    def model_input(self, ms: ModelSampling, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s = sigma.reshape(-1, 1, 1, 1)
        return x * self.mask + ms.noise_scaling(s, self.noise, self.latent_in) * (1 - self.mask)

    def prediction(self, x0: torch.Tensor) -> torch.Tensor:
        return x0 * self.mask + self.latent_in * (1 - self.mask)


@dataclass(frozen=True)
class GuidedDenoiser:
    """x -> guided x0 at sigma; the `model` a sampler function receives."""

    model: Any
    positive: list
    negative: list
    cfg: float
    force_uncond: bool = False
    inpaint: InpaintBlend | None = None
    latent_in: torch.Tensor | None = None
    denoise_mask: torch.Tensor | None = None
    guidance: RunGuidance | None = None  # the model's guidance hooks, bound for this run
    sigmas: torch.Tensor | None = None  # the run's sigmas (for a denoise-mask hook)
    # A custom guider: predict(model, x, sigma, force_uncond=, concat_for=, guidance=) -> (x0, uncond or None),
    # used instead of the cfg combination of positive and negative.
    predict: Callable[..., Any] | None = None

    @property
    def model_sampling(self) -> ModelSampling:
        return self.model.model_sampling

    def _concat_for(self, shape: torch.Size):
        if self.model.in_channels == 4:
            return None
        return lambda options: build_concat(
            self.model.in_channels,
            options,
            shape=shape,
            latent_scale_factor=self.model.latent_scale_factor,
            latent_in=self.latent_in,
            denoise_mask=self.denoise_mask,
            to_model=lambda samples: latent_to_model(self.model, samples),
        )

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, return_uncond: bool = False, **_: Any):
        sigma = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1)
        if sigma.numel() == 1 and x.shape[0] != 1:
            sigma = sigma.expand(x.shape[0])
        ms = self.model.model_sampling
        inpaint = self.inpaint
        if inpaint is not None and self.guidance is not None and self.guidance.denoise_mask is not None:
            mask = self.guidance.denoise_mask(sigma, inpaint.mask, self.sigmas, ms)
            inpaint = dataclasses.replace(inpaint, mask=mask)
        x_model = inpaint.model_input(ms, x, sigma) if inpaint is not None else x
        if self.predict is not None:
            x0, uncond = self.predict(self.model, x_model, sigma, force_uncond=self.force_uncond or return_uncond,
                                      concat_for=self._concat_for(x.shape), guidance=self.guidance)
        else:
            x0, uncond = guided_x0(
                self.model,
                x_model,
                sigma,
                self.positive,
                self.negative,
                self.cfg,
                force_uncond=self.force_uncond or return_uncond,
                concat_for=self._concat_for(x.shape),
                guidance=self.guidance,
            )
        if inpaint is not None:
            x0 = inpaint.prediction(x0)
        if return_uncond:
            return x0, uncond
        return x0


def sampling_sigmas(
    model_sampling: ModelSampling,
    scheduler: str,
    steps: int,
    sampler_name: str,
    denoise: float = 1.0,
    start_step: int | None = None,
    last_step: int | None = None,
    force_full_denoise: bool = False,
) -> torch.Tensor | None:
    """The sigma vector a KSampler(Advanced) run hands to its sampler; None = return the input latent."""
    sigmas = ksampler_sigmas(model_sampling, scheduler, steps, denoise, sampler_name)
    if len(sigmas) == 0:
        return None
    return advanced_trim(sigmas, start_step, last_step, force_full_denoise)


def sampled_latent_in(model, samples: torch.Tensor) -> torch.Tensor:
    """VAE latent -> model units (process_latent_in) for sampling."""
    # An all-zero (empty) latent is passed through unscaled, like ComfyUI.
    if torch.count_nonzero(samples) == 0:
        return samples
    return latent_to_model(model, samples)


def initial_noise(latent: dict, seed: int, disable: bool = False) -> torch.Tensor:
    """The unscaled starting noise of a run (zeros when disabled), on the CPU like ComfyUI's."""
    samples = latent["samples"].float()
    if disable:
        return torch.zeros_like(samples, device="cpu")
    return prepare_noise(samples, seed, latent.get("batch_index"))


Predict = Callable[..., "tuple[torch.Tensor, torch.Tensor | None]"]


def ksample(
    model: DiffusionModel,
    *,
    seed: int,
    steps: int,
    cfg: float,
    sampler_name: str,
    scheduler: str,
    positive: list,
    negative: list,
    latent: dict,
    denoise: float = 1.0,
    disable_noise: bool = False,
    start_step: int | None = None,
    last_step: int | None = None,
    force_full_denoise: bool = False,
    callback: StepCallback | None = None,
    sampler_options: dict | None = None,
) -> dict:
    """ComfyUI's KSampler (and KSamplerAdvanced via start/last step, disable_noise, force_full_denoise).

    `sampler_options` are passed to the sampler function as keyword arguments (eta, s_noise, ...).
    Returns a new LATENT dict (the input's extra keys kept, `samples` replaced).
    """
    sigmas = sampling_sigmas(model.model_sampling, scheduler, steps, sampler_name, denoise, start_step, last_step,
                             force_full_denoise)
    if sigmas is None:
        return dict(latent, samples=latent["samples"].clone())
    return sample_sigmas(model, sigmas=sigmas, noise=initial_noise(latent, seed, disable_noise), seed=seed,
                         sampler_name=sampler_name, positive=positive, negative=negative, cfg=cfg, latent=latent,
                         callback=callback, sampler_options=sampler_options)[0]


def sample_sigmas(
    model: DiffusionModel,
    *,
    sigmas: torch.Tensor,
    noise: torch.Tensor,
    seed: int,
    sampler_name: str,
    positive: list,
    negative: list,
    cfg: float,
    latent: dict,
    callback: StepCallback | None = None,
    sampler: Callable | None = None,
    sampler_options: dict | None = None,
    predict: Predict | None = None,
) -> tuple[dict, dict]:
    """One sampling run over given sigmas (ComfyUI's sample_custom / guider.sample): the sampled LATENT and the
    last step's x0 prediction as a LATENT (the input latent itself when no step ran).

    `sampler` (default: the function named `sampler_name`) gets `sampler_options` as keyword arguments; the name
    still decides the inpaint re-noise rule and whether cfg++ needs the uncond. `predict`, when given, replaces the
    cfg combination of positive and negative (a custom guider; see `GuidedDenoiser.predict`).
    """
    from .names import RANDOM_INPAINT_NOISE_SAMPLERS, get_sampler, is_cfg_pp

    if len(sigmas) == 0:
        unchanged = dict(latent, samples=latent["samples"].clone())
        return unchanged, unchanged
    sampler = sampler if sampler is not None else get_sampler(sampler_name)
    device = torch.device(getattr(model, "device", "cpu"))
    samples = latent["samples"].to(device=device, dtype=torch.float32)
    ms = model.model_sampling
    sigmas = sigmas.to(torch.float32)
    noise = noise.to(device=device, dtype=torch.float32)
    latent_in = sampled_latent_in(model, samples)
    prepare = getattr(model, "prepare_conditioning", None)  # e.g. unCLIP: image embeddings noised with the seed
    if prepare is not None:
        positive, negative = prepare(positive, seed), prepare(negative, seed)

    denoise_mask = None
    inpaint = None
    if latent.get("noise_mask") is not None:
        denoise_mask = prepare_denoise_mask(latent["noise_mask"], samples.shape).to(device)
        inpaint_noise = noise
        if sampler_name in RANDOM_INPAINT_NOISE_SAMPLERS:
            generator = torch.Generator("cpu").manual_seed((int(seed) + 1) % SEED_LIMIT)
            inpaint_noise = torch.randn(samples.shape, generator=generator, dtype=torch.float32).to(device)
        inpaint = InpaintBlend(denoise_mask, latent_in, inpaint_noise)

    positive, negative = controls_for_run([positive, controls_for_uncond(positive, negative)])
    denoiser = GuidedDenoiser(
        model,
        positive,
        negative,
        float(cfg),
        force_uncond=is_cfg_pp(sampler_name) or getattr(sampler, "needs_uncond_denoised", False),
        inpaint=inpaint,
        latent_in=latent_in,
        denoise_mask=denoise_mask,
        guidance=RunGuidance.start(getattr(model, "guidance", ())),
        sigmas=sigmas,
        predict=predict,
    )
    last_x0: list[torch.Tensor] = []

    def on_step(info: dict) -> None:
        last_x0[:] = [info["denoised"]]
        if callback is not None:
            callback(int(info["i"]), len(sigmas) - 1, info["denoised"], info["x"])

    max_denoise = ms.is_max_denoise(float(sigmas[0]))
    x = ms.noise_scaling(sigmas[0], noise, latent_in, max_denoise)
    out = sampler(denoiser, x, sigmas, extra_args={"seed": int(seed)}, callback=on_step, disable=True,
                  **(sampler_options or {}))
    out = ms.inverse_noise_scaling(sigmas[-1], out)
    result = dict(latent, samples=latent_from_model(model, out).to(latent["samples"].device))
    if not last_x0:
        return result, result
    x0 = latent_from_model(model, last_x0[0]).to(latent["samples"].device)
    return result, dict(latent, samples=x0)


def ksample_advanced(
    model: DiffusionModel,
    *,
    add_noise: str,
    noise_seed: int,
    steps: int,
    cfg: float,
    sampler_name: str,
    scheduler: str,
    positive: list,
    negative: list,
    latent: dict,
    start_at_step: int,
    end_at_step: int,
    return_with_leftover_noise: str,
    callback: StepCallback | None = None,
) -> dict:
    """KSamplerAdvanced's widget values mapped onto `ksample`."""
    return ksample(
        model,
        seed=noise_seed,
        steps=steps,
        cfg=cfg,
        sampler_name=sampler_name,
        scheduler=scheduler,
        positive=positive,
        negative=negative,
        latent=latent,
        denoise=1.0,
        disable_noise=add_noise == "disable",
        start_step=start_at_step,
        last_step=end_at_step,
        force_full_denoise=return_with_leftover_noise != "enable",
        callback=callback,
    )
