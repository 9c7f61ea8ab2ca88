"""GUIDER values: how the conditionings' x0 predictions become one x0 at each step, and ComfyUI's guider nodes.

A `Guider` holds the model and its conditionings. The CFG and basic guiders run the KSampler path itself
(`predict` is None: the pipeline's cfg combination with the model's guidance hooks); the dual-CFG and Perp-Neg
guiders give a `predict` function that evaluates their three conditionings in one batched pass."""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Annotated, Any, Callable

import torch

from graphengine import Combo, Float, Node, Output

from ..samplers.conds import make_passes, weighted_predictions
from ..samplers.guidance import CfgArgs, plain_cfg
from ..types import Conditioning, Model

CATEGORY = "sampling/custom_sampling/guiders"
Cfg = Annotated[float, Float(min=0.0, max=100.0, step=0.1, round=0.01)]


@dataclass(frozen=True)
class Guider:
    """A GUIDER: the model, the positive / negative conditionings and cfg of the plain path, or `predict`."""

    model: Any
    positive: list
    negative: list
    cfg: float = 1.0
    predict: Callable[..., Any] | None = None


def slot_predictions(model, x, sigma, conditionings: list, concat_for) -> list[torch.Tensor]:
    """Weighted x0 of each conditioning in one batched evaluation; a None conditioning gives zeros (skipped)."""
    passes = []
    for slot, conditioning in enumerate(conditionings):
        if conditioning is not None:
            passes += make_passes(model, conditioning, slot, x, sigma, concat_for)
    return weighted_predictions(model, passes, x, sigma, len(conditionings))


def combined(x, sigma, cond, uncond, scale: float, guidance) -> torch.Tensor:
    """cond and uncond combined at `scale` through the model's guidance hooks (plain cfg without any)."""
    if guidance is None:
        return plain_cfg(CfgArgs(x, sigma, scale, cond, uncond))
    return guidance.combine(x, sigma, cond, uncond, scale)[0]


def dual_cfg_x0(model, x, sigma, *, positive, middle, negative, cfg_conds: float, cfg_cond2_negative: float,
                nested: bool, force_uncond: bool = False, concat_for=None, guidance=None):
    """DualCFGGuider. regular: cfg(middle vs negative) + (positive - middle) * cfg_conds; nested: negative +
    cfg_cond2_negative * (cfg(positive vs middle at cfg_conds) - negative). Returns (x0, the uncond used)."""
    if not nested and not force_uncond and math.isclose(cfg_cond2_negative, 1.0):
        negative = None
        if math.isclose(cfg_conds, 1.0):
            middle = None
    neg, mid, pos = slot_predictions(model, x, sigma, [negative, middle, positive], concat_for)
    if nested:
        text = combined(x, sigma, pos, mid, cfg_conds, guidance)
        return neg + cfg_cond2_negative * (text - neg), mid
    return combined(x, sigma, mid, neg, cfg_cond2_negative, guidance) + (pos - mid) * cfg_conds, neg


def perp_neg(pos: torch.Tensor, neg: torch.Tensor, empty: torch.Tensor, neg_scale: float,
             cond_scale: float) -> torch.Tensor:
    """Perp-Neg (Armandpour et al. 2023): only the part of the negative direction perpendicular to the positive
    one (both relative to the empty prompt, projected over the whole batch) is pushed away from."""
    pos_dir = pos - empty
    neg_dir = neg - empty
    perpendicular = neg_dir - (neg_dir * pos_dir).sum() / torch.norm(pos_dir) ** 2 * pos_dir
    return empty + cond_scale * (pos_dir - perpendicular * neg_scale)


def perp_neg_x0(model, x, sigma, *, positive, negative, empty, cfg: float, neg_scale: float,
                force_uncond: bool = False, concat_for=None, guidance=None):
    """PerpNegGuider: positive, negative and empty in one pass, the model's pre- and post-cfg hooks around
    `perp_neg`. Returns (x0, the negative's x0)."""
    if not force_uncond and math.isclose(neg_scale, 0.0):
        negative = None
        if math.isclose(cfg, 1.0):
            empty = None
    pos, neg, none = slot_predictions(model, x, sigma, [positive, negative, empty], concat_for)
    args = CfgArgs(x, sigma, cfg, pos, neg)
    for fn in (guidance.pre_cfg if guidance is not None else ()):
        pos, neg = fn(args)
        args = dataclasses.replace(args, cond_denoised=pos, uncond_denoised=neg)
    x0 = perp_neg(pos, neg, none, neg_scale, cfg)
    for fn in (guidance.post_cfg if guidance is not None else ()):
        x0 = fn(dataclasses.replace(args, denoised=x0))
    return x0, neg


def _model(value, node: str):
    if value is None:
        raise ValueError(f"{node}: the MODEL input is empty (the checkpoint has no diffusion model)")
    return value


class BasicGuider(Node):
    """Guides with one conditioning only (no negative, cfg 1)."""

    CATEGORY = CATEGORY
    RETURNS = (Output("GUIDER"),)

    model: Model
    conditioning: Conditioning

    def execute(self, ctx) -> tuple:
        return (Guider(_model(self.model, "BasicGuider"), self.conditioning, []),)


class CFGGuider(Node):
    """Classifier-free guidance between a positive and a negative conditioning, as KSampler does."""

    CATEGORY = CATEGORY
    RETURNS = (Output("GUIDER"),)

    model: Model
    positive: Conditioning
    negative: Conditioning
    cfg: Cfg = 8.0

    def execute(self, ctx) -> tuple:
        return (Guider(_model(self.model, "CFGGuider"), self.positive, self.negative, float(self.cfg)),)


class DualCFGGuider(Node):
    """Guides towards two conditionings with separate scales (cond1 relative to cond2, cond2 to the negative)."""

    CATEGORY = CATEGORY
    RETURNS = (Output("GUIDER"),)

    model: Model
    cond1: Conditioning
    cond2: Conditioning
    negative: Conditioning
    cfg_conds: Cfg = 8.0
    cfg_cond2_negative: Cfg = 8.0
    style: Annotated[str, Combo(["regular", "nested"])]

    def execute(self, ctx) -> tuple:
        predict = functools.partial(dual_cfg_x0, positive=self.cond1, middle=self.cond2, negative=self.negative,
                                    cfg_conds=float(self.cfg_conds),
                                    cfg_cond2_negative=float(self.cfg_cond2_negative), nested=self.style == "nested")
        return (Guider(_model(self.model, "DualCFGGuider"), self.cond1, self.negative, float(self.cfg_conds),
                       predict),)


class PerpNegGuider(Node):
    """Perp-Neg guidance: the negative prompt only removes what is perpendicular to the positive one."""

    CATEGORY = "_for_testing"
    EXPERIMENTAL = True
    RETURNS = (Output("GUIDER"),)

    model: Model
    positive: Conditioning
    negative: Conditioning
    empty_conditioning: Conditioning
    cfg: Cfg = 8.0
    neg_scale: Annotated[float, Float(min=0.0, max=100.0, step=0.01)] = 1.0

    def execute(self, ctx) -> tuple:
        predict = functools.partial(perp_neg_x0, positive=self.positive, negative=self.negative,
                                    empty=self.empty_conditioning, cfg=float(self.cfg),
                                    neg_scale=float(self.neg_scale))
        return (Guider(_model(self.model, "PerpNegGuider"), self.positive, self.negative, float(self.cfg), predict),)


NODE_CLASSES = [BasicGuider, CFGGuider, DualCFGGuider, PerpNegGuider]
