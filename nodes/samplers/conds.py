"""Conditioning evaluation and classifier-free guidance, ComfyUI semantics.

A CONDITIONING is a list of `[context, options]` pairs (context [1|B, T, D]). Every entry
is evaluated as a (possibly area-cropped) model pass; the x0 predictions of all entries
of one conditioning are averaged with per-pixel weights `strength * mask * feather`.
CFG then combines the two averages in x0 space: x0_u + (x0_c - x0_u) * cfg.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F

FEATHER_ROWS = 8  # latent rows/cols over which an area's inner edges fade in
EMPTY_WEIGHT = 1e-37  # keeps the weighted average defined where no entry contributes


def repeat_to_batch(tensor: torch.Tensor, batch: int) -> torch.Tensor:
    """Crop or cyclically repeat dim 0 to `batch` rows."""
    if tensor.shape[0] > batch:
        return tensor[:batch]
    if tensor.shape[0] < batch:
        reps = math.ceil(batch / tensor.shape[0])
        return tensor.repeat((reps,) + (1,) * (tensor.ndim - 1))[:batch]
    return tensor


def resize_mask(mask: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[B,H,W] / [H,W] / [B,1,H,W] mask -> [B,height,width], bilinear (align_corners off)."""
    mask = mask.reshape((-1,) + tuple(mask.shape[-2:])).to(torch.float32)
    if tuple(mask.shape[-2:]) != (height, width):
        mask = F.interpolate(mask.unsqueeze(1), size=(height, width), mode="bilinear", align_corners=False)
        mask = mask.squeeze(1)
    return mask


def resolve_area(area: Any, height: int, width: int) -> tuple[int, int, int, int] | None:
    """ComfyUI area tuple -> (h, w, y, x) in latent pixels, or None for the full latent.

    ConditioningSetArea stores (h, w, y, x) already in latent units (pixels // 8);
    ConditioningSetAreaPercentage stores ("percentage", h, w, y, x) as fractions.
    """
    if area is None:
        return None
    if area[0] == "percentage":
        _, h, w, y, x = area
        return (max(1, round(h * height)), max(1, round(w * width)), round(y * height), round(x * width))
    h, w, y, x = (int(v) for v in area[:4])
    return (h, w, y, x)


def mask_bounds(mask: torch.Tensor) -> tuple[int, int, int, int]:
    """(h, w, y, x) bounding box of mask > 0.5 over the whole batch (full area when empty)."""
    hit = (mask > 0.5).any(dim=0)
    rows = torch.nonzero(hit.any(dim=1)).flatten()
    cols = torch.nonzero(hit.any(dim=0)).flatten()
    if rows.numel() == 0:
        return (mask.shape[-2], mask.shape[-1], 0, 0)
    y0, y1 = int(rows[0]), int(rows[-1]) + 1
    x0, x1 = int(cols[0]), int(cols[-1]) + 1
    return (y1 - y0, x1 - x0, y0, x0)


def feather_area_edges(mult: torch.Tensor, area: tuple[int, int, int, int], height: int, width: int) -> torch.Tensor:
    """Linear fade over FEATHER_ROWS at the area edges that lie inside the latent."""
    h, w, y, x = area
    mult = mult.clone()
    for d in range(FEATHER_ROWS):
        fade = min(1.0, (d + 1) / FEATHER_ROWS)
        if y != 0:
            mult[:, :, d : d + 1, :] *= fade
        if y + h < height:
            mult[:, :, h - 1 - d : h - d, :] *= fade
        if x != 0:
            mult[:, :, :, d : d + 1] *= fade
        if x + w < width:
            mult[:, :, :, w - 1 - d : w - d] *= fade
    return mult


@dataclass(frozen=True)
class CondPass:
    """One conditioning entry prepared for one network pass."""

    slot: int  # which accumulator (0 = positive, 1 = negative)
    window: tuple[slice, slice]  # latent rows/cols this pass covers
    mult: torch.Tensor  # [B, C, h, w] weight of its x0 prediction
    context: torch.Tensor  # [B, T, D]
    concat: torch.Tensor | None  # [B, k, h, w] extra input channels, or None
    extra: dict  # further apply_model kwargs (tensors with B rows)
    control: Any = None  # the entry's `control` (a ControlNet chain with `bind`, see nodes.controlnet), or None


def entry_is_active(options: dict, sigma: float, percent_to_sigma: Callable[[float], float]) -> bool:
    """ConditioningSetTimestepRange: active while percent_to_sigma(end) <= sigma <= percent_to_sigma(start)."""
    if "start_percent" in options and sigma > percent_to_sigma(options["start_percent"]):
        return False
    if "end_percent" in options and sigma < percent_to_sigma(options["end_percent"]):
        return False
    return True


