"""What ComfyUI packs call on MODEL / CLIP / VAE objects, as mixins of the engine's handles. Patch hooks map onto
the handle's own patch data (a ComfyUI cfg function becomes a guidance hook); attributes that cannot be honoured
are an AttributeError naming them."""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable
from typing import Any

PROVIDED = {
    "MODEL": "clone, model_options, set_model_sampler_cfg_function, set_model_sampler_pre_cfg_function, "
             "set_model_sampler_post_cfg_function, get_model_object, model.model_sampling, model.diffusion_model",
    "CLIP": "clone, tokenize, encode_from_tokens, encode_from_tokens_scheduled",
    "VAE": "encode, decode, encode_tiled, decode_tiled, latent_channels, downscale_ratio, upscale_ratio",
}


def missing(kind: str, name: str) -> AttributeError:
    if name.startswith("__"):
        return AttributeError(name)
    return AttributeError(f"{kind} object has no attribute {name!r}: graphengine's ComfyUI compatibility layer "
                          f"does not provide it (it provides: {PROVIDED[kind]})")


@dataclasses.dataclass(frozen=True)
class ComfyGuidanceHook:
    """A guidance hook (nodes.samplers.guidance) running a ComfyUI sampler cfg / pre-cfg / post-cfg function."""

    stage: str
    fn: Callable
    model: Any

    def start(self) -> Callable:
        return getattr(self, f"_{self.stage}")

    def _args(self, args: Any) -> dict[str, Any]:
        return {"cond": args.cond, "uncond": args.uncond, "cond_scale": args.cond_scale, "timestep": args.sigma,
                "input": args.x, "sigma": args.sigma, "cond_denoised": args.cond_denoised,
                "uncond_denoised": args.uncond_denoised, "model": self.model,
                "model_options": self.model.model_options}

    def _cfg(self, args: Any) -> Any:  # ComfyUI's function returns x - the guided x0
        return args.x - self.fn(self._args(args))

    def _pre_cfg(self, args: Any) -> tuple[Any, Any]:
        out = self.fn({**self._args(args), "conds": None, "conds_out": [args.cond_denoised, args.uncond_denoised]})
        return out[0], out[1]

    def _post_cfg(self, args: Any) -> Any:
        return self.fn({**self._args(args), "denoised": args.denoised})


class InnerModelView:
    """`MODEL.model` (ComfyUI's BaseModel) as far as packs read it: `model_sampling` and `diffusion_model`."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle

    @property
    def model_sampling(self) -> Any:
        return self._handle.get_model_object("model_sampling")

    @property
    def diffusion_model(self) -> Any:
        return self._handle.get_model_object("diffusion_model")

    def __getattr__(self, name: str) -> Any:
        raise missing("MODEL", f"model.{name}")


class ComfyModelMethods:
    """MODEL: ComfyUI's ModelPatcher calls. Hooks may only be set on a `clone()` (the original is cached)."""

    guidance: tuple
    model_sampling: Any

    def clone(self) -> Any:
        copy = dataclasses.replace(self)  # type: ignore[type-var]
        object.__setattr__(copy, "_comfy_clone", True)
        return copy

    @property
    def model_options(self) -> types.MappingProxyType:
        """A read-only view of the ComfyUI-style hooks set on this handle."""
        hooks = [h for h in self.guidance if isinstance(h, ComfyGuidanceHook)]
        cfg = [h.fn for h in hooks if h.stage == "cfg"]
        return types.MappingProxyType({
            "transformer_options": types.MappingProxyType({}),
            **({"sampler_cfg_function": cfg[-1]} if cfg else {}),
            "sampler_pre_cfg_function": tuple(h.fn for h in hooks if h.stage == "pre_cfg"),
            "sampler_post_cfg_function": tuple(h.fn for h in hooks if h.stage == "post_cfg"),
        })

    def _add_hook(self, stage: str, fn: Callable) -> None:
        if not self.__dict__.get("_comfy_clone"):
            raise RuntimeError(f"set a MODEL's {stage.replace('_', '-')} function on model.clone(), not on the "
                               f"model itself (it is shared with other nodes)")
        object.__setattr__(self, "guidance", (*self.guidance, ComfyGuidanceHook(stage, fn, self)))

    def set_model_sampler_cfg_function(self, sampler_cfg_function: Callable,
                                       disable_cfg1_optimization: bool = False) -> None:
        self._add_hook("cfg", sampler_cfg_function)

    def set_model_sampler_pre_cfg_function(self, pre_cfg_function: Callable,
                                           disable_cfg1_optimization: bool = False) -> None:
        self._add_hook("pre_cfg", pre_cfg_function)

    def set_model_sampler_post_cfg_function(self, post_cfg_function: Callable,
                                            disable_cfg1_optimization: bool = False) -> None:
        self._add_hook("post_cfg", post_cfg_function)

    @property
    def model(self) -> InnerModelView:
        return InnerModelView(self)

    def get_model_object(self, name: str) -> Any:
        if name == "model_sampling":
            return self.model_sampling
        if name == "diffusion_model":
            return self.unet  # type: ignore[attr-defined]
        raise AttributeError(f"MODEL.get_model_object({name!r}): only 'model_sampling' and 'diffusion_model' are "
                             f"provided by graphengine's compatibility layer")

    def __getattr__(self, name: str) -> Any:
        raise missing("MODEL", name)


class ComfyClipMethods:
    """CLIP: ComfyUI's encode calls over the engine's tokenize / encode_tokens."""

    def encode_from_tokens(self, tokens: Any, return_pooled: Any = False, return_dict: bool = False) -> Any:
        cond, pooled = self.encode_tokens(tokens)  # type: ignore[attr-defined]
        if return_dict:
            return {"cond": cond, "pooled_output": pooled}
        return (cond, pooled) if return_pooled else cond

    def encode_from_tokens_scheduled(self, tokens: Any, unprojected: bool = False,
                                     add_dict: dict | None = None) -> list:
        cond, pooled = self.encode_tokens(tokens)  # type: ignore[attr-defined]
        return [[cond, {"pooled_output": pooled, **(add_dict or {})}]]

    def __getattr__(self, name: str) -> Any:
        raise missing("CLIP", name)


class ComfyVaeMethods:
    """VAE: encode / decode already take and return ComfyUI's layouts; the ratio names packs read."""

    @property
    def downscale_ratio(self) -> int:
        return self.downscale  # type: ignore[attr-defined]

    @property
    def upscale_ratio(self) -> int:
        return self.downscale  # type: ignore[attr-defined]

    def spacial_compression_encode(self) -> int:
        return self.downscale  # type: ignore[attr-defined]

    def spacial_compression_decode(self) -> int:
        return self.downscale  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> Any:
        raise missing("VAE", name)
