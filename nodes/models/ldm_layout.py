"""diffusers/transformers key layout -> original (LDM/SGM, open_clip) single-file layout.

Written from the layout facts; the inverse direction uses diffusers' own converters (see single_file.py), so
``save -> load`` round-trips are checked against an independent implementation.

UNet (LDM ``input_blocks``/``middle_block``/``output_blocks``), with L = layers_per_block:
  down_blocks.b.resnets.j      -> input_blocks.(1 + b*(L+1) + j).0      (resnet sub-modules renamed)
  down_blocks.b.attentions.j   -> input_blocks.(1 + b*(L+1) + j).1
  down_blocks.b.downsamplers.0 -> input_blocks.((b+1)*(L+1)).0.op
  mid_block.resnets.k / attentions.0 -> middle_block.(2k) / middle_block.1
  up_blocks.b.resnets.j / attentions.j -> output_blocks.(b*(L+1) + j).0 / .1
  up_blocks.b.upsamplers.0     -> output_blocks.(b*(L+1) + L).(2 if the block has attention else 1)
VAE: encoder.down_blocks.i -> encoder.down.i (.block.j / .downsample); decoder.up_blocks.i -> decoder.up.(n-1-i);
  mid_block.resnets.k -> mid.block_(k+1); mid attention -> mid.attn_1 (q/k/v/proj_out as 1x1 convs).
open_clip text tower: q/k/v projections are one packed ``in_proj``; ``text_projection`` is stored transposed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import torch

from .errors import ModelFileError

_RESNET_UNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_UNET_TOP = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
             "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
             "class_embedding.linear_1": "label_emb.0.0", "class_embedding.linear_2": "label_emb.0.2"}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_OPEN_CLIP_LAYER = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
                    "self_attn.out_proj": "attn.out_proj"}

_BLOCK = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.+)$")
_MID = re.compile(r"^mid_block\.(resnets|attentions)\.(\d+)\.(.+)$")


def _rename_resnet(rest: str, table: Mapping[str, str]) -> str:
    head, _, tail = rest.partition(".")
    return f"{table.get(head, head)}.{tail}"


def _split_param(key: str) -> tuple[str, str]:
    module, _, param = key.rpartition(".")
    return module, param


def unet_to_original(sd: Mapping[str, torch.Tensor], layers_per_block: int) -> dict[str, torch.Tensor]:
    """diffusers UNet2DConditionModel keys -> LDM UNet keys (without ``model.diffusion_model.``)."""
    step = layers_per_block + 1
    matches = [m for k in sd if (m := _BLOCK.match(k))]
    up_with_attention = {int(m.group(2)) for m in matches if m.group(1) == "up_blocks" and m.group(3) == "attentions"}
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        out[_unet_key(key, step, up_with_attention)] = value
    return out


def _unet_key(key: str, step: int, up_with_attention: set[int]) -> str:
    module, param = _split_param(key)
    if module in _UNET_TOP:
        return f"{_UNET_TOP[module]}.{param}"
    if m := _BLOCK.match(key):
        kind, b, part, j, rest = m.group(1), int(m.group(2)), m.group(3), int(m.group(4)), m.group(5)
        if kind == "down_blocks":
            if part == "resnets":
                return f"input_blocks.{1 + b * step + j}.0.{_rename_resnet(rest, _RESNET_UNET)}"
            if part == "attentions":
                return f"input_blocks.{1 + b * step + j}.1.{rest}"
            if part == "downsamplers" and rest.startswith("conv."):
                return f"input_blocks.{(b + 1) * step}.0.op.{rest[len('conv.'):]}"
        else:
            if part == "resnets":
                return f"output_blocks.{b * step + j}.0.{_rename_resnet(rest, _RESNET_UNET)}"
            if part == "attentions":
                return f"output_blocks.{b * step + j}.1.{rest}"
            if part == "upsamplers" and rest.startswith("conv."):
                slot = 2 if b in up_with_attention else 1
                return f"output_blocks.{b * step + step - 1}.{slot}.{rest}"
    if m := _MID.match(key):
        part, k, rest = m.group(1), int(m.group(2)), m.group(3)
        if part == "resnets":
            return f"middle_block.{2 * k}.{_rename_resnet(rest, _RESNET_UNET)}"
        return f"middle_block.1.{rest}"
    raise ModelFileError(f"cannot map UNet weight {key!r} to the original layout (unsupported UNet structure)")


def vae_to_original(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers AutoencoderKL keys -> LDM first-stage keys (without ``first_stage_model.``)."""
    n_up = len({int(m.group(1)) for k in sd if (m := re.match(r"^decoder\.up_blocks\.(\d+)\.", k))})
    return {_vae_key(key, n_up): _vae_value(key, value) for key, value in sd.items()}


