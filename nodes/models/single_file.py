"""Offline loading of original single-file SD checkpoints (and their parts) into diffusers/transformers classes.

Configs come from ``nodes/configs/<family>/`` with sizes read from the weights (see ``derive``), or, for the
custom family, from the JSON embedded in the file's metadata; tokenizers from ``nodes/configs/tokenizer*``.
Nothing touches the Hub. Models are built on the meta device, filled with the file's tensors and cast to
``dtype`` (float32 by default — the CPU policy; the ModelManager picks other dtypes for CUDA).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import torch
from diffusers import AutoencoderKL

from .build import (
    LoadedCheckpoint,
    TextEncoder,
    text_encoder_from_weights,
    text_weights_from_original,
    unet_checkpoint_view,
    unet_from_original,
    vae_from_original,
)
from .derive import derive_unet_config, derive_vae_config
from .detect import Detection, detect_checkpoint, detect_unet, encoder_kinds_in, parse_custom_config, strip_prefix
from .diffusers_folder import load_diffusers_folder
from .errors import ModelFileError
from .export import save_checkpoint
from .families import (
    CUSTOM_CONFIG_KEY, ENCODER_LAYOUTS, FAMILIES, SD1_CLIP_L, SD2_CLIP_H, SDXL_CLIP_G, UNET_PREFIX, VAE_PREFIX,
    Family, TextEncoderSpec, load_tokenizer, read_config,
)
from .ldm_layout import diffusers_unet_layers_per_block, unet_to_original, vae_to_original
from .state_dict import read_state_dict

__all__ = ["LoadedCheckpoint", "TextEncoder", "load_checkpoint", "load_diffusers_folder", "load_text_encoder",
           "load_unet", "load_vae", "save_checkpoint"]

ALL_COMPONENTS = ("unet", "vae", "text_encoders")
# Where a standalone text encoder of each kind takes its non-size config from.
_KIND_CONFIG = {"clip_l": ("sd15", "text_encoder"), "open_clip_h": ("sd2", "text_encoder"),
                "open_clip_g": ("sdxl", "text_encoder_2")}
_KIND_SPEC = {"clip_l": SD1_CLIP_L, "open_clip_h": SD2_CLIP_H, "open_clip_g": SDXL_CLIP_G}
_KIND_BY_WIDTH = {768: "clip_l", 1024: "open_clip_h", 1280: "open_clip_g"}


@contextlib.contextmanager
def _about(path: Path) -> Iterator[None]:
    """Prefix model-file errors with the file name."""
    try:
        yield
    except ModelFileError as e:
        if path.name in str(e):
            raise
        raise type(e)(f"{path.name}: {e}") from e


def _parse_hint(config_hint: str | Path | None) -> tuple[str | None, Path | None]:
    if config_hint is None:
        return None, None
    if isinstance(config_hint, Path) or config_hint not in (*FAMILIES, "custom"):
        directory = Path(config_hint)
        if not (directory / "unet" / "config.json").is_file():
            raise ModelFileError(f"config hint {config_hint!r} is neither a family ({', '.join(FAMILIES)}) nor a "
                                 "diffusers-layout config folder with unet/config.json")
        return None, directory
    return str(config_hint), None


def _scheduler_config(family: Family, prediction_type: str, custom: dict | None) -> dict:
    if custom is not None and "scheduler" in custom:
        config = dict(custom["scheduler"])
    else:
        config = read_config(family.config_dir or FAMILIES["sd15"].config_dir, "scheduler")
    config["prediction_type"] = prediction_type
    return config


def _configs_for(det: Detection, sd: Mapping[str, torch.Tensor], config_dir: Path | None) -> dict:
    """unet / vae / text encoder configs for a detected checkpoint (custom: embedded; hint dir: verbatim)."""
    family = det.family
    if det.custom_config is not None:
        c = det.custom_config
        return {"unet": c["unet"], "vae": c["vae"], "text": [e["config"] for e in c["text_encoders"]], "derive": False}
    source = config_dir or family.config_dir
    subfolders = [spec.subfolder for spec in family.text_encoders]
    configs = {"unet": read_config(source, "unet"), "vae": read_config(source, "vae"),
               "text": [read_config(source, sub) for sub in subfolders], "derive": config_dir is None}
    if config_dir is None:
        configs["unet"] = derive_unet_config(configs["unet"], det.unet, family.head_rule)
        vae_sd = strip_prefix(sd, VAE_PREFIX)
        if vae_sd:
            configs["vae"] = derive_vae_config(configs["vae"], vae_sd)
    return configs


def _build_text_encoders(sd, family: Family, text_configs: list[dict], derive: bool, dtype,
                         check: Callable[[], None]) -> list[TextEncoder]:
    tokenizers: dict[str, object] = {}
    encoders = []
    for spec, config in zip(family.text_encoders, text_configs):
        if not any(k.startswith(spec.prefix) for k in sd):
            continue
        check()
        tokenizer = tokenizers.setdefault(spec.tokenizer, load_tokenizer(spec.tokenizer))
        weights = text_weights_from_original(sd, spec)
        encoders.append(text_encoder_from_weights(weights, spec, config, tokenizer, dtype, derive))
    return encoders


def load_checkpoint(path: str | Path, config_hint: str | Path | None = None, prediction_type: str | None = None,
                    dtype: torch.dtype | None = torch.float32,
                    components: Sequence[str] = ALL_COMPONENTS,
                    interrupt: Callable[[], None] | None = None) -> LoadedCheckpoint:
    """Load an original-layout checkpoint (SD1/SD2/SDXL/custom) with its UNet, VAE and text encoders.

    ``config_hint``: a family name (skips family detection, e.g. ``"sd2_v"``) or a diffusers-layout config
    folder used verbatim. ``prediction_type`` overrides detection. ``components`` limits what is built;
    parts absent from the file come back as ``None`` / ``[]``. ``interrupt()`` is called before each component
    is built (it raises to stop).
    """
    path = Path(path)
    check = interrupt or (lambda: None)
    with _about(path):
        if path.is_dir():
            return load_diffusers_folder(path, dtype=dtype, interrupt=interrupt)
        sd, metadata = read_state_dict(path)
        family_hint, config_dir = _parse_hint(config_hint)
        det = detect_checkpoint(sd, metadata, family_hint, prediction_type)
        configs = _configs_for(det, sd, config_dir)
        unet = None
        if "unet" in components:
            check()
            unet = unet_from_original(sd, configs["unet"], dtype)
        vae = None
        if "vae" in components and any(k.startswith(VAE_PREFIX) for k in sd):
            check()
            vae = vae_from_original(sd, configs["vae"], dtype)
        encoders = []
        if "text_encoders" in components:
            encoders = _build_text_encoders(sd, det.family, configs["text"], configs["derive"], dtype, check)
        scale = det.family.latent_scale_factor
        return LoadedCheckpoint(path, det.family, det.prediction_type, scale, unet, vae, encoders,
                                _scheduler_config(det.family, det.prediction_type, det.custom_config), metadata, det)


def _bare_unet_weights(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if any(k.startswith(UNET_PREFIX) for k in sd):
        return strip_prefix(sd, UNET_PREFIX)
    if "input_blocks.0.0.weight" in sd:
        return dict(sd)
    if "conv_in.weight" in sd and "down_blocks.0.resnets.0.conv1.weight" in sd:
        return unet_to_original(sd, diffusers_unet_layers_per_block(sd))
    raise ModelFileError(
        "not a diffusion model (UNet) file: expected LDM keys (input_blocks.*) or diffusers keys (down_blocks.*)"
    )


def load_unet(path: str | Path, config_hint: str | None = None, prediction_type: str | None = None,
              dtype: torch.dtype | None = torch.float32) -> LoadedCheckpoint:
    """A UNet alone (UNETLoader): a full checkpoint, an LDM UNet file or a diffusers-layout UNet file.
    Returns a LoadedCheckpoint with ``vae=None`` and no text encoders."""
    path = Path(path)
    with _about(path):
        sd, metadata = read_state_dict(path)
        if CUSTOM_CONFIG_KEY in metadata:
            loaded = load_checkpoint(path, components=("unet",), dtype=dtype, prediction_type=prediction_type)
            return loaded
        unet_sd = _bare_unet_weights(sd)
        det = detect_unet(unet_sd, metadata, config_hint, prediction_type)
        config = derive_unet_config(read_config(det.family.config_dir, "unet"), det.unet, det.family.head_rule)
        unet = unet_from_original(unet_checkpoint_view(unet_sd), config, dtype)
        return LoadedCheckpoint(path, det.family, det.prediction_type, det.family.latent_scale_factor, unet, None, [],
                                _scheduler_config(det.family, det.prediction_type, None), metadata, det)


def _bare_vae_weights(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in (VAE_PREFIX, "vae."):
        if any(k.startswith(prefix) for k in sd):
            return strip_prefix(sd, prefix)
    if "encoder.down.0.block.0.conv1.weight" in sd:
        return dict(sd)
    if "encoder.down_blocks.0.resnets.0.conv1.weight" in sd:
        return vae_to_original(sd)
    raise ModelFileError("not a VAE file: expected LDM keys (encoder.down.*) or diffusers keys (encoder.down_blocks.*)")


def load_vae(path: str | Path, dtype: torch.dtype | None = torch.float32) -> AutoencoderKL:
    """A VAE alone (VAELoader): standalone LDM or diffusers-layout VAE file, or the VAE of a full checkpoint.
    The latent scale belongs to the diffusion model's family, not to the VAE file."""
    path = Path(path)
    with _about(path):
        sd, metadata = read_state_dict(path)
        vae_sd = _bare_vae_weights(sd)
        if CUSTOM_CONFIG_KEY in metadata:
            config = parse_custom_config(metadata[CUSTOM_CONFIG_KEY])["vae"]
        else:
            config = derive_vae_config(read_config(FAMILIES["sd15"].config_dir, "vae"), vae_sd)
        return vae_from_original(vae_sd, config, dtype)


