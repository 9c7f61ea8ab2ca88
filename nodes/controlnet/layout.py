"""ControlNet and T2I-Adapter weight files: which kind a state dict holds, and the key layouts.

ControlNets
- original (lllyasviel's ControlNet 1.0/1.1, SD2 and SDXL conversions): ``control_model.`` + the LDM UNet encoder
  (``time_embed``, ``input_blocks``, ``middle_block``, SDXL ``label_emb``) + ``input_hint_block.{0,2,…,14}`` (the
  hint encoder's 8 convs), ``zero_convs.N.0`` and ``middle_block_out.0``. The pruned ``*_fp16`` files drop the
  ``control_model.`` prefix.
- diff ControlNets: the original layout plus a ``difference`` marker; the weights the ControlNet shares with the
  UNet are stored as (ControlNet - UNet) and need the model they were made from.
- diffusers: ``controlnet_cond_embedding.*``, ``controlnet_down_blocks.N``, ``controlnet_mid_block``, ``down_blocks.*``.
- union ControlNets (ControlNet++: ``task_embedding``, ``control_add_embedding``) and Control-LoRAs are recognised
  and refused with a clear error.
T2I-Adapters (TencentARC)
- original full adapters: ``conv_in`` + a flat ``body.K`` list of resnets (``block1``, ``block2``, ``in_conv`` where
  the width changes), K = level * 2 + j; 3 or 1 hint channels pixel-unshuffled by 8 (SD1.x) or 16 (SDXL), so
  ``conv_in`` takes 192/64 (SD1.x) or 768/256 (SDXL) channels.
- original light adapters: ``body.L.{in_conv,out_conv}`` and ``body.L.body.J.{block1,block2}``.
- diffusers: ``adapter.conv_in``, ``adapter.body.L.in_conv``, ``adapter.body.L.resnets.J.*`` (light: no conv_in,
  ``adapter.body.L.{in_conv,out_conv}``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from ..models.errors import ModelFileError
from ..models.ldm_layout import diffusers_unet_layers_per_block, unet_to_original

CONTROL_PREFIX = "control_model."
DIFF_MARKER = "difference"
HINT_CONVS = 8  # convs of the hint encoder (input_hint_block.0 … .14)
FULL_ADAPTER_RESNETS = 2  # resnets per level of the original full adapters
# conv_in input channels of the original full adapters -> (hint channels, pixel-unshuffle factor)
ADAPTER_INPUTS = {192: (3, 8), 64: (1, 8), 768: (3, 16), 256: (1, 16)}
_UNION_MARKERS = ("task_embedding", "control_add_embedding.linear_1.weight")
_DIFFUSERS_CONTROLNET = "controlnet_cond_embedding.conv_in.weight"


@dataclass(frozen=True)
class ControlLayout:
    """What a weight file holds: `kind` controlnet | t2i_adapter; `form` original | diffusers; `diff` for diff
    ControlNets; `weights` the state dict with any wrapper prefix removed."""

    kind: str
    form: str
    weights: dict[str, torch.Tensor]
    diff: bool = False


def _strip(sd: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def classify(sd: Mapping[str, torch.Tensor]) -> ControlLayout:
    """The layout of a ControlNet / T2I-Adapter state dict (ModelFileError naming what was found otherwise)."""
    keys = set(sd)
    if any(k.endswith(_UNION_MARKERS) for k in keys):
        raise ModelFileError("union ControlNets (ControlNet++, several control types in one file) are not supported: "
                             "load a single-type ControlNet")
    if any("lora_controlnet" in k for k in keys):
        raise ModelFileError("Control-LoRA files are not supported: load a full ControlNet")
    if any(k.startswith(CONTROL_PREFIX) for k in keys):
        return ControlLayout("controlnet", "original", _strip(sd, CONTROL_PREFIX), DIFF_MARKER in keys)
    if "zero_convs.0.0.weight" in keys and "input_blocks.0.0.weight" in keys:
        return ControlLayout("controlnet", "original", {k: v for k, v in sd.items() if k != DIFF_MARKER},
                             DIFF_MARKER in keys)
    if _DIFFUSERS_CONTROLNET in keys:
        return ControlLayout("controlnet", "diffusers", dict(sd))
    if any(k.startswith("adapter.") for k in keys):
        return ControlLayout("t2i_adapter", "diffusers", dict(sd))
    if ("conv_in.weight" in keys and "body.0.block1.weight" in keys) or "body.0.in_conv.weight" in keys:
        return ControlLayout("t2i_adapter", "original", dict(sd))
    sample = ", ".join(sorted(keys)[:4])
    raise ModelFileError(f"not a ControlNet or T2I-Adapter file (no known key layout; keys like {sample})")


# -- ControlNet: diffusers -> original (the loader goes the other way with diffusers' own converter) ------------------

def controlnet_to_original(sd: Mapping[str, torch.Tensor], prefix: str = CONTROL_PREFIX) -> dict[str, torch.Tensor]:
    """diffusers ControlNetModel keys -> the original layout (under `prefix`; "" for the pruned form)."""
    out: dict[str, torch.Tensor] = {}
    encoder: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if m := re.match(r"^controlnet_cond_embedding\.(conv_in|conv_out|blocks\.(\d+))\.(weight|bias)$", key):
            index = 0 if m.group(1) == "conv_in" else 2 * HINT_CONVS - 2 if m.group(1) == "conv_out" else \
                2 * int(m.group(2)) + 2
            out[f"input_hint_block.{index}.{m.group(3)}"] = value
        elif m := re.match(r"^controlnet_down_blocks\.(\d+)\.(weight|bias)$", key):
            out[f"zero_convs.{m.group(1)}.0.{m.group(2)}"] = value
        elif m := re.match(r"^controlnet_mid_block\.(weight|bias)$", key):
            out[f"middle_block_out.0.{m.group(1)}"] = value
        else:
            encoder[key] = value
    out.update(unet_to_original(encoder, diffusers_unet_layers_per_block(encoder)))
    return {prefix + k: v for k, v in out.items()}


def hint_encoder_channels(ldm: Mapping[str, torch.Tensor]) -> tuple[int, tuple[int, ...]]:
    """(hint channels, diffusers `conditioning_embedding_out_channels`) of an original-layout hint encoder."""
    indices = sorted({int(m.group(1)) for k in ldm if (m := re.match(r"^input_hint_block\.(\d+)\.weight$", k))})
    if len(indices) != HINT_CONVS:
        raise ModelFileError(f"unsupported ControlNet hint encoder: {len(indices)} convs (expected {HINT_CONVS})")
    outs = [int(ldm[f"input_hint_block.{i}.weight"].shape[0]) for i in indices]
    return int(ldm["input_hint_block.0.weight"].shape[1]), (outs[0], *outs[2:-1:2])


# -- T2I-Adapter ------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AdapterSpec:
    """The diffusers T2IAdapter arguments of an adapter file."""

    in_channels: int
    channels: tuple[int, ...]
    num_res_blocks: int
    downscale_factor: int
    adapter_type: str  # full_adapter | full_adapter_xl | light_adapter

    def kwargs(self) -> dict:
        return {"in_channels": self.in_channels, "channels": list(self.channels),
                "num_res_blocks": self.num_res_blocks, "downscale_factor": self.downscale_factor,
                "adapter_type": self.adapter_type}


def _indices(keys, pattern: str) -> list[int]:
    return sorted({int(m.group(1)) for k in keys if (m := re.match(pattern, k))})


def _unshuffle(conv_in_channels: int) -> tuple[int, int]:
    if conv_in_channels not in ADAPTER_INPUTS:
        raise ModelFileError(f"unsupported T2I-Adapter: its first conv takes {conv_in_channels} channels "
                             f"(expected one of {sorted(ADAPTER_INPUTS)})")
    return ADAPTER_INPUTS[conv_in_channels]


def _full_type(factor: int) -> str:
    return "full_adapter_xl" if factor == 16 else "full_adapter"


def adapter_from_original(sd: Mapping[str, torch.Tensor]) -> tuple[AdapterSpec, dict[str, torch.Tensor]]:
    """An original-layout T2I-Adapter -> its diffusers spec and `adapter.*` weights."""
    if any(k.endswith(("down_opt.op.weight", "skep.weight")) for k in sd):
        raise ModelFileError("unsupported T2I-Adapter variant (strided-conv downsampling or skip convs): "
                             "diffusers' T2IAdapter has no slot for them")
    if "body.0.in_conv.weight" in sd and "conv_in.weight" not in sd:
        return _light_from_original(sd)
    resnets = FULL_ADAPTER_RESNETS
    blocks = _indices(sd, r"^body\.(\d+)\.block1\.weight$")
    if not blocks or len(blocks) % resnets:
        raise ModelFileError(f"unsupported T2I-Adapter: {len(blocks)} resnets do not make levels of {resnets}")
    if sd["body.0.block2.weight"].shape[-1] != 1:
        raise ModelFileError("unsupported T2I-Adapter variant (3x3 second resnet conv)")
    channels = tuple(int(sd[f"body.{i * resnets}.block1.weight"].shape[0]) for i in range(len(blocks) // resnets))
    hint_channels, factor = _unshuffle(int(sd["conv_in.weight"].shape[1]))
    out = {}
    for key, value in sd.items():
        if key.startswith("conv_in."):
            out["adapter." + key] = value
        elif m := re.match(r"^body\.(\d+)\.(in_conv|block1|block2)\.(.+)$", key):
            index, part, rest = int(m.group(1)), m.group(2), m.group(3)
            level, j = divmod(index, resnets)
            name = f"in_conv.{rest}" if part == "in_conv" else f"resnets.{j}.{part}.{rest}"
            out[f"adapter.body.{level}.{name}"] = value
        else:
            raise ModelFileError(f"unexpected T2I-Adapter weight {key!r}")
    return AdapterSpec(hint_channels, channels, resnets, factor, _full_type(factor)), out


def _light_from_original(sd: Mapping[str, torch.Tensor]) -> tuple[AdapterSpec, dict[str, torch.Tensor]]:
    levels = _indices(sd, r"^body\.(\d+)\.in_conv\.weight$")
    resnets = len(_indices(sd, r"^body\.0\.body\.(\d+)\.block1\.weight$"))
    hint_channels, factor = _unshuffle(int(sd["body.0.in_conv.weight"].shape[1]))
    channels = tuple(int(sd[f"body.{i}.out_conv.weight"].shape[0]) for i in levels[:-1])
    out = {}
    for key, value in sd.items():
        if m := re.match(r"^body\.(\d+)\.body\.(\d+)\.(.+)$", key):
            out[f"adapter.body.{m.group(1)}.resnets.{m.group(2)}.{m.group(3)}"] = value
        elif re.match(r"^body\.\d+\.(in_conv|out_conv)\.", key):
            out["adapter." + key] = value
        else:
            raise ModelFileError(f"unexpected T2I-Adapter weight {key!r}")
    return AdapterSpec(hint_channels, channels, resnets, factor, "light_adapter"), out


def adapter_from_diffusers(sd: Mapping[str, torch.Tensor]) -> AdapterSpec:
    """The spec of a diffusers-layout (``adapter.*``) T2I-Adapter state dict."""
    resnets = len(_indices(sd, r"^adapter\.body\.0\.resnets\.(\d+)\.block1\.weight$"))
    levels = _indices(sd, r"^adapter\.body\.(\d+)\.")
    if "adapter.conv_in.weight" not in sd:
        hint_channels, factor = _unshuffle(int(sd["adapter.body.0.in_conv.weight"].shape[1]))
        channels = tuple(int(sd[f"adapter.body.{i}.out_conv.weight"].shape[0]) for i in levels[:-1])
        return AdapterSpec(hint_channels, channels, resnets, factor, "light_adapter")
    hint_channels, factor = _unshuffle(int(sd["adapter.conv_in.weight"].shape[1]))
    channels = tuple(int(sd[f"adapter.body.{i}.resnets.0.block1.weight"].shape[0]) for i in levels)
    return AdapterSpec(hint_channels, channels, resnets, factor, _full_type(factor))
