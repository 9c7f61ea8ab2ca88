"""KSampler and KSamplerAdvanced: ComfyUI's sampling nodes over the sampling layer's `ksample`."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Annotated, Any

from graphengine import Combo, Float, Int, Node, Output, Socket
from graphengine.spec import INT_LIMIT

from . import costs
from .previews import effective_preview_method, make_step_callback
from .samplers.names import SAMPLER_NAMES, SCHEDULER_NAMES
from .samplers.pipeline import ksample
from .types import Conditioning, Latent, Model

MAX_STEPS = 10000

Seed = Annotated[int, Int(min=0, max=INT_LIMIT, control_after_generate=True,
                          tooltip="The random seed used for creating the noise.")]
Steps = Annotated[int, Int(min=1, max=MAX_STEPS, tooltip="The number of steps used in the denoising process.")]
Cfg = Annotated[float, Float(min=0.0, max=100.0, step=0.1, round=0.01,
                             tooltip="Classifier-free guidance scale: how strongly the prompt is followed.")]
SamplerName = Annotated[str, Combo(list(SAMPLER_NAMES), tooltip="The algorithm used when sampling.")]
SchedulerName = Annotated[str, Combo(list(SCHEDULER_NAMES), tooltip="How the noise levels are spaced over the steps.")]
# KSampler's link inputs carry tooltips in /object_info as ComfyUI's do (KSamplerAdvanced's have none there).
DenoisingModel = Annotated[Any, Socket("MODEL", tooltip="The model that denoises the latent.")]
Positive = Annotated[list, Socket("CONDITIONING", tooltip="Conditioning that describes what the image should show.")]
Negative = Annotated[list, Socket("CONDITIONING", tooltip="Conditioning that describes what the image should avoid.")]
LatentToDenoise = Annotated[dict, Socket("LATENT", tooltip="The latent image to denoise.")]


def _pinned(model: Any):
    """Keep the UNet on the compute device, with its weight patches applied, for the whole run rather than per
    network call."""
    if hasattr(model, "patched"):
        return model.patched()
    manager = getattr(model, "manager", None)
    unet = getattr(model, "unet", None)
    if manager is None or unet is None:
        return contextlib.nullcontext()
    return manager.use(unet)


class CancellableModel:
    """A MODEL whose network calls check for cancellation between sub-batches of a big batch."""

    def __init__(self, model: Any, interrupt: Callable[[], None]) -> None:
        self.model = model
        self.interrupt = interrupt

    def __getattr__(self, name: str) -> Any:
        if name in ("model", "interrupt"):  # not set yet (e.g. while copying): no recursion
            raise AttributeError(name)
        return getattr(self.model, name)

    def apply_model(self, *args: Any, **kwargs: Any) -> Any:
        return self.model.apply_model(*args, interrupt=self.interrupt, **kwargs)


def run_sampler(ctx: Any, model: Any, sample: Callable[..., Any] = ksample, **kwargs: Any) -> Any:
    """`sample` (`ksample`, or the pipeline's `sample_sigmas`) with progress per step, previews when enabled and
    cancellation between network calls, through the node context."""
    ctx.check_cancelled()
    method = effective_preview_method(ctx.services, ctx.extra_data)
    with _pinned(model):
        return sample(CancellableModel(model, ctx.check_cancelled), callback=make_step_callback(ctx, model, method),
                      **kwargs)


class KSampler(Node):
    """Uses the provided model, positive and negative conditioning to denoise the latent image."""

    DISPLAY_NAME = "KSampler"
    CATEGORY = "sampling"
    RETURNS = (Output("LATENT", tooltip="The denoised latent."),)

    model: DenoisingModel
    seed: Seed = 0
    steps: Steps = 20
    cfg: Cfg = 8.0
    sampler_name: SamplerName
    scheduler: SchedulerName
    positive: Positive
    negative: Negative
    latent_image: LatentToDenoise
    denoise: Annotated[float, Float(min=0.0, max=1.0, step=0.01,
                                    tooltip="The amount of denoising applied; lower keeps more of the input.")] = 1.0

    @classmethod
    def estimate(cls, inputs, upstream, services=None):
        return costs.sampling(upstream.get("latent_image"), inputs.get("steps", 0))

    def execute(self, ctx) -> tuple:
        latent = run_sampler(ctx, self.model, seed=self.seed, steps=self.steps, cfg=self.cfg,
                             sampler_name=self.sampler_name, scheduler=self.scheduler, positive=self.positive,
                             negative=self.negative, latent=self.latent_image, denoise=self.denoise)
        return (latent,)


class KSamplerAdvanced(Node):
    """KSampler with explicit control over noise and the range of steps that run."""

    DISPLAY_NAME = "KSampler (Advanced)"
    CATEGORY = "sampling"
    RETURNS = (Output("LATENT"),)

    model: Model
    add_noise: Annotated[str, Combo(["enable", "disable"])]
    noise_seed: Annotated[int, Int(min=0, max=INT_LIMIT, control_after_generate=True)] = 0
    steps: Annotated[int, Int(min=1, max=MAX_STEPS)] = 20
    cfg: Annotated[float, Float(min=0.0, max=100.0, step=0.1, round=0.01)] = 8.0
    sampler_name: Annotated[str, Combo(list(SAMPLER_NAMES))]
    scheduler: Annotated[str, Combo(list(SCHEDULER_NAMES))]
    positive: Conditioning
    negative: Conditioning
    latent_image: Latent
    start_at_step: Annotated[int, Int(min=0, max=MAX_STEPS)] = 0
    end_at_step: Annotated[int, Int(min=0, max=MAX_STEPS)] = MAX_STEPS
    return_with_leftover_noise: Annotated[str, Combo(["disable", "enable"])]

    @classmethod
    def estimate(cls, inputs, upstream, services=None):
        steps, start, end = (inputs.get(n, 0) for n in ("steps", "start_at_step", "end_at_step"))
        return costs.sampling(upstream.get("latent_image"), min(steps, end) - start)

    def execute(self, ctx) -> tuple:
        latent = run_sampler(ctx, self.model, seed=self.noise_seed, steps=self.steps, cfg=self.cfg,
                             sampler_name=self.sampler_name, scheduler=self.scheduler, positive=self.positive,
                             negative=self.negative, latent=self.latent_image, denoise=1.0,
                             disable_noise=self.add_noise == "disable", start_step=self.start_at_step,
                             last_step=self.end_at_step,
                             force_full_denoise=self.return_with_leftover_noise != "enable")
        return (latent,)


NODE_CLASSES = [KSampler, KSamplerAdvanced]