def _vae_value(key: str, value: torch.Tensor) -> torch.Tensor:
    is_attn_matrix = ".mid_block.attentions." in key and key.endswith(".weight") and value.ndim == 2
    return value.reshape(*value.shape, 1, 1) if is_attn_matrix else value


def _vae_key(key: str, n_up: int) -> str:
    if key.startswith(("quant_conv.", "post_quant_conv.")):
        return key
    coder, _, rest = key.partition(".")
    if rest.startswith(("conv_in.", "conv_out.")):
        return key
    if rest.startswith("conv_norm_out."):
        return f"{coder}.norm_out.{rest[len('conv_norm_out.'):]}"
    if m := re.match(r"^(down|up)_blocks\.(\d+)\.(resnets|downsamplers|upsamplers)\.(\d+)\.(.+)$", rest):
        direction, i, part, j, tail = m.group(1), int(m.group(2)), m.group(3), int(m.group(4)), m.group(5)
        level = i if direction == "down" else n_up - 1 - i
        if part == "resnets":
            return f"{coder}.{direction}.{level}.block.{j}.{tail.replace('conv_shortcut', 'nin_shortcut')}"
        return f"{coder}.{direction}.{level}.{'downsample' if direction == 'down' else 'upsample'}.{tail}"
    if m := re.match(r"^mid_block\.resnets\.(\d+)\.(.+)$", rest):
        return f"{coder}.mid.block_{int(m.group(1)) + 1}.{m.group(2).replace('conv_shortcut', 'nin_shortcut')}"
    if m := re.match(r"^mid_block\.attentions\.0\.(.+)\.(weight|bias)$", rest):
        if m.group(1) in _VAE_ATTENTION:
            return f"{coder}.mid.attn_1.{_VAE_ATTENTION[m.group(1)]}.{m.group(2)}"
    raise ModelFileError(f"cannot map VAE weight {key!r} to the original layout (unsupported VAE structure)")


def hf_clip_keys(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers CLIP text keys in the nested ``text_model.*`` form original checkpoints use.

    (transformers >= 5.6 flattens ``CLIPTextModel`` keys; ``CLIPTextModelWithProjection`` keeps the prefix.)"""
    def nested(key: str) -> str:
        return key if key.startswith("text_model.") or key == "text_projection.weight" else f"text_model.{key}"

    return {nested(k): v for k, v in sd.items()}


def clip_to_open_clip(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers CLIP text model keys -> open_clip text tower keys (as under ``cond_stage_model.model.``)."""
    sd = hf_clip_keys(sd)
    out: dict[str, torch.Tensor] = {}
    packed: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        if key.endswith("position_ids"):
            continue
        if key == "text_projection.weight":
            out["text_projection"] = value.T.contiguous()
        elif key == "text_model.embeddings.token_embedding.weight":
            out["token_embedding.weight"] = value
        elif key == "text_model.embeddings.position_embedding.weight":
            out["positional_embedding"] = value
        elif key.startswith("text_model.final_layer_norm."):
            out["ln_final." + key.rsplit(".", 1)[1]] = value
        elif m := re.match(r"^text_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$", key):
            layer, module, param = int(m.group(1)), m.group(2), m.group(3)
            if module in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                packed.setdefault((layer, param), {})[module[-6]] = value
            elif module in _OPEN_CLIP_LAYER:
                out[f"transformer.resblocks.{layer}.{_OPEN_CLIP_LAYER[module]}.{param}"] = value
            else:
                raise ModelFileError(f"cannot map text encoder weight {key!r} to the open_clip layout")
        else:
            raise ModelFileError(f"cannot map text encoder weight {key!r} to the open_clip layout")
    for (layer, param), parts in packed.items():
        if set(parts) != {"q", "k", "v"}:
            raise ModelFileError(f"text encoder layer {layer} lacks some of q/k/v {param}")
        out[f"transformer.resblocks.{layer}.attn.in_proj_{param}"] = torch.cat([parts["q"], parts["k"], parts["v"]], 0)
    return out


def unet_original_names(names: Iterable[str]) -> dict[str, str]:
    """diffusers UNet parameter name -> its LDM name (ModelFileError for a structure the layout cannot express)."""
    names = list(names)
    original = unet_to_original({k: k for k in names}, diffusers_unet_layers_per_block(names))
    return {diffusers: ldm for ldm, diffusers in original.items()}


def diffusers_unet_layers_per_block(sd: Iterable[str]) -> int:
    return len({int(m.group(1)) for k in sd if (m := re.match(r"^down_blocks\.0\.resnets\.(\d+)\.", k))})
