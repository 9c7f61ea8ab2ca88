"""Where ComfyUI's UNet block numbering falls in a diffusers UNet2DConditionModel.

ComfyUI's input blocks are: 0 = conv_in, then per level one block per resnet (with its attention) and one for the
downsampler; its output blocks are the up path's resnets in order, each fed `cat([h, skip])`."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class InputBlock:
    """ComfyUI input block: `producer` computes its hidden state, `consumer` is the next module to read it."""

    producer: torch.nn.Module
    consumer: torch.nn.Module | None


def input_blocks(unet: torch.nn.Module) -> list[InputBlock]:
    """Input blocks in ComfyUI's order (index = ComfyUI's block number)."""
    chain: list[torch.nn.Module] = [unet.conv_in]  # the module producing each block's hidden state
    entries: list[torch.nn.Module | None] = []  # the module each block starts with (a level's first: its down block)
    for block in unet.down_blocks:
        attentions = getattr(block, "attentions", None)
        for j, resnet in enumerate(block.resnets):
            entries.append(block if j == 0 else resnet)
            chain.append(attentions[j] if attentions else resnet)
        for sampler in block.downsamplers or ():
            entries.append(sampler)
            chain.append(sampler)
    entries.append(unet.mid_block)
    # Block k's hidden state is read next by the module block k + 1 starts with.
    return [InputBlock(producer, consumer) for producer, consumer in zip(chain, entries)]


def up_resnet_backbones(unet: torch.nn.Module) -> list[tuple[torch.nn.Module, int]]:
    """(resnet, channels of the backbone part of its `cat([h, skip])` input) for every up-path resnet."""
    width = unet.mid_block.resnets[-1].out_channels if unet.mid_block is not None \
        else unet.config.block_out_channels[-1]
    found = []
    for block in unet.up_blocks:
        for resnet in block.resnets:
            found.append((resnet, width))
            width = resnet.out_channels
    return found


def model_channels(unet: torch.nn.Module) -> int:
    """ComfyUI's `model_channels`: the UNet's base width."""
    return int(unet.config.block_out_channels[0])