def _standalone_text_spec(sd: Mapping[str, torch.Tensor], kind: str | None) -> tuple[TextEncoderSpec, int]:
    """Spec (prefix, layout, kind) of a lone text encoder file in HF or open_clip layout, and its width."""
    for key, value in sd.items():
        if m := re.match(r"^(.*?)(text_model\.)?embeddings\.token_embedding\.weight$", key):
            prefix, layout = m.group(1), "hf"
        elif m := re.match(r"^(.*?)token_embedding\.weight$", key):
            prefix, layout = m.group(1), "open_clip"
        else:
            continue
        width = int(value.shape[1])
        kind = kind or _KIND_BY_WIDTH.get(width)
        if kind not in _KIND_SPEC:
            raise ModelFileError(f"text encoder of width {width}: pass kind= one of {sorted(_KIND_SPEC)}")
        spec = replace(_KIND_SPEC[kind], prefix=prefix, layout=layout)
        if layout == "hf" and kind == "open_clip_h":
            spec = replace(spec, layer=-1)  # transformers-format SD2 encoders already stop at the penultimate block
        if kind == "open_clip_g" and not any(k.endswith(("text_projection.weight", "text_projection")) for k in sd):
            spec = replace(spec, model_class="CLIPTextModel", pooled=False)
        return spec, width
    raise ModelFileError("not a CLIP text encoder file: no token_embedding weight found")


