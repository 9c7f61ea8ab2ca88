"""The MODEL handle of a pixel-space model (a diffusers ``UNet2DModel``) and the stand-in VAE its loader returns.

A pixel model samples the image itself: its LATENT is ``{"samples": [B, 3, H, W]}`` in [-1, 1] (latent scale
factor 1, no VAE), its conditioning is empty (``EmptyConditioning``, or ``ConditioningZeroOut`` of a text
conditioning) plus a class label for a UNet with a class embedding (``ConditioningSetClassLabel``). It implements
the sampling layer's DiffusionModel protocol, so KSampler, KSamplerAdvanced and the custom-sampling nodes drive it
like any other MODEL; its noise schedule comes from the scheduler config it was trained with.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from .handles import ModuleSource, batch_rows, held_bytes, live_module, module_device_dtype, on_compute_device
from .samplers.model_sampling import ModelSampling, ModelSamplingDiscrete
from .work import UNET_CALL_PIXELS, Interrupt, cancel_checks, device_budget, row_chunks, rows_per_call, run_units

PIXEL_LATENT_SPACE = "pixel"
PIXEL_FAMILY = "pixel_unet2d"
CLASS_LABEL_KEY = "class_label"  # conditioning option: the class index for a UNet2DModel with a class embedding
_PREDICTIONS = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
_NOT_A_LATENT_MODEL = ("{name} is a pixel-space model: it has no VAE, its LATENT is the image itself. Convert with "
                       "PixelLatentToImage / ImageToPixelLatent instead of VAE Decode / VAE Encode.")


def model_sampling_from_scheduler(config: dict) -> ModelSampling:
    """The sigma table of a diffusers DDPM-style scheduler config (linear or scaled-linear betas)."""
    prediction = str(config.get("prediction_type", "epsilon"))
    if prediction not in _PREDICTIONS:
        raise ValueError(f"unsupported prediction_type {prediction!r}; expected one of {', '.join(_PREDICTIONS)}")
    schedule = str(config.get("beta_schedule", "linear"))
    if schedule not in ("linear", "scaled_linear"):
        raise ValueError(f"unsupported beta_schedule {schedule!r} for KSampler; use DiffusersSchedulerSampler")
    return ModelSamplingDiscrete(prediction=_PREDICTIONS[prediction], beta_schedule=schedule,
                                 linear_start=float(config.get("beta_start", 0.0001)),
                                 linear_end=float(config.get("beta_end", 0.02)),
                                 timesteps=int(config.get("num_train_timesteps", 1000)))


def unconditional_context(context: torch.Tensor) -> None:
    """Accept empty or all-zero conditioning; text conditioning means the graph is wired for another model."""
    if context.numel() and torch.count_nonzero(context):
        raise ValueError("this pixel-space model is unconditional: text conditioning does not apply to it; give it "
                         "EmptyConditioning (or ConditioningZeroOut of the text conditioning)")


@dataclass(frozen=True, eq=False)
class PixelUNetModel:
    """MODEL: a diffusers UNet2DModel denoising RGB images in [-1, 1]."""

    unet_source: ModuleSource
    model_sampling: ModelSampling
    scheduler_config: dict
    in_channels: int
    name: str = "pixel model"
    manager: Any = None
    latent_scale_factor: float = 1.0
    latent_space: str = PIXEL_LATENT_SPACE
    family: str = PIXEL_FAMILY
    guidance: tuple = ()  # guidance hooks (nodes.samplers.guidance), as on UNetModel

    @classmethod
    def build(cls, unet: ModuleSource, scheduler_config: dict, *, name: str, manager: Any = None) -> PixelUNetModel:
        return cls(unet_source=unet, model_sampling=model_sampling_from_scheduler(scheduler_config),
                   scheduler_config=dict(scheduler_config), in_channels=int(unet.config.in_channels), name=name,
                   manager=manager)

    @property
    def unet(self) -> torch.nn.Module:
        return live_module(self.unet_source)

    @property
    def nbytes(self) -> int:
        return held_bytes(self.unet_source)

    @property
    def num_class_embeds(self) -> int | None:
        count = getattr(self.unet_source.config, "num_class_embeds", None)
        return None if count is None else int(count)

    @property
    def sample_size(self) -> int:
        size = self.unet_source.config.sample_size
        return int(size[0] if isinstance(size, (list, tuple)) else size)

    def with_guidance(self, hook: Any) -> PixelUNetModel:
        return dataclasses.replace(self, guidance=(*self.guidance, hook))

    def with_model_sampling(self, model_sampling: Any) -> PixelUNetModel:
        return dataclasses.replace(self, model_sampling=model_sampling)

    @contextlib.contextmanager
    def patched(self) -> Iterator[torch.nn.Module]:
        """The live UNet on the compute device for the block (the sampler holds it for a whole run)."""
        with on_compute_device(self.manager, self.unet_source) as unet:
            yield unet

    def extra_conds(self, cond_dict: dict, batch: int, height: int, width: int) -> dict:
        label = cond_dict.get(CLASS_LABEL_KEY)
        classes = self.num_class_embeds
        if classes is None:
            if label is not None:
                raise ValueError(f"{self.name} has no class embedding: remove ConditioningSetClassLabel")
            return {}
        if label is None:
            raise ValueError(f"{self.name} is class-conditional ({classes} classes): set the class with "
                             "ConditioningSetClassLabel")
        if not 0 <= int(label) < classes:
            raise ValueError(f"class label {label} is out of range for {self.name} (0..{classes - 1})")
        return {"class_labels": torch.full((batch,), int(label), dtype=torch.long)}

    def apply_model(self, x_in: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                    concat: torch.Tensor | None = None, *, interrupt: Interrupt | None = None, control: Any = None,
                    **extra: Any) -> torch.Tensor:
        """Raw UNet output for a batch of images; a big batch runs in row chunks with `interrupt()` before each."""
        if concat is not None or control is not None:
            raise ValueError(f"{self.name} takes no extra input channels or ControlNet")
        if x_in.shape[1] != self.in_channels:
            raise ValueError(f"{self.name} denoises {self.in_channels}-channel images, got a {x_in.shape[1]}-channel "
                             "LATENT: start from EmptyPixelLatent or ImageToPixelLatent, not a VAE latent")
        unconditional_context(context)
        batch = x_in.shape[0]
        labels = extra.get("class_labels")
        with self.patched() as unet:
            device, dtype = module_device_dtype(unet)

            def run(rows: slice) -> torch.Tensor:
                steps = batch_rows(t, rows, batch).to(device)
                row_labels = None if labels is None else batch_rows(labels, rows, batch).to(device)
                with torch.no_grad():
                    out = unet(x_in[rows].to(device, dtype), steps, class_labels=row_labels, return_dict=False)[0]
                return out.to(x_in.device, torch.float32)

            per_call = rows_per_call(x_in.shape[-2] * x_in.shape[-1], device_budget(UNET_CALL_PIXELS, device))
            outs = run_units(row_chunks(batch, per_call), run, cancel_checks(interrupt) if interrupt else None)
        return outs[0] if len(outs) == 1 else torch.cat(outs)


@dataclass(frozen=True)
class NoVae:
    """The VAE output of a loader given a pixel-space model: every use fails with an error that says why."""

    name: str
    nbytes: int = 0

    def _fail(self, *_: Any, **__: Any) -> Any:
        raise RuntimeError(_NOT_A_LATENT_MODEL.format(name=self.name))

    encode = decode = encode_tiled = decode_tiled = _fail

    @property
    def vae(self) -> Any:
        return self._fail()

    @property
    def latent_channels(self) -> int:
        return self._fail()

    @property
    def downscale(self) -> int:
        return self._fail()

    @property
    def scaling_factor(self) -> float:
        return self._fail()


def pixel_configs(path: Any) -> dict | None:
    """The training scheduler config of a pixel-space model file or folder (headers only), None if it is not one."""
    from .models.pixel_unet import is_pixel_file, is_pixel_folder, scheduler_config_of

    if not (is_pixel_file(path) or is_pixel_folder(path)):
        return None
    return scheduler_config_of(path)


def load_pixel_handle(services: Any, path: Any, name: str) -> PixelUNetModel | None:
    """MODEL for a pixel-space model at `path` (cached by the model manager), or None when it is not one."""
    from pathlib import Path

    from .models.pixel_unet import load_pixel_model

    scheduler_config = pixel_configs(path)
    if scheduler_config is None:
        return None
    manager = services.manager
    key = ("pixel_unet", str(Path(path).resolve()))
    unet = manager.get(key, lambda: load_pixel_model(path).unet, "unet")
    return PixelUNetModel.build(manager.ref(unet), scheduler_config, name=name, manager=manager)
