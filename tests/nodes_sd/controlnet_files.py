"""Tiny random ControlNets and T2I-Adapters for the tiny test checkpoints, written in each real key layout into the
shared models folder's `controlnet/` (once per session)."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from diffusers import ControlNetModel, T2IAdapter

from nodes.controlnet.layout import controlnet_to_original
from nodes.models.ldm_layout import unet_original_names
from nodes.models.state_dict import write_safetensors

from .tiny import tiny_sdxl_unet, tiny_unet

HINT_WIDTHS = (8, 8, 16, 16)


def tiny_controlnet(unet, seed: int) -> ControlNetModel:
    """A ControlNet copied from `unet` (as trainers start), with random (not zero) output convs so it has an effect."""
    net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=HINT_WIDTHS)
    generator = torch.Generator().manual_seed(seed)
    for name, param in net.named_parameters():
        if name.startswith(("controlnet_down_blocks", "controlnet_mid_block", "controlnet_cond_embedding")):
            param.data = torch.randn(param.shape, generator=generator) * 0.2
    return net.eval()


def tiny_adapter(xl: bool, seed: int, light: bool = False) -> T2IAdapter:
    torch.manual_seed(seed)
    if light:  # 4 blocks with widths 32, 32, 64, 64
        return T2IAdapter(3, [32, 32, 64], 2, 8, "light_adapter").eval()
    if xl:  # features for the tiny SDXL UNet's widths (64, 64, 128) + its mid block
        return T2IAdapter(3, [64, 64, 128, 128], 2, 16, "full_adapter_xl").eval()
    return T2IAdapter(3, [32, 32, 64, 64], 2, 8, "full_adapter").eval()


def adapter_to_original(sd: dict, light: bool = False) -> dict:
    """diffusers adapter keys -> TencentARC's. Full: body.L.resnets.J -> body.(2L+J), body.L.in_conv -> body.(2L);
    light: body.L.resnets.J -> body.L.body.J."""
    out = {}
    for key, value in sd.items():
        key = key.removeprefix("adapter.")
        if light:
            key = re.sub(r"^body\.(\d+)\.resnets\.", r"body.\1.body.", key)
        elif m := re.match(r"^body\.(\d+)\.resnets\.(\d+)\.(.+)$", key):
            key = f"body.{2 * int(m.group(1)) + int(m.group(2))}.{m.group(3)}"
        elif m := re.match(r"^body\.(\d+)\.in_conv\.(.+)$", key):
            key = f"body.{2 * int(m.group(1))}.in_conv.{m.group(2)}"
        out[key] = value
    return out


def diff_weights(net: ControlNetModel, unet) -> dict:
    """A diff ControlNet: original layout, every weight shared with the UNet stored as (ControlNet - UNet)."""
    control = controlnet_to_original(net.state_dict())
    state = unet.state_dict()
    base = {ldm: state[name] for name, ldm in unet_original_names(state).items()}
    out = {k: v - base[k.removeprefix("control_model.")] if k.removeprefix("control_model.") in base else v
           for k, v in control.items()}
    out["difference"] = torch.tensor([])
    return out


class Nets:
    """The reference modules, and the files written from them into the controlnet folder."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        unet, xl_unet = tiny_unet(), tiny_sdxl_unet()
        self.sd15 = tiny_controlnet(unet, 1)
        self.sd15_b = tiny_controlnet(unet, 2)
        self.sdxl = tiny_controlnet(xl_unet, 3)
        self.adapter = tiny_adapter(False, 4)
        self.adapter_xl = tiny_adapter(True, 5)
        self.adapter_light = tiny_adapter(False, 6, light=True)
        write_safetensors(folder / "cn_sd15.safetensors", controlnet_to_original(self.sd15.state_dict()))
        pruned = controlnet_to_original(self.sd15_b.state_dict(), prefix="")
        torch.save({k: v.half() for k, v in pruned.items()}, folder / "cn_sd15_b_fp16.pth")
        write_safetensors(folder / "cn_sdxl.safetensors", controlnet_to_original(self.sdxl.state_dict()))
        write_safetensors(folder / "cn_sd15_diffusers.safetensors", self.sd15.state_dict())
        self.sd15.save_pretrained(folder / "cn_sd15_folder")
        write_safetensors(folder / "cn_sd15_diff.safetensors", diff_weights(self.sd15, unet))
        write_safetensors(folder / "t2i_sd15.safetensors", adapter_to_original(self.adapter.state_dict()))
        write_safetensors(folder / "t2i_sdxl.safetensors", adapter_to_original(self.adapter_xl.state_dict()))
        write_safetensors(folder / "t2i_sd15_diffusers.safetensors", self.adapter.state_dict())
        write_safetensors(folder / "t2i_light.safetensors", adapter_to_original(self.adapter_light.state_dict(), True))
        union = {**self.sdxl.state_dict(), "task_embedding": torch.zeros(8, 64)}
        write_safetensors(folder / "union_sdxl.safetensors", union)
