"""Make sure modules use PyTorch SDPA attention (diffusers ``AttnProcessor2_0``, transformers ``sdpa``)."""

from __future__ import annotations

import torch
from diffusers.models.attention_processor import AttnProcessor2_0


def use_sdpa(model: torch.nn.Module) -> torch.nn.Module:
    """Switch a diffusers model's attention processors to ``AttnProcessor2_0`` (SDPA) and a transformers
    model's attention implementation to ``sdpa``; returns the model."""
    processors = getattr(model, "attn_processors", None)
    if processors and not all(isinstance(p, AttnProcessor2_0) for p in processors.values()):
        model.set_attn_processor(AttnProcessor2_0())
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "_attn_implementation") and config._attn_implementation != "sdpa":
        if hasattr(model, "set_attn_implementation"):
            model.set_attn_implementation("sdpa")
        else:
            config._attn_implementation = "sdpa"
    return model


def uses_sdpa(model: torch.nn.Module) -> bool:
    processors = getattr(model, "attn_processors", None)
    if processors is not None:
        return all(isinstance(p, AttnProcessor2_0) for p in processors.values())
    config = getattr(model, "config", None)
    return getattr(config, "_attn_implementation", None) == "sdpa"