def entry_weight(options: dict, x_shape: torch.Size) -> tuple[tuple[slice, slice], torch.Tensor]:
    """The window and the [B,C,h,w] weight of one conditioning entry."""
    batch, channels, height, width = x_shape
    mask = options.get("mask")
    if mask is not None:
        mask = repeat_to_batch(resize_mask(mask, height, width), batch)
    area = resolve_area(options.get("area"), height, width)
    if mask is not None and options.get("set_area_to_bounds", False):
        area = mask_bounds(mask)
    h, w, y, x = area if area is not None else (height, width, 0, 0)
    window = (slice(y, y + h), slice(x, x + w))
    if mask is not None:
        weight = mask[:, window[0], window[1]] * options.get("mask_strength", 1.0)
        weight = weight.unsqueeze(1).expand(-1, channels, -1, -1)
    else:
        crop_h = len(range(height)[window[0]])
        crop_w = len(range(width)[window[1]])
        weight = torch.ones((batch, channels, crop_h, crop_w), dtype=torch.float32)
    weight = weight * options.get("strength", 1.0)
    if mask is None and area is not None:
        weight = feather_area_edges(weight, (weight.shape[2], weight.shape[3], y, x), height, width)
    return window, weight


def _compatible(a: CondPass, b: CondPass, x: torch.Tensor) -> bool:
    if x[..., a.window[0], a.window[1]].shape != x[..., b.window[0], b.window[1]].shape:
        return False
    if a.context.shape[1:] != b.context.shape[1:]:
        return False
    if (a.concat is None) != (b.concat is None) or (a.concat is not None and a.concat.shape != b.concat.shape):
        return False
    if a.extra.keys() != b.extra.keys() or a.control is not b.control:
        return False
    for key, value in a.extra.items():
        other = b.extra[key]
        if isinstance(value, torch.Tensor) != isinstance(other, torch.Tensor):
            return False
        if not isinstance(value, torch.Tensor) and value is not other:  # e.g. a GLIGEN model: one per call
            return False
        if isinstance(value, torch.Tensor) and value.shape != other.shape:
            return False
    return True


def group_passes(passes: list[CondPass], x: torch.Tensor) -> list[list[CondPass]]:
    """Greedy batching of passes that can share one network call (same shapes)."""
    groups: list[list[CondPass]] = []
    for p in passes:
        for group in groups:
            if _compatible(group[0], p, x):
                group.append(p)
                break
        else:
            groups.append([p])
    return groups


def cat_extra(group: list[CondPass]) -> dict:
    """The passes' extra tensors (pooled output, class labels…) joined along the batch, for one call."""
    merged = {}
    for key, first in group[0].extra.items():
        if isinstance(first, torch.Tensor):
            merged[key] = torch.cat([p.extra[key] for p in group])
        else:
            merged[key] = first
    return merged


def run_group(model, group: list[CondPass], x: torch.Tensor, sigma: torch.Tensor) -> list[torch.Tensor]:
    """One network call for a group of passes; returns each pass's x0 prediction."""
    ms = model.model_sampling
    xs = torch.cat([x[..., p.window[0], p.window[1]] for p in group])
    sigmas = torch.cat([sigma] * len(group))
    x_in = ms.calculate_input(sigmas, xs)
    t = ms.timestep(sigmas).to(torch.float32)
    context = torch.cat([p.context for p in group])
    concat = torch.cat([p.concat for p in group]) if group[0].concat is not None else None
    extra = cat_extra(group)
    if group[0].control is not None:
        control = group[0].control.bind(float(sigma[0]), ms.percent_to_sigma, xs.shape[-2], xs.shape[-1],
                                        xs.shape[0], len(group))
        if control is not None:  # no ControlNet active at this sigma: the call runs as without one
            extra["control"] = control
    out = model.apply_model(x_in, t, context, concat=concat, **extra).to(torch.float32)
    return list(ms.calculate_denoised(sigmas, out, xs).split(x.shape[0]))


def weighted_predictions(model, passes: list[CondPass], x: torch.Tensor, sigma: torch.Tensor, slots: int):
    """Per-slot weighted average of the x0 predictions of all passes."""
    totals = [torch.zeros_like(x) for _ in range(slots)]
    counts = [torch.full_like(x, EMPTY_WEIGHT) for _ in range(slots)]
    for group in group_passes(passes, x):
        for p, x0 in zip(group, run_group(model, group, x, sigma)):
            rows, cols = p.window
            totals[p.slot][..., rows, cols] += x0 * p.mult
            counts[p.slot][..., rows, cols] += p.mult
    return [t / c for t, c in zip(totals, counts)]


def make_passes(
    model, conditioning: list, slot: int, x: torch.Tensor, sigma: torch.Tensor, concat_for: Callable | None
) -> list[CondPass]:
    """CondPass list for the active entries of one CONDITIONING at this sigma."""
    batch, _, height, width = x.shape
    ms = model.model_sampling
    passes = []
    for context, options in conditioning:
        if not entry_is_active(options, float(sigma[0]), ms.percent_to_sigma):
            continue
        window, mult = entry_weight(options, x.shape)
        concat = concat_for(options) if concat_for is not None else None
        if concat is not None:
            concat = concat[..., window[0], window[1]].to(x.device, x.dtype)
        extra = {
            key: value.to(x.device) if isinstance(value, torch.Tensor) else value
            for key, value in (model.extra_conds(options, batch, height, width) or {}).items()
        }
        ctx = repeat_to_batch(context.to(x.device, x.dtype), batch)
        passes.append(CondPass(slot, window, mult.to(x.device, x.dtype), ctx, concat, extra, options.get("control")))
    return passes


