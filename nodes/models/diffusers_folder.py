"""Loading a diffusers-format folder (``model_index.json`` + component subfolders) offline."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTokenizer, CLIPTextModel, CLIPTextModelWithProjection

from .attention import use_sdpa
from .build import LoadedCheckpoint, TextEncoder
from .detect import UnetStructure, base_from_unet, custom_family, normalize_prediction_type, variant_from_channels
from .errors import ModelFileError
from .families import FAMILIES, Family, load_tokenizer

_TEXT_CLASSES = {"CLIPTextModel": CLIPTextModel, "CLIPTextModelWithProjection": CLIPTextModelWithProjection}
_ENCODERS_BY_BASE = {"sd1": ("text_encoder",), "sd2": ("text_encoder",), "sdxl": ("text_encoder", "text_encoder_2"),
                     "sdxl_refiner": ("text_encoder_2",)}
_FAMILY_NAME = {("sd1", "normal"): "sd15", ("sd1", "inpaint"): "sd15_inpaint", ("sd2", "normal"): "sd2",
                ("sd2", "inpaint"): "sd2_inpaint", ("sd2", "depth"): "sd2_depth", ("sdxl", "normal"): "sdxl",
                ("sdxl", "inpaint"): "sdxl_inpaint", ("sdxl_refiner", "normal"): "sdxl_refiner",
                ("sd1", "ip2p"): "sd15_ip2p", ("sdxl", "ip2p"): "sdxl_ip2p"}


def structure_from_config(config) -> UnetStructure:
    """UnetStructure of a diffusers UNet (or ControlNet: out_channels defaults to in_channels) config."""
    levels = len(config["block_out_channels"])
    return UnetStructure(
        in_channels=config["in_channels"], out_channels=config.get("out_channels", config["in_channels"]),
        level_channels=tuple(config["block_out_channels"]), layers_per_block=config["layers_per_block"],
        attention_levels=tuple(t.startswith("CrossAttn") for t in config["down_block_types"]),
        transformer_depths=(0,) * levels, mid_transformer_depth=0, context_dim=config["cross_attention_dim"],
        linear_projection=bool(config.get("use_linear_projection")),
        adm_in_channels=(
            config.get("projection_class_embeddings_input_dim")
            if config.get("addition_embed_type") == "text_time"
            else None
        ),
    )


def family_from_configs(unet_config, vae_config, encoders: tuple[str, ...], prediction_type: str) -> Family:
    """A standard family when the configs have its structure, else a custom family built from them."""
    s = structure_from_config(unet_config)
    base, variant = base_from_unet(s), variant_from_channels(s)
    name = _FAMILY_NAME.get((base, variant))
    if name is not None and _ENCODERS_BY_BASE[base] == encoders:
        if name == "sd2" and prediction_type == "v_prediction":
            name = "sd2_v"
        family = FAMILIES[name]
        if family.base == "sd2":
            # diffusers SD2 folders ship the text tower without its last block: read the last hidden state
            family = replace(family, text_encoders=tuple(replace(t, layer=-1) for t in family.text_encoders))
        return replace(family, prediction_type=prediction_type)
    kinds = {("text_encoder",): ["clip_l"], ("text_encoder_2",): ["open_clip_g"],
             ("text_encoder", "text_encoder_2"): ["clip_l", "open_clip_g"]}.get(encoders)
    if kinds is None:
        raise ModelFileError(f"unsupported diffusers folder: text encoders {list(encoders)}")
    return custom_family({"unet": dict(unet_config), "vae": dict(vae_config), "prediction_type": prediction_type,
                          "text_encoders": [{"kind": k, "config": {}} for k in kinds]})


def load_diffusers_folder(path: str | Path, dtype: torch.dtype | None = torch.float32,
                          interrupt: Callable[[], None] | None = None) -> LoadedCheckpoint:
    """UNet, VAE, text encoders, tokenizers and scheduler config of a diffusers folder (``local_files_only``);
    ``interrupt()`` is called before each component's files are read (it raises to stop)."""
    check = interrupt or (lambda: None)
    path = Path(path)
    index_file = path / "model_index.json"
    if not index_file.is_file():
        raise ModelFileError(f"{path.name}: not a diffusers folder (no model_index.json)")
    index = json.loads(index_file.read_text(encoding="utf-8"))
    try:
        check()
        unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", local_files_only=True, torch_dtype=dtype)
        vae = None
        if (path / "vae").is_dir():
            check()
            vae = AutoencoderKL.from_pretrained(path, subfolder="vae", local_files_only=True, torch_dtype=dtype)
        subfolders = tuple(
            s for s in ("text_encoder", "text_encoder_2")
            if isinstance(index.get(s), list) and index[s][1] and (path / s).is_dir()
        )
        models = []
        for sub in subfolders:
            check()
            models.append(_TEXT_CLASSES[index[sub][1]].from_pretrained(path / sub, local_files_only=True, dtype=dtype))
    except (OSError, ValueError, KeyError) as e:
        raise ModelFileError(f"{path.name}: cannot load diffusers folder: {e}") from e
    scheduler_file = path / "scheduler" / "scheduler_config.json"
    scheduler = json.loads(scheduler_file.read_text(encoding="utf-8")) if scheduler_file.is_file() else {}
    prediction = normalize_prediction_type(scheduler.get("prediction_type", "epsilon"))
    scheduler["prediction_type"] = prediction
    family = family_from_configs(unet.config, vae.config if vae is not None else {}, subfolders, prediction)
    encoders = []
    for spec, sub, model in zip(family.text_encoders, subfolders, models):
        tok_dir = path / sub.replace("text_encoder", "tokenizer")
        if tok_dir.is_dir():
            tokenizer = CLIPTokenizer.from_pretrained(tok_dir, local_files_only=True)
        else:
            tokenizer = load_tokenizer(spec.tokenizer)
        encoders.append(TextEncoder(replace(spec, prefix="", layout="hf"), use_sdpa(model.eval()), tokenizer))
    scale = float(vae.config.scaling_factor) if vae is not None else family.latent_scale_factor
    vae = use_sdpa(vae.eval()) if vae is not None else None
    return LoadedCheckpoint(path, family, prediction, scale, use_sdpa(unet.eval()), vae, encoders, scheduler, {}, None)
