"""Guidance hooks: patches of how the cond/uncond predictions become one x0 (ComfyUI's sampler pre-cfg, cfg and
post-cfg functions) and of the inpaint denoise mask, carried as data on the MODEL handle.

A hook is a small frozen object with a `stage` and `start()`, which returns the function used for one sampling run
(any per-run state, such as APG's momentum, lives in that function, never in the hook). Stages:

* "pre_cfg": f(args) -> (cond_denoised, uncond_denoised), applied in order before the combination;
* "cfg": f(args) -> combined x0, replacing `uncond + (cond - uncond) * cfg` (the last one set wins);
* "post_cfg": f(args) -> x0, applied in order to the combined x0 (`args.denoised`);
* "denoise_mask": f(sigma, mask, sigmas, model_sampling) -> mask, the per-step inpaint mask (last one wins).

When the uncond pass is skipped (cfg == 1), hooks see an all-zero uncond, as in ComfyUI.

A hook that must run the model again (PAG, SAG) calls `args.evaluate(x, "cond" | "uncond", module_patch)`: the
x0 of that conditioning at the current sigma, for another x and/or with one more module patch held on the live model
for that evaluation only; `which` may also be a CONDITIONING of the hook's own (PerpNeg's empty prompt).
`start()` may return a `StartedHook` instead of a bare function to also hold a module patch on the model while
the uncond of every step is evaluated (SAG records an attention map there); such a hook makes the sampler
evaluate the uncond even at cfg == 1 (ComfyUI's disable_cfg1_optimization).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Literal, Protocol

import torch

STAGES = ("pre_cfg", "cfg", "post_cfg", "denoise_mask")
Which = Literal["cond", "uncond"] | list  # a list: a CONDITIONING evaluated as given


class Evaluate(Protocol):
    def __call__(self, x: torch.Tensor, which: Which, module_patch: Any = None) -> torch.Tensor:
        """The x0 prediction of the cond or uncond conditioning for `x` at the current sigma, with `module_patch`
        (an object with `applied(unet)`) held on the live model for this evaluation only."""
        ...


@dataclass(frozen=True)
class CfgArgs:
    """What a guidance function sees at one model evaluation (x0 predictions, model units)."""

    x: torch.Tensor  # the sampler's x (ComfyUI's "input")
    sigma: torch.Tensor  # [B]
    cond_scale: float
    cond_denoised: torch.Tensor
    uncond_denoised: torch.Tensor
    denoised: torch.Tensor | None = None  # the combined x0 (post_cfg only)
    evaluator: Evaluate | None = None  # runs the model again (None where the caller cannot)

    def evaluate(self, x: torch.Tensor, which: Which, module_patch: Any = None) -> torch.Tensor:
        """x0 of the cond or uncond conditioning for `x` at this sigma (see `Evaluate`)."""
        if not isinstance(which, list) and which not in ("cond", "uncond"):
            raise ValueError(f"evaluate: which must be 'cond' or 'uncond' (or a CONDITIONING list), got {which!r}")
        if self.evaluator is None:
            raise RuntimeError("this guidance hook needs to run the model again, which this sampler cannot do")
        return self.evaluator(x, which, module_patch)

    @property
    def cond(self) -> torch.Tensor:
        """x - cond x0 (ComfyUI's `cond` argument of a cfg function)."""
        return self.x - self.cond_denoised

    @property
    def uncond(self) -> torch.Tensor:
        return self.x - self.uncond_denoised


class GuidanceHook(Protocol):
    stage: str

    def start(self) -> Callable:
        """The function for one sampling run (fresh per-run state)."""
        ...


@dataclass(frozen=True)
class StatelessHook:
    """A hook whose function keeps no state: `start()` returns `fn` itself."""

    stage: str
    fn: Callable

    def start(self) -> Callable:
        return self.fn


@dataclass(frozen=True)
class StartedHook:
    """What `start()` may return instead of a bare function: the function plus a module patch to hold on the model
    while each step's uncond is evaluated."""

    fn: Callable
    uncond_patch: Any = None


@dataclass
class RunGuidance:
    """The hooks of one MODEL bound for one sampling run."""

    pre_cfg: list[Callable] = dataclasses.field(default_factory=list)
    cfg: Callable | None = None
    post_cfg: list[Callable] = dataclasses.field(default_factory=list)
    denoise_mask: Callable | None = None
    uncond_patches: list[Any] = dataclasses.field(default_factory=list)  # held while the uncond is evaluated

    @classmethod
    def start(cls, hooks: tuple) -> RunGuidance | None:
        """None when there are no hooks (the plain cfg path runs untouched)."""
        if not hooks:
            return None
        run = cls()
        for hook in hooks:
            if hook.stage not in STAGES:
                raise ValueError(f"unknown guidance stage {hook.stage!r}")
            fn = hook.start()
            if isinstance(fn, StartedHook):
                if fn.uncond_patch is not None:
                    run.uncond_patches.append(fn.uncond_patch)
                fn = fn.fn
            if hook.stage in ("pre_cfg", "post_cfg"):
                getattr(run, hook.stage).append(fn)
            else:
                setattr(run, hook.stage, fn)
        return run

    @property
    def needs_uncond(self) -> bool:
        """Whether the uncond must be evaluated even at cfg == 1."""
        return bool(self.uncond_patches)

    def combine(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor,
                cond_scale: float, evaluator: Evaluate | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The guided x0 and the uncond x0 after the pre-cfg hooks."""
        args = CfgArgs(x, sigma, cond_scale, cond, uncond, evaluator=evaluator)
        for fn in self.pre_cfg:
            cond, uncond = fn(args)
            args = dataclasses.replace(args, cond_denoised=cond, uncond_denoised=uncond)
        denoised = (self.cfg or plain_cfg)(args)
        for fn in self.post_cfg:
            denoised = fn(dataclasses.replace(args, denoised=denoised))
        return denoised, uncond


def _rows(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-batch-item [B] vector shaped to broadcast over [B, ...]."""
    return value.reshape(value.shape[:1] + (1,) * (like.ndim - 1))


# -- the formulas ------------------------------------------------------------------------------------------------

def plain_cfg(args: CfgArgs) -> torch.Tensor:
    """uncond + (cond - uncond) * cfg, the same operations as the sampler's own combination."""
    return args.uncond_denoised + (args.cond_denoised - args.uncond_denoised) * args.cond_scale


def rescale_cfg(args: CfgArgs, multiplier: float) -> torch.Tensor:
    """CFG rescale (Lin et al. 2023, eq. 16), done in v space as ComfyUI does: the guided v is scaled to the cond
    v's standard deviation and mixed with the plain guided v by `multiplier`."""
    sigma = _rows(args.sigma, args.x)
    var = sigma * sigma + 1.0
    x = args.x / var
    v_cond = (x - args.cond_denoised) * var**0.5 / sigma
    v_uncond = (x - args.uncond_denoised) * var**0.5 / sigma
    v_cfg = v_uncond + args.cond_scale * (v_cond - v_uncond)
    ratio = torch.std(v_cond, dim=(1, 2, 3), keepdim=True) / torch.std(v_cfg, dim=(1, 2, 3), keepdim=True)
    v_final = multiplier * (v_cfg * ratio) + (1.0 - multiplier) * v_cfg
    return x - v_final * sigma / var**0.5


def optimized_scale(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """CFG-Zero*'s s* = <positive, negative> / ||negative||^2 per batch item, shaped [B, 1, 1, 1]."""
    pos = positive.reshape(positive.shape[0], -1)
    neg = negative.reshape(negative.shape[0], -1)
    scale = (pos * neg).sum(dim=1, keepdim=True) / ((neg * neg).sum(dim=1, keepdim=True) + 1e-8)
    return scale.reshape([positive.shape[0]] + [1] * (positive.ndim - 1))


def cfg_zero_star(args: CfgArgs) -> torch.Tensor:
    """CFG-Zero* (Fan et al. 2025) as a post-cfg step: the uncond term is scaled by s*, computed on the noise
    predictions (x - x0)."""
    alpha = optimized_scale(args.cond, args.uncond)
    uncond = args.uncond_denoised
    return args.denoised + uncond * (alpha - 1.0) + args.cond_scale * uncond * (1.0 - alpha)


def project(v: torch.Tensor, onto: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The parts of `v` parallel and orthogonal to `onto`, per batch item (over the last three dims)."""
    unit = torch.nn.functional.normalize(onto, dim=[-1, -2, -3])
    parallel = (v * unit).sum(dim=[-1, -2, -3], keepdim=True) * unit
    return parallel, v - parallel


@dataclass(frozen=True)
class AdaptiveProjectedGuidance:
    """APG (Sadat et al. 2024) as a pre-cfg hook: the guidance cond - uncond is averaged with momentum, clipped to
    `norm_threshold` and split into parts parallel and orthogonal to the cond; the parallel part is scaled by
    `eta`. The momentum buffer belongs to one sampling run (and restarts when sigma goes up, as in ComfyUI)."""

    eta: float = 1.0
    norm_threshold: float = 5.0
    momentum: float = 0.0
    stage: str = "pre_cfg"

    def start(self) -> Callable[[CfgArgs], tuple[torch.Tensor, torch.Tensor]]:
        running: list[Any] = [None, None]  # [running average, previous sigma]

        def pre_cfg(args: CfgArgs) -> tuple[torch.Tensor, torch.Tensor]:
            cond, uncond = args.cond_denoised, args.uncond_denoised
            sigma = float(args.sigma.reshape(-1)[0])
            if running[1] is not None and sigma > running[1]:
                running[0] = None
            running[1] = sigma
            guidance = cond - uncond
            if self.momentum != 0:
                running[0] = guidance if running[0] is None else self.momentum * running[0] + guidance
                guidance = running[0]
            if self.norm_threshold > 0:
                norm = guidance.norm(p=2, dim=[-1, -2, -3], keepdim=True)
                guidance = guidance * torch.minimum(torch.ones_like(norm), self.norm_threshold / norm)
            parallel, orthogonal = project(guidance, cond)
            modified = orthogonal + self.eta * parallel
            return uncond + modified + (cond - uncond) / args.cond_scale, uncond

        return pre_cfg


def differential_mask(sigma: torch.Tensor, mask: torch.Tensor, sigmas: torch.Tensor, model_sampling: Any,
                      strength: float = 1.0) -> torch.Tensor:
    """Differential Diffusion (Levin & Fried 2023): at each step only the mask values at or above the step's
    progress threshold (1 at the first sigma of the run, 0 at its last, measured in model timesteps) are
    regenerated; `strength` < 1 blends that binary mask with the soft one."""
    ms = model_sampling
    sigma_to = ms.sigma_min
    if sigmas[-1] > sigma_to:
        sigma_to = sigmas[-1]
    ts_from, ts_to = ms.timestep(sigmas[0]), ms.timestep(sigma_to)
    threshold = (ms.timestep(sigma.reshape(-1)[0]) - ts_to) / (ts_from - ts_to)
    binary = (mask >= threshold).to(mask.dtype)
    if strength and strength < 1:
        return strength * binary + (1 - strength) * mask
    return binary