@contextlib.contextmanager
def patches_held(model, patches) -> Iterator[None]:
    """Extra module patches held on the live model for the block (through the MODEL's `patched_with`)."""
    if not patches:
        yield
        return
    patched_with = getattr(model, "patched_with", None)
    if patched_with is None:
        raise TypeError(f"{type(model).__name__} cannot hold a module patch for one evaluation")
    with contextlib.ExitStack() as stack:
        for patch in patches:
            stack.enter_context(patched_with(patch))
        yield


def conditioning_x0(model, conditioning: list, x: torch.Tensor, sigma: torch.Tensor, concat_for: Callable | None,
                    patches: tuple = ()) -> torch.Tensor:
    """The weighted x0 prediction of one CONDITIONING's active entries, with `patches` held while it runs."""
    passes = make_passes(model, conditioning, 0, x, sigma, concat_for)
    with patches_held(model, patches):
        return weighted_predictions(model, passes, x, sigma, 1)[0]


def controls_for_uncond(positive: list, negative: list) -> list:
    """ControlNetApply (the old node) marks its entries `control_apply_to_uncond`: their controls also drive the
    negative prompt. As in ComfyUI, only entries without an area take part, and only when no such negative entry has a
    control of its own: the i-th control goes to the (i mod n)-th of those n negative entries (the last one given to
    an entry is the one it keeps)."""
    def no_area(conditioning: list) -> list[tuple[int, dict]]:
        return [(i, options) for i, (_, options) in enumerate(conditioning) if "area" not in options]

    controls = [o["control"] for _, o in no_area(positive)
                if o.get("control_apply_to_uncond") and o.get("control") is not None]
    targets = no_area(negative)
    if not controls or not targets or any(o.get("control") is not None for _, o in targets):
        return negative
    negative = list(negative)
    for n, control in enumerate(controls):
        index, options = targets[n % len(targets)]
        negative[index] = [negative[index][0], {**options, "control": control}]
    return negative


def controls_for_run(conditionings: list[list]) -> list[list]:
    """The run's conditionings with each entry's control bound to this sampling run (`control.for_run(run)`, one
    `run` dict for all of them), e.g. so that T2I-Adapter features are computed once per run, not at every step."""
    run: dict = {}

    def bound(options: dict) -> dict:
        control = options.get("control")
        return {**options, "control": control.for_run(run)} if hasattr(control, "for_run") else options

    return [[[context, bound(options)] for context, options in conditioning] for conditioning in conditionings]


def guided_x0(
    model,
    x: torch.Tensor,
    sigma: torch.Tensor,
    positive: list,
    negative: list,
    cfg: float,
    *,
    force_uncond: bool = False,
    concat_for: Callable | None = None,
    guidance: Any = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """CFG x0 and the uncond x0 (None when the uncond pass is skipped at cfg == 1).

    Uncond passes come first so that a shared network call has rows [uncond, cond]. `guidance` (a
    `guidance.RunGuidance`) replaces or extends the combination; without it the plain formula runs. Its hooks may
    evaluate the model again (`CfgArgs.evaluate`); when it holds patches for the uncond, the uncond and the cond
    run as separate network calls.
    """
    needs_uncond = guidance is not None and guidance.needs_uncond
    with_uncond = force_uncond or needs_uncond or not math.isclose(cfg, 1.0)
    if needs_uncond:
        uncond_x0 = conditioning_x0(model, negative, x, sigma, concat_for, tuple(guidance.uncond_patches))
        preds = [conditioning_x0(model, positive, x, sigma, concat_for), uncond_x0]
    else:
        passes = []
        if with_uncond:
            passes += make_passes(model, negative, 1, x, sigma, concat_for)
        passes += make_passes(model, positive, 0, x, sigma, concat_for)
        preds = weighted_predictions(model, passes, x, sigma, 2 if with_uncond else 1)
    if guidance is not None:
        def evaluate(x_eval: torch.Tensor, which: str, module_patch: Any = None) -> torch.Tensor:
            patches = () if module_patch is None else (module_patch,)
            conditioning = which if isinstance(which, list) else positive if which == "cond" else negative
            return conditioning_x0(model, conditioning, x_eval, sigma, concat_for, patches)

        uncond = preds[1] if with_uncond else torch.zeros_like(preds[0])
        x0, uncond = guidance.combine(x, sigma, preds[0], uncond, cfg, evaluate)
        return x0, uncond if with_uncond else None
    if not with_uncond:
        return preds[0], None
    cond, uncond = preds
    return uncond + (cond - uncond) * cfg, uncond