def load_text_encoder(
    path: str | Path, kind: str | None = None, dtype: torch.dtype | None = torch.float32
) -> TextEncoder:
    """One text encoder (CLIPLoader): from a full checkpoint (``kind`` picks one when there are several) or
    a standalone file in transformers or open_clip layout (``kind`` guessed from the width: 768 clip_l,
    1024 open_clip_h, 1280 open_clip_g)."""
    path = Path(path)
    with _about(path):
        sd, metadata = read_state_dict(path)
        if CUSTOM_CONFIG_KEY in metadata:
            return _pick(load_checkpoint(path, components=("text_encoders",), dtype=dtype).text_encoders, kind)
        kinds = encoder_kinds_in(sd)
        if kinds:
            specs = [s for s in ENCODER_LAYOUTS[kinds] if kind in (None, s.kind)]
            if len(specs) != 1:
                raise ModelFileError(f"file holds text encoders {list(kinds)}; pass kind= one of them")
            spec = specs[0]
            family = next(f for f in FAMILIES.values() if spec in f.text_encoders)
            config = read_config(family.config_dir, spec.subfolder)
        else:
            spec, _ = _standalone_text_spec(sd, kind)
            config = read_config(FAMILIES[_KIND_CONFIG[spec.kind][0]].config_dir, _KIND_CONFIG[spec.kind][1])
        weights = text_weights_from_original(sd, spec)
        return text_encoder_from_weights(weights, spec, config, load_tokenizer(spec.tokenizer), dtype)


def _pick(encoders: list[TextEncoder], kind: str | None) -> TextEncoder:
    matching = [e for e in encoders if kind in (None, e.kind)]
    if len(matching) != 1:
        raise ModelFileError(f"file holds text encoders {[e.kind for e in encoders]}; pass kind= one of them")
    return matching[0]
