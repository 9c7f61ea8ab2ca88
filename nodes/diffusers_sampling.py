"""DiffusersSchedulerSampler: sampling with a diffusers scheduler by its class name, the way diffusers' pipelines
loop, so that a notebook's result can be reproduced exactly through the engine.

The loop is the pipelines' own: noise from ``torch.Generator("cpu").manual_seed(seed)`` (the whole batch in one
draw) times ``init_noise_sigma``; per timestep ``scale_model_input``, the network on [uncond, cond] rows, classifier
free guidance on the raw outputs (skipped at cfg 1), ``step(..., generator=)`` with the same generator. The scheduler
is built from the MODEL's own scheduler config (its training schedule) with the user's options on top. The run always
starts from noise: the input LATENT gives the size and batch (``DDPMPipeline``, ``StableDiffusionPipeline``).
"""

from __future__ import annotations

import inspect
import json
from typing import Annotated, Any

import torch

from graphengine import Combo, Float, Int, Node, Output, String
from graphengine.spec import INT_LIMIT

from . import costs
from .samplers.conds import cat_extra, controls_for_uncond, group_passes, make_passes, repeat_to_batch
from .pixel_model import PIXEL_LATENT_SPACE
from .samplers.latent_format import latent_from_model
from .sampling import MAX_STEPS, run_sampler
from .types import Conditioning, Latent, Model

DIFFUSERS_SCHEDULERS = ("DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "LMSDiscreteScheduler",
                        "EulerDiscreteScheduler", "HeunDiscreteScheduler", "DPMSolverMultistepScheduler")
_STEP_ONLY = ("eta", "use_clipped_model_output")  # DDIM's step() arguments, accepted in the options too
_EMPTY_WEIGHT = 1e-37


def scheduler_class(name: str) -> type:
    if name not in DIFFUSERS_SCHEDULERS:
        raise ValueError(f"unknown diffusers scheduler {name!r}; expected one of {', '.join(DIFFUSERS_SCHEDULERS)}")
    import diffusers

    return getattr(diffusers, name)


def model_scheduler_config(model: Any) -> dict:
    """The MODEL's training scheduler config; without one, the DDPM table of its sigma schedule as trained betas.
    Latents are not images in [-1, 1]: for a latent-space model clip_sample is off, as StableDiffusionPipeline
    sets it."""
    config = dict(getattr(model, "scheduler_config", None) or _config_from_sigmas(model.model_sampling))
    if getattr(model, "latent_space", None) != PIXEL_LATENT_SPACE:
        config["clip_sample"] = False
    return config


def _config_from_sigmas(ms: Any) -> dict:
    alphas_cumprod = 1.0 / (1.0 + ms.sigmas.to(torch.float64) ** 2)
    betas = 1.0 - alphas_cumprod / torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
    prediction = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}.get(ms.prediction)
    if prediction is None:
        raise ValueError(f"a diffusers scheduler cannot drive a {ms.prediction!r}-prediction model")
    return {"num_train_timesteps": len(betas), "trained_betas": betas.tolist(), "prediction_type": prediction}


def parse_options(text: str) -> dict:
    try:
        options = json.loads(text or "{}")
    except ValueError as exc:
        raise ValueError(f"scheduler_options is not valid JSON: {exc}") from exc
    if not isinstance(options, dict):
        raise ValueError("scheduler_options must be a JSON object, e.g. {\"timestep_spacing\": \"trailing\"}")
    return options


def build_scheduler(name: str, base_config: dict, options: dict) -> tuple[Any, dict]:
    """(scheduler, step() keyword options): the base config's keys the class knows, the options on top; an
    option the class does not know is an error naming the ones it does."""
    cls = scheduler_class(name)
    known = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    step_params = inspect.signature(cls.step).parameters
    step_options = {k: v for k, v in options.items() if k in _STEP_ONLY and k in step_params}
    unknown = sorted(set(options) - set(known) - set(step_options))
    if unknown:
        raise ValueError(f"{name} has no option {', '.join(map(repr, unknown))}; its options are "
                         f"{', '.join(known + [k for k in _STEP_ONLY if k in step_params])}")
    config = {k: v for k, v in base_config.items() if k in known}
    config.update({k: v for k, v in options.items() if k in known})
    try:
        return cls(**config), step_options
    except (TypeError, ValueError, NotImplementedError) as exc:
        raise ValueError(f"{name}: {exc}") from exc


def _check_no_control(passes: list) -> None:
    if any(p.control is not None for p in passes):
        raise ValueError("DiffusersSchedulerSampler does not run ControlNets; use KSampler")


