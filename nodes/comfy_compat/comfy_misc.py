"""The smaller modules packs import: the `comfy` package itself, `comfy.samplers` (the engine's sampler and
scheduler names), `execution` (a name only), `comfy.sd` / `comfy.model_patcher` (handle class names for isinstance checks), `node_helpers`
and `latent_preview`."""

from __future__ import annotations

import hashlib
import types
from collections.abc import Callable
from typing import Any

from PIL import ImageFile

from graphengine import current_context

from ..samplers.names import SAMPLER_NAMES, SCHEDULER_NAMES
from . import make_module


def build_comfy_package() -> types.ModuleType:
    module = make_module("comfy", "graphengine's stand-in for ComfyUI's `comfy` package (see its submodules).", {})
    module.__path__ = []  # a package: an unprovided submodule is a plain ModuleNotFoundError
    return module


class KSampler:
    """Only the name lists: `KSampler.SAMPLERS` / `KSampler.SCHEDULERS` are the engine's KSampler combos."""

    SAMPLERS = list(SAMPLER_NAMES)
    SCHEDULERS = list(SCHEDULER_NAMES)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError("comfy.samplers.KSampler objects are not provided by graphengine's compatibility "
                                  "layer: use the KSampler node (nodes.KSampler / nodes.common_ksampler)")


def build_execution() -> types.ModuleType:
    """ComfyUI's `execution` module by name only: packs that import it to patch the executor still load; every
    attribute they then read is the layer's AttributeError (this engine's executor is not ComfyUI's)."""
    return make_module("execution", "graphengine's stand-in for ComfyUI's `execution` module: it provides nothing.",
                       {})


def build_samplers() -> types.ModuleType:
    return make_module("comfy.samplers", __doc__, {
        "KSampler": KSampler, "SAMPLER_NAMES": list(KSampler.SAMPLERS), "KSAMPLER_NAMES": list(KSampler.SAMPLERS),
        "SCHEDULER_NAMES": list(KSampler.SCHEDULERS)})


def build_sd() -> types.ModuleType:
    from ..clip import ClipModel
    from ..handles import VaeModel
    return make_module("comfy.sd", "Handle classes: `VAE` and `CLIP` are the engine's VAE and CLIP handles.",
                       {"VAE": VaeModel, "CLIP": ClipModel})


def build_model_patcher() -> types.ModuleType:
    from ..handles import UNetModel
    return make_module("comfy.model_patcher", "`ModelPatcher` is the engine's MODEL handle class.",
                       {"ModelPatcher": UNetModel})


def conditioning_set_values(conditioning: list, values: dict | None = None, append: bool = False) -> list:
    """A copy of a CONDITIONING with `values` set in every entry's dict (`append`: list values are added to the
    entry's existing list instead of replacing it)."""
    out = []
    for cond, extras in conditioning:
        extras = dict(extras)
        for key, value in (values or {}).items():
            extras[key] = [*extras.get(key, []), *value] if append and key in extras else value
        out.append([cond, extras])
    return out


def pillow(fn: Callable, arg: Any) -> Any:
    """Call a PIL function; when the image is truncated, call it again accepting truncated data."""
    try:
        return fn(arg)
    except (OSError, ValueError):
        previous = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = True
        try:
            return fn(arg)
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = previous


def build_node_helpers() -> types.ModuleType:
    return make_module("node_helpers", "ComfyUI's node_helpers: conditioning values, tolerant PIL calls, hashing.",
                       {"conditioning_set_values": conditioning_set_values, "pillow": pillow,
                        "hasher": lambda: hashlib.sha256})


def build_latent_preview(bound: Any) -> types.ModuleType:
    from ..previews import PREVIEW_MAX_SIDE, effective_preview_method, make_step_callback

    def prepare_callback(model: Any, steps: int, x0_output_dict: dict | None = None) -> Callable:
        """callback(step, x0, x, total_steps) for a sampling loop: the running node's progress and previews."""
        ctx = current_context()
        method = effective_preview_method(ctx.services, ctx.extra_data) if ctx is not None else "none"
        on_step = make_step_callback(ctx, model, method) if ctx is not None else None

        def callback(step: int, x0: Any, x: Any, total_steps: int) -> None:
            if x0_output_dict is not None:
                x0_output_dict["x0"] = x0
            if on_step is not None:
                on_step(step, total_steps or steps, x0, x)

        return callback

    return make_module("latent_preview", "Sampling-step callbacks with the engine's progress and previews.",
                       {"prepare_callback": prepare_callback, "MAX_PREVIEW_RESOLUTION": PREVIEW_MAX_SIDE})
