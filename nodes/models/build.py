"""Building diffusers/transformers modules from original-layout weights, and the loaded-model dataclasses.

Conversion original -> diffusers uses diffusers' own ``single_file_utils`` converters
(``convert_ldm_unet_checkpoint``, ``convert_ldm_vae_checkpoint``, ``convert_ldm_clip_checkpoint``,
``convert_open_clip_checkpoint``) with configs we supply, so nothing is fetched from the Hub. Modules are created
with empty (meta) parameters and the converted tensors are assigned, then every parameter is checked present.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    convert_open_clip_checkpoint,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from .attention import use_sdpa
from .derive import derive_text_config
from .detect import Detection, strip_prefix
from .errors import ModelFileError
from .families import UNET_PREFIX, VAE_PREFIX, Family, TextEncoderSpec
from .ldm_layout import hf_clip_keys

TextModel = CLIPTextModel | CLIPTextModelWithProjection
_TEXT_CLASSES = {"CLIPTextModel": CLIPTextModel, "CLIPTextModelWithProjection": CLIPTextModelWithProjection}
_OPEN_CLIP_STAGING = "open_clip."  # neutral prefix: keeps diffusers' SD2 "skip last block" key list from matching
# Keys original files may carry that the built module legitimately has no slot for.
_IGNORABLE_SUFFIXES = ("position_ids", "logit_scale")


@dataclass
class TextEncoder:
    """A text encoder, its tokenizer, and how conditioning reads it (see ``TextEncoderSpec``)."""

    spec: TextEncoderSpec
    model: TextModel
    tokenizer: CLIPTokenizer

    @property
    def kind(self) -> str:
        return self.spec.kind


@dataclass
class LoadedCheckpoint:
    path: Path
    family: Family
    prediction_type: str  # "epsilon" | "v_prediction"
    latent_scale_factor: float
    unet: UNet2DConditionModel | None
    vae: AutoencoderKL | None
    text_encoders: list[TextEncoder]
    scheduler_config: dict
    metadata: dict[str, str] = field(default_factory=dict)
    detection: Detection | None = None

    @property
    def tokenizers(self) -> list[CLIPTokenizer]:
        return [te.tokenizer for te in self.text_encoders]


def move_module(module: torch.nn.Module, device: torch.device | str | None = None,
                dtype: torch.dtype | None = None) -> torch.nn.Module:
    """``nn.Module.to`` without diffusers' ``ModelMixin.to`` override (which warns on every dtype cast)."""
    return torch.nn.Module.to(module, device=device, dtype=dtype)


def _cast(sd: Mapping[str, torch.Tensor], dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    if dtype is None:
        return dict(sd)
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}


def instantiate(factory: Callable[[], torch.nn.Module], sd: Mapping[str, torch.Tensor], what: str,
                dtype: torch.dtype | None, ignorable: tuple[str, ...] = ()) -> torch.nn.Module:
    """Build a module with empty weights and assign exactly ``sd`` to it (missing or extra keys are errors)."""
    with init_empty_weights():
        model = factory()
    expected = set(model.state_dict(keep_vars=True))  # keep_vars: no per-tensor detach on meta
    extra = [k for k in sd if k not in expected and not k.endswith(_IGNORABLE_SUFFIXES) and k not in ignorable]
    missing = sorted(expected - set(sd))
    if missing or extra:
        raise ModelFileError(
            f"{what} weights do not match the expected architecture: {len(missing)} missing "
            f"(e.g. {missing[:3]}), {len(extra)} unexpected (e.g. {extra[:3]})"
        )
    try:
        model.load_state_dict(_cast({k: v for k, v in sd.items() if k in expected}, dtype), strict=True, assign=True)
    except RuntimeError as e:
        raise ModelFileError(f"{what} weights do not fit the architecture: {e}") from e
    if dtype is not None:
        move_module(model, dtype=dtype)  # buffers created at init (parameters already carry ``dtype``)
    return use_sdpa(model.eval())


def unet_from_original(
    sd: Mapping[str, torch.Tensor], config: Mapping, dtype: torch.dtype | None
) -> UNet2DConditionModel:
    """``sd``: keys under ``model.diffusion_model.`` (other keys are ignored)."""
    converted = convert_ldm_unet_checkpoint(sd, dict(config))
    return instantiate(lambda: UNet2DConditionModel.from_config(dict(config)), converted, "UNet", dtype)


def vae_from_original(sd: Mapping[str, torch.Tensor], config: Mapping, dtype: torch.dtype | None) -> AutoencoderKL:
    """``sd``: keys under ``first_stage_model.`` or bare first-stage keys (``encoder.*``, ``decoder.*``, ...)."""
    if any(k.startswith(VAE_PREFIX) for k in sd):
        sd = {k: v for k, v in sd.items() if k.startswith(VAE_PREFIX)}
    converted = convert_ldm_vae_checkpoint(sd, dict(config))
    return instantiate(lambda: AutoencoderKL.from_config(dict(config)), converted, "VAE", dtype)


def text_weights_from_original(sd: Mapping[str, torch.Tensor], spec: TextEncoderSpec) -> dict[str, torch.Tensor]:
    """One encoder's weights in transformers ``text_model.*`` form."""
    if spec.layout == "hf":
        return hf_clip_keys(convert_ldm_clip_checkpoint(dict(sd), remove_prefix=spec.prefix) if spec.prefix else sd)
    part = strip_prefix(sd, spec.prefix)
    if "token_embedding.weight" not in part:
        raise ModelFileError(f"no open_clip text encoder under {spec.prefix!r}")
    width = int(part["token_embedding.weight"].shape[1])
    stand_in = SimpleNamespace(config=SimpleNamespace(hidden_size=width))
    staged = {_OPEN_CLIP_STAGING + k: v for k, v in part.items()}
    return convert_open_clip_checkpoint(stand_in, staged, prefix=_OPEN_CLIP_STAGING)


def text_encoder_from_weights(hf_sd: Mapping[str, torch.Tensor], spec: TextEncoderSpec, config: Mapping,
                              tokenizer: CLIPTokenizer, dtype: torch.dtype | None, derive: bool = True) -> TextEncoder:
    """Build from ``text_model.*``-form weights; ``derive`` reads sizes from the weights into ``config``."""
    if derive:
        config = derive_text_config(config, hf_sd)
    cls = _TEXT_CLASSES[spec.model_class]
    if cls is CLIPTextModel:
        # flattened module; an SD2 file's unused text_projection has no slot here
        weights = {k.removeprefix("text_model."): v for k, v in hf_sd.items()}
        ignorable: tuple[str, ...] = ("text_projection.weight",)
    else:
        weights, ignorable = dict(hf_sd), ()
    text_config = CLIPTextConfig.from_dict({k: v for k, v in dict(config).items() if k != "architectures"})
    text_config._attn_implementation = "sdpa"
    model = instantiate(lambda: cls(text_config), weights, f"text encoder ({spec.kind})", dtype, ignorable)
    return TextEncoder(spec, model, tokenizer)


def unet_checkpoint_view(unet_sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Bare LDM UNet keys -> the prefixed form diffusers' converter expects."""
    return {UNET_PREFIX + k: v for k, v in unet_sd.items()}
