"""Low-rank adapters for training the demo LoRA, and the kohya/sd-scripts file format they are saved in.

An adapter adds strength * (alpha / rank) * up(down(x)) to a frozen nn.Linear; merging it is
W + strength * (alpha / rank) * up @ down. kohya names a module by its diffusers/transformers path with
dots turned into underscores, behind a prefix: `lora_unet_` for the UNet, `lora_te_` for the SD1 text encoder,
whose path always starts `text_model.` (transformers 5's CLIPTextModel has no `text_model` level: it is added).
Each module has `<name>.lora_down.weight` [rank, in], `<name>.lora_up.weight` [out, rank] and `<name>.alpha`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

UNET_PREFIX = "lora_unet"
TEXT_ENCODER_PREFIX = "lora_te"
# Every Linear of the UNet's transformer blocks (self/cross attention, feed-forward) and of the text encoder's
# layers (attention, MLP), matched by the end of their module path.
UNET_TARGETS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k",
                "attn2.to_v", "attn2.to_out.0", "ff.net.0.proj", "ff.net.2")
TEXT_ENCODER_TARGETS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
                        "mlp.fc1", "mlp.fc2")


class LoraLinear(nn.Module):
    """A frozen Linear plus a trainable low-rank update (down: kaiming-uniform, up: zero, so it starts as a no-op)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base, self.rank, self.alpha, self.strength = base, rank, float(alpha), 1.0
        self.down = nn.Linear(base.in_features, rank, bias=False)
        self.up = nn.Linear(rank, base.out_features, bias=False)
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.up.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.up(self.down(x)) * (self.strength * self.alpha / self.rank)


def target_paths(model: nn.Module, targets: tuple[str, ...]) -> list[str]:
    """Module paths of the model's Linears whose path ends with one of `targets`."""
    return [path for path, module in model.named_modules()
            if isinstance(module, nn.Linear) and path.endswith(targets)]


def add_adapters(model: nn.Module, targets: tuple[str, ...], rank: int, alpha: float) -> dict[str, LoraLinear]:
    """Wrap every target Linear in place; returns {original module path: adapter}."""
    adapters = {}
    for path in target_paths(model, targets):
        parent_path, _, child = path.rpartition(".")
        parent = model.get_submodule(parent_path)
        adapter = LoraLinear(parent.get_submodule(child), rank, alpha)
        setattr(parent, child, adapter)
        adapters[path] = adapter
    return adapters


def adapter_parameters(adapters: dict[str, LoraLinear]) -> list[nn.Parameter]:
    return [p for adapter in adapters.values() for p in (adapter.down.weight, adapter.up.weight)]


def kohya_name(prefix: str, path: str) -> str:
    if prefix == TEXT_ENCODER_PREFIX and not path.startswith("text_model."):
        path = "text_model." + path
    return f"{prefix}_{path.replace('.', '_')}"


def kohya_module_index(model: nn.Module, prefix: str) -> dict[str, nn.Module]:
    """{kohya name: module} for every Linear of the model: how a loader resolves a kohya key to a module."""
    return {kohya_name(prefix, path): module for path, module in model.named_modules()
            if isinstance(module, nn.Linear)}


def kohya_state_dict(adapters_by_prefix: dict[str, dict[str, LoraLinear]],
                     dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """The adapters as kohya tensors: lora_down / lora_up in `dtype`, alpha a scalar of the same dtype."""
    tensors = {}
    for prefix, adapters in adapters_by_prefix.items():
        for path, adapter in adapters.items():
            name = kohya_name(prefix, path)
            tensors[f"{name}.lora_down.weight"] = adapter.down.weight.detach().to(dtype).contiguous()
            tensors[f"{name}.lora_up.weight"] = adapter.up.weight.detach().to(dtype).contiguous()
            tensors[f"{name}.alpha"] = torch.tensor(adapter.alpha, dtype=dtype)
    return tensors


def kohya_modules(tensors: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """Group kohya tensors by module name: {name: {"down", "up", "alpha"}}."""
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        name, _, part = key.partition(".")
        field = {"lora_down.weight": "down", "lora_up.weight": "up", "alpha": "alpha"}.get(part)
        if field is None:
            raise ValueError(f"not a kohya LoRA key: {key}")
        grouped.setdefault(name, {})[field] = value
    return grouped


@torch.no_grad()
def merge_kohya(models_by_prefix: dict[str, nn.Module], tensors: dict[str, torch.Tensor], strength: float) -> int:
    """Add strength * (alpha / rank) * up @ down to each named Linear's weight, in place; returns the count.
    Raises KeyError for a key naming no Linear of the models."""
    indexes = {prefix: kohya_module_index(model, prefix) for prefix, model in models_by_prefix.items()}
    merged = 0
    for name, parts in kohya_modules(tensors).items():
        prefix = next((p for p in indexes if name.startswith(p + "_")), None)
        module = indexes[prefix].get(name) if prefix is not None else None
        if module is None:
            raise KeyError(f"kohya key {name} names no Linear of the models")
        down, up = parts["down"].float(), parts["up"].float()
        scale = float(parts["alpha"]) / down.shape[0]
        module.weight += (strength * scale * (up @ down)).to(module.weight.dtype)
        merged += 1
    return merged
