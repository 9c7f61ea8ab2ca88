"""T2I-Adapter style models: STYLE_MODEL, StyleModelLoader and StyleModelApply (ComfyUI's class names).

A style adapter file (`t2iadapter_style_*`) holds a small CLIP-style transformer: learned `style_embedding` tokens are
appended to a CLIP vision `last_hidden_state`, the sequence runs through `ln_pre`, the `transformer_layes.N`
residual attention blocks and `ln_post`, and the style tokens, projected by `proj`, become extra text tokens.
Sizes (width, token count, context width, depth) are read from the weights; heads are 128 channels wide (the
published 1024-wide adapter has 8)."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import torch
from torch import nn
from transformers.activations import QuickGELUActivation

from graphengine import Combo, Float, Node, Output, Socket

from . import costs
from .clip_vision import ClipVisionOutputSocket
from .handles import held_bytes, live_module, module_device_dtype, on_compute_device
from .loaders import loading
from .models.build import instantiate
from .models.errors import ModelFileError
from .services import ModelFiles
from .types import Conditioning

HEAD_WIDTH = 128
StyleModelSocket = Annotated[Any, Socket("STYLE_MODEL")]


class ResidualAttentionBlock(nn.Module):
    """CLIP's pre-norm transformer block (packed-projection attention, QuickGELU MLP)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict(c_fc=nn.Linear(width, 4 * width), gelu=QuickGELUActivation(),
                                             c_proj=nn.Linear(4 * width, width)))
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = self.ln_1(x)
        x = x + self.attn(normed, normed, normed, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class StyleAdapter(nn.Module):
    """CLIP vision hidden states [B, T, width] -> style tokens [B, tokens, context_dim]."""

    def __init__(self, width: int, context_dim: int, layers: int, tokens: int) -> None:
        super().__init__()
        self.style_embedding = nn.Parameter(torch.zeros(1, tokens, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer_layes = nn.Sequential(*[ResidualAttentionBlock(width, max(1, width // HEAD_WIDTH))
                                                 for _ in range(layers)])
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(torch.zeros(width, context_dim))

    @property
    def tokens(self) -> int:
        return int(self.style_embedding.shape[1])

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        style = self.style_embedding.expand(hidden.shape[0], -1, -1)
        x = self.transformer_layes(self.ln_pre(torch.cat([hidden, style], dim=1)))
        return self.ln_post(x[:, -self.tokens:]) @ self.proj


def style_adapter_from_weights(sd: dict[str, torch.Tensor], dtype: torch.dtype | None) -> StyleAdapter:
    if "style_embedding" not in sd or "proj" not in sd:
        raise ModelFileError("not a style model: expected T2I style adapter keys (style_embedding, proj, "
                             "transformer_layes.*)")
    _, tokens, width = sd["style_embedding"].shape
    layers = len({k.split(".")[1] for k in sd if k.startswith("transformer_layes.")})
    context_dim = int(sd["proj"].shape[1])
    return instantiate(lambda: StyleAdapter(int(width), context_dim, layers, int(tokens)), sd, "style model", dtype)


def load_style_adapter(path: str | Path, dtype: torch.dtype | None = torch.float32) -> StyleAdapter:
    from .models.state_dict import read_state_dict

    path = Path(path)
    sd, _ = read_state_dict(path)
    try:
        return style_adapter_from_weights(sd, dtype)
    except ModelFileError as e:
        raise ModelFileError(f"{path.name}: {e}") from e


@dataclass(frozen=True, eq=False)
class StyleModel:
    """STYLE_MODEL: a StyleAdapter held through the model manager."""

    source: Any
    manager: Any = None

    @property
    def nbytes(self) -> int:
        return held_bytes(self.source)

    @property
    def context_dim(self) -> int:
        return int(live_module(self.source).proj.shape[1])

    def tokens(self, clip_vision_output: Any) -> torch.Tensor:
        """Style tokens [B, tokens, context_dim] (float32, CPU) for each image of the CLIP vision output."""
        with on_compute_device(self.manager, self.source) as adapter, torch.no_grad():
            device, dtype = module_device_dtype(adapter)
            return adapter(clip_vision_output.last_hidden_state.to(device, dtype)).to("cpu", torch.float32)


class StyleModelLoader(Node):
    """Loads a style model (T2I-Adapter style adapter)."""

    DISPLAY_NAME = "Load Style Model"
    CATEGORY = "loaders"
    RETURNS = (Output("STYLE_MODEL"),)

    style_model_name: Annotated[str, Combo(ModelFiles("style_models"))]

    @classmethod
    def estimate(cls, inputs, upstream, services=None):
        return costs.model_file(services, "style_models", inputs.get("style_model_name"), 1)

    def execute(self, ctx) -> tuple:
        services = ctx.services
        manager = services.manager
        with loading(self.style_model_name):
            path = services.folders.resolve("style_models", self.style_model_name)
            adapter = manager.load_file_module("style_model", path, load_style_adapter, "style_model")
        return (StyleModel(manager.ref(adapter), manager),)


class StyleModelApply(Node):
    """Appends a style model's tokens, computed from a CLIP vision output, to every conditioning entry."""

    DISPLAY_NAME = "Apply Style Model"
    CATEGORY = "conditioning/style_model"
    RETURNS = (Output("CONDITIONING"),)

    conditioning: Conditioning
    style_model: StyleModelSocket
    clip_vision_output: ClipVisionOutputSocket
    strength: Annotated[float, Float(min=0.0, max=10.0, step=0.001)] = 1.0
    strength_type: Annotated[str, Combo(["multiply", "attn_bias"])] = "multiply"

    def execute(self, ctx) -> tuple:
        tokens = self.style_model.tokens(self.clip_vision_output)
        tokens = tokens.flatten(0, 1).unsqueeze(0)  # every image's tokens in one sequence, as ComfyUI does
        if self.strength_type == "multiply":
            tokens = tokens * self.strength
        out = []
        for cond, extras in self.conditioning:
            if cond.shape[-1] != tokens.shape[-1]:
                raise ValueError(f"style model tokens are {tokens.shape[-1]} wide but the conditioning is "
                                 f"{cond.shape[-1]} wide: the style model does not fit this model family")
            style = tokens.to(cond).expand(cond.shape[0], -1, -1)
            out.append([torch.cat([cond, style], dim=1), dict(extras)])
        return (out,)


NODE_CLASSES = [StyleModelLoader, StyleModelApply]
