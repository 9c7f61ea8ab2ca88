"""Tiny SD1.5-, SD2- and SDXL-structured UNets and text encoders (random weights), shared by the LoRA tests.

Tests patch these modules in place and must leave them as they found them; ``pristine`` holds copies to check."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel

from tests.models.tiny import _seeded_randomize, tiny_text_encoder, tiny_unet_config


def _family(name: str, seed: int) -> dict[str, torch.nn.Module]:
    unet = UNet2DConditionModel.from_config(tiny_unet_config(name))
    _seeded_randomize(unet, seed)
    targets = {"unet": unet.eval(), "te1": tiny_text_encoder(name, 0, seed + 1)}
    if name == "sdxl":
        targets["te2"] = tiny_text_encoder(name, 1, seed + 2)
    return targets


def _snapshot(targets):
    return {slot: {k: v.clone() for k, v in m.state_dict().items()} for slot, m in targets.items()}


@pytest.fixture(scope="session")
def sd15():
    return _family("sd15", 0)


@pytest.fixture(scope="session")
def sdxl():
    return _family("sdxl", 10)


@pytest.fixture(scope="session")
def sd2():
    return _family("sd2", 20)


@pytest.fixture(scope="session")
def pristine(sd15, sd2, sdxl):
    return {"sd15": _snapshot(sd15), "sd2": _snapshot(sd2), "sdxl": _snapshot(sdxl)}
