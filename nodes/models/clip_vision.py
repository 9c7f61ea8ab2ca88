"""CLIP vision towers from single files into transformers' `CLIPVisionModelWithProjection`, offline.

Two key layouts are read, each possibly under a prefix (e.g. an unCLIP checkpoint's `embedder.model.`):
- transformers: `vision_model.*` and `visual_projection.weight` (text-tower keys of a whole CLIP file are ignored);
- OpenCLIP / OpenAI CLIP: `visual.*` (`conv1`, `positional_embedding`, `transformer.resblocks.N` with packed
  `attn.in_proj_*`, `ln_pre`/`ln_post`, `proj` stored transposed), converted to the transformers names here.
The config is one of the shipped `nodes/configs/clip_vision/*.json` (ViT-L/14 OpenAI, ViT-H/14 and ViT-bigG/14
LAION), picked by the tower's width, with every size (layers, MLP width, patch, image size, projection) read from
the weights; a width none of them has (test models) keeps the layout's usual base with 64-channel heads.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from .build import instantiate
from .errors import ModelFileError
from .families import CONFIGS_DIR

CONFIG_DIR = CONFIGS_DIR / "clip_vision"
CONFIG_BY_WIDTH = {1024: "vit_l14", 1280: "vit_h14", 1664: "vit_bigg14"}
# Without a known width: OpenAI's transformers-layout towers use quick_gelu, OpenCLIP's use gelu.
FALLBACK_CONFIG = {"transformers": "vit_l14", "open_clip": "vit_h14"}
HF_MARKER = "vision_model.embeddings.class_embedding"
OPEN_CLIP_MARKER = "visual.class_embedding"

_OPEN_CLIP_TOP = {"class_embedding": "vision_model.embeddings.class_embedding",
                  "conv1.weight": "vision_model.embeddings.patch_embedding.weight",
                  "positional_embedding": "vision_model.embeddings.position_embedding.weight",
                  "ln_pre.weight": "vision_model.pre_layrnorm.weight", "ln_pre.bias": "vision_model.pre_layrnorm.bias",
                  "ln_post.weight": "vision_model.post_layernorm.weight",
                  "ln_post.bias": "vision_model.post_layernorm.bias"}
_OPEN_CLIP_LAYER = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
                    "attn.out_proj": "self_attn.out_proj"}
_LAYER_KEY = "vision_model.encoder.layers.{}.{}"
_RESBLOCK = re.compile(r"^transformer\.resblocks\.(\d+)\.(.+)\.(weight|bias)$")
_PACKED = re.compile(r"^transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)$")


def find_layout(sd: Mapping[str, torch.Tensor], prefix: str | None = None) -> tuple[str, str]:
    """(layout, prefix) of the vision tower in `sd`: layout "transformers" or "open_clip"."""
    for key in sd:
        for layout, marker in (("transformers", HF_MARKER), ("open_clip", OPEN_CLIP_MARKER)):
            if key.endswith(marker) and (prefix is None or key == prefix + marker):
                return layout, key[: -len(marker)]
    where = f" under {prefix!r}" if prefix else ""
    raise ModelFileError(f"not a CLIP vision model: no {HF_MARKER} or {OPEN_CLIP_MARKER} key{where}")


def open_clip_to_transformers(part: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """OpenCLIP `visual.*` keys (that prefix removed) -> transformers CLIPVisionModelWithProjection keys."""
    out: dict[str, torch.Tensor] = {}
    for key, value in part.items():
        if key in _OPEN_CLIP_TOP:
            out[_OPEN_CLIP_TOP[key]] = value
        elif key == "proj":
            out["visual_projection.weight"] = value.t().contiguous()
        elif m := _PACKED.match(key):
            index, param = m.groups()
            for name, piece in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                out[_LAYER_KEY.format(index, f"self_attn.{name}.{param}")] = piece.contiguous()
        elif m := _RESBLOCK.match(key):
            index, module, param = m.groups()
            if module not in _OPEN_CLIP_LAYER:
                raise ModelFileError(f"unexpected OpenCLIP vision key visual.{key}")
            out[_LAYER_KEY.format(index, f"{_OPEN_CLIP_LAYER[module]}.{param}")] = value
        else:
            raise ModelFileError(f"unexpected OpenCLIP vision key visual.{key}")
    return out


def vision_weights(sd: Mapping[str, torch.Tensor], prefix: str | None = None) -> tuple[dict[str, torch.Tensor], str]:
    """The vision tower's weights in transformers names, and the layout they were stored in."""
    layout, found = find_layout(sd, prefix)
    if layout == "open_clip":
        start = found + "visual."
        return open_clip_to_transformers({k[len(start):]: v for k, v in sd.items() if k.startswith(start)}), layout
    wanted = (found + "vision_model.", found + "visual_projection.")
    return {k[len(found):]: v for k, v in sd.items() if k.startswith(wanted)}, layout