def guided_output(model: Any, x_in: torch.Tensor, t: torch.Tensor, positive: list, negative: list, cfg: float,
                  sigma: torch.Tensor) -> torch.Tensor:
    """The network's raw output (eps, v, …) for the scheduler-scaled input at timestep t, guided on raw outputs
    like the diffusers pipelines; conditioning areas and masks weight the outputs as in KSampler."""
    with_uncond = cfg != 1.0
    passes = (make_passes(model, negative, 1, x_in, sigma, None) if with_uncond else []) + \
        make_passes(model, positive, 0, x_in, sigma, None)
    _check_no_control(passes)
    slots = 2 if with_uncond else 1
    totals = [torch.zeros_like(x_in) for _ in range(slots)]
    counts = [torch.full_like(x_in, _EMPTY_WEIGHT) for _ in range(slots)]
    for group in group_passes(passes, x_in):
        xs = torch.cat([x_in[..., p.window[0], p.window[1]] for p in group])
        concat = torch.cat([p.concat for p in group]) if group[0].concat is not None else None
        out = model.apply_model(xs, repeat_to_batch(t.reshape(1), xs.shape[0]),
                                torch.cat([p.context for p in group]), concat=concat, **cat_extra(group))
        for p, part in zip(group, out.to(torch.float32).split(x_in.shape[0])):
            rows, cols = p.window
            totals[p.slot][..., rows, cols] += part * p.mult
            counts[p.slot][..., rows, cols] += p.mult
    outputs = [total / count for total, count in zip(totals, counts)]
    if not with_uncond:
        return outputs[0]
    cond, uncond = outputs
    return uncond + cfg * (cond - uncond)


def _sigma_at(model: Any, t: torch.Tensor) -> torch.Tensor:
    return model.model_sampling.sigma(torch.as_tensor(t, dtype=torch.float32).reshape(1))


def diffusers_sample(model: Any, *, scheduler_name: str, options: dict, steps: int, seed: int, cfg: float,
                     positive: list, negative: list, latent: dict, callback: Any = None) -> dict:
    """One diffusers-style sampling loop; returns the LATENT (VAE units, like every sampler)."""
    scheduler, step_options = build_scheduler(scheduler_name, model_scheduler_config(model), options)
    scheduler.set_timesteps(steps)
    generator = torch.Generator("cpu").manual_seed(int(seed))
    if "generator" in inspect.signature(scheduler.step).parameters:
        step_options["generator"] = generator
    shape = latent["samples"].shape
    x = torch.randn(shape, generator=generator, dtype=torch.float32) * scheduler.init_noise_sigma
    negative = controls_for_uncond(positive, negative)
    prepare = getattr(model, "prepare_conditioning", None)
    if prepare is not None:
        positive, negative = prepare(positive, seed), prepare(negative, seed)
    timesteps = scheduler.timesteps
    for i, t in enumerate(timesteps):
        x_in = scheduler.scale_model_input(x, t)
        output = guided_output(model, x_in, t, positive, negative, float(cfg), _sigma_at(model, t))
        result = scheduler.step(output, t, x, **step_options)
        x = result.prev_sample
        if callback is not None:
            x0 = getattr(result, "pred_original_sample", None)
            callback(i, len(timesteps), x0 if x0 is not None else x, x)
    return dict(latent, samples=latent_from_model(model, x).to(latent["samples"].device))


class DiffusersSchedulerSampler(Node):
    """Samples with a diffusers scheduler by name, exactly as diffusers' pipelines do (same seed, same image)."""

    DISPLAY_NAME = "Diffusers Scheduler Sampler"
    CATEGORY = "sampling"
    RETURNS = (Output("LATENT"),)

    model: Model
    positive: Conditioning
    negative: Conditioning
    latent_image: Latent
    scheduler: Annotated[str, Combo(list(DIFFUSERS_SCHEDULERS), tooltip="The diffusers scheduler class.")]
    seed: Annotated[int, Int(min=0, max=INT_LIMIT, control_after_generate=True,
                             tooltip="Seeds torch.Generator('cpu'), as generator= in a diffusers pipeline.")] = 0
    steps: Annotated[int, Int(min=1, max=MAX_STEPS, tooltip="num_inference_steps.")] = 50
    cfg: Annotated[float, Float(min=0.0, max=100.0, step=0.1, round=0.01,
                                tooltip="guidance_scale (1 = no guidance, a single network pass).")] = 1.0
    scheduler_options: Annotated[str, String(
        multiline=True, tooltip="JSON object of the scheduler's own options on top of the model's config, e.g. "
        '{"timestep_spacing": "trailing", "eta": 0.0}')] = "{}"

    @classmethod
    def estimate(cls, inputs, upstream, services=None):
        return costs.sampling(upstream.get("latent_image"), inputs.get("steps", 0))

    def execute(self, ctx) -> tuple:
        options = parse_options(self.scheduler_options)
        build_scheduler(self.scheduler, model_scheduler_config(self.model), options)  # bad options fail up front
        latent = run_sampler(ctx, self.model, diffusers_sample, scheduler_name=self.scheduler, options=options,
                             steps=self.steps, seed=self.seed, cfg=self.cfg, positive=self.positive,
                             negative=self.negative, latent=self.latent_image)
        return (latent,)


NODE_CLASSES = [DiffusersSchedulerSampler]