def read_named_config(name: str) -> dict:
    return json.loads((CONFIG_DIR / f"{name}.json").read_text(encoding="utf-8"))


def vision_config(weights: Mapping[str, torch.Tensor], layout: str) -> tuple[dict, str]:
    """(CLIPVisionConfig dict, name of the shipped base config) for transformers-named weights."""
    try:
        width = int(weights[HF_MARKER].shape[0])
        patch = weights["vision_model.embeddings.patch_embedding.weight"]
        positions = int(weights["vision_model.embeddings.position_embedding.weight"].shape[0])
        fc1 = weights["vision_model.encoder.layers.0.mlp.fc1.weight"]
        projection = weights["visual_projection.weight"]
    except KeyError as e:
        raise ModelFileError(f"CLIP vision weights lack {e.args[0]!r}") from None
    layers = {int(m.group(1)) for k in weights if (m := re.match(r"^vision_model\.encoder\.layers\.(\d+)\.", k))}
    grid = math.isqrt(positions - 1)
    if grid * grid != positions - 1:
        raise ModelFileError(f"CLIP vision position embedding of {positions} rows is not a square grid + 1")
    name = CONFIG_BY_WIDTH.get(width, FALLBACK_CONFIG[layout])
    config = read_named_config(name)
    config.update(hidden_size=width, intermediate_size=int(fc1.shape[0]), num_hidden_layers=len(layers),
                  patch_size=int(patch.shape[-1]), num_channels=int(patch.shape[1]),
                  image_size=grid * int(patch.shape[-1]), projection_dim=int(projection.shape[0]))
    if width not in CONFIG_BY_WIDTH:
        config["num_attention_heads"] = max(1, width // 64)
    return config, name


def vision_model_from_weights(weights: Mapping[str, torch.Tensor], config: Mapping,
                              dtype: torch.dtype | None) -> CLIPVisionModelWithProjection:
    vision_config = CLIPVisionConfig.from_dict({k: v for k, v in config.items() if k != "architectures"})
    vision_config._attn_implementation = "sdpa"
    return instantiate(lambda: CLIPVisionModelWithProjection(vision_config), weights, "CLIP vision", dtype)


def load_clip_vision(path: str | Path, dtype: torch.dtype | None = torch.float32,
                     prefix: str | None = None) -> CLIPVisionModelWithProjection:
    """A CLIP vision tower from a file (`prefix`: what precedes `visual.`/`vision_model.` inside a bigger
    checkpoint, e.g. "embedder.model."; else it is found)."""
    from .state_dict import read_prefixed, read_state_dict

    path = Path(path)
    sd = read_prefixed(path, prefix) if prefix else read_state_dict(path)[0]
    try:
        weights, layout = vision_weights(sd, prefix)
        config, _ = vision_config(weights, layout)
        return vision_model_from_weights(weights, config, dtype)
    except ModelFileError as e:
        raise ModelFileError(f"{path.name}: {e}") from e
