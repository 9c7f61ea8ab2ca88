"""GLIGEN text boxes: GLIGENLoader and GLIGENTextBoxApply (ComfyUI's class names) on diffusers' gated attention.

A GLIGEN file holds one gated self-attention layer ("fuser", diffusers `GatedSelfAttentionDense`) per transformer
block of an SD1.x UNet (keys `<ldm block>.transformer_blocks.N.fuser.*`) and a `position_net` (diffusers
`GLIGENTextBoundingboxProjection`) that turns boxes and their phrases' pooled CLIP embeddings into object tokens.
diffusers runs both when a UNet is built with `attention_type="gated"`; here they are attached to the live UNet only
for the network calls whose conditioning entry carries boxes (the `gligen` option, ComfyUI's
("position", model, [(pooled, h, w, y, x) in latent pixels])), and detached afterwards, so the cached base UNet and
entries without boxes never see them. Boxes become ComfyUI's normalised (x1, y1, x2, y2), at most 30 per entry.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import torch
from diffusers.models.attention import BasicTransformerBlock, GatedSelfAttentionDense
from diffusers.models.embeddings import GLIGENTextBoundingboxProjection
from torch import nn

from graphengine import Combo, Int, Node, Output, Socket, String

from . import costs
from .handles import held_bytes, live_module, on_compute_device
from .loaders import loading
from .models.build import instantiate
from .models.errors import ModelFileError
from .services import ModelFiles
from .types import MAX_RESOLUTION, Clip, Conditioning

MAX_OBJECTS = 30
SD1_CONTEXT = 768  # SD1.x GLIGEN layers use 8 heads; other widths use 64-channel heads
_SECTIONS = ("input_blocks", "middle_block", "output_blocks")
_FUSER = re.compile(r"^(?:.*\.)?(input_blocks|middle_block|output_blocks)\.(\d+)(?:\.(\d+))?\.transformer_blocks"
                    r"\.(\d+)\.fuser\.(.+)$")
GligenSocket = Annotated[Any, Socket("GLIGEN")]


class GligenModel(nn.Module):
    """The fusers in ComfyUI's order (input, middle, output blocks; each block's transformer blocks) + position_net."""

    def __init__(self, fusers: list[tuple[int, int]], positive_len: int, key_dim: int) -> None:
        super().__init__()
        heads = [8 if key_dim == SD1_CONTEXT else max(1, query // 64) for query, _ in fusers]
        self.fusers = nn.ModuleList(GatedSelfAttentionDense(query, key, h, query // h)
                                    for (query, key), h in zip(fusers, heads))
        self.position_net = GLIGENTextBoundingboxProjection(positive_len, key_dim)

    @property
    def positive_len(self) -> int:
        return int(self.position_net.positive_len)


def load_gligen(path: str | Path, dtype: torch.dtype | None = torch.float32) -> GligenModel:
    from .models.state_dict import read_state_dict

    path = Path(path)
    sd, _ = read_state_dict(path)
    found: dict[tuple[int, ...], dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        if m := _FUSER.match(key):
            section, block, part, index, param = m.groups()
            place = (_SECTIONS.index(section), int(block), int(part or 0), int(index))
            found.setdefault(place, {})[param] = value
    if not found or "position_net.null_positive_feature" not in sd:
        raise ModelFileError(f"{path.name}: not a GLIGEN model (expected *.fuser.* and position_net.* keys)")
    order = sorted(found)
    shapes = [tuple(found[k]["linear.weight"].shape) for k in order]
    key_dim = int(shapes[0][1])
    weights = {f"fusers.{i}.{param}": v for i, k in enumerate(order) for param, v in found[k].items()}
    weights.update({k: v for k, v in sd.items() if k.startswith("position_net.")})
    positive_len = int(sd["position_net.null_positive_feature"].shape[0])
    try:
        return instantiate(lambda: GligenModel(shapes, positive_len, key_dim), weights, "GLIGEN", dtype)
    except ModelFileError as e:
        raise ModelFileError(f"{path.name}: {e}") from e


def transformer_blocks(unet: nn.Module) -> list[BasicTransformerBlock]:
    """A UNet's transformer blocks in the LDM order (down path, middle, up path)."""
    parts = [*unet.down_blocks, unet.mid_block, *unet.up_blocks]
    return [m for part in parts if part is not None for m in part.modules() if isinstance(m, BasicTransformerBlock)]


@dataclass(frozen=True, eq=False)
class Gligen:
    """GLIGEN: a GligenModel held through the model manager."""

    source: Any
    manager: Any = None

    @property
    def nbytes(self) -> int:
        return held_bytes(self.source)

    def unet_inputs(self, boxes: list, batch: int, height: int, width: int) -> dict[str, torch.Tensor]:
        """position_net inputs for boxes [(pooled, h, w, y, x) latent pixels] on a height × width latent."""
        count = min(len(boxes), MAX_OBJECTS)
        dim = live_module(self.source).positive_len
        coords, masks, embeds = torch.zeros(MAX_OBJECTS, 4), torch.zeros(MAX_OBJECTS), torch.zeros(MAX_OBJECTS, dim)
        for i, (pooled, h, w, y, x) in enumerate(boxes[:count]):
            if pooled.numel() != dim:
                raise ValueError(f"this GLIGEN model takes {dim}-wide phrase embeddings, the CLIP gives "
                                 f"{pooled.numel()}: it does not fit this model family (GLIGEN files are for SD1.x)")
            coords[i] = torch.tensor([x / width, y / height, (x + w) / width, (y + h) / height])
            masks[i] = 1.0
            embeds[i] = pooled.reshape(-1).to(torch.float32)
        return {"gligen_boxes": coords.expand(batch, -1, -1), "gligen_masks": masks.expand(batch, -1),
                "gligen_embeddings": embeds.expand(batch, -1, -1)}

    @contextlib.contextmanager
    def attached(self, unet: nn.Module) -> Iterator[None]:
        """The fusers and position_net set on this UNet instance for the block, removed afterwards."""
        with on_compute_device(self.manager, self.source) as model:
            blocks = transformer_blocks(unet)
            fits = len(blocks) == len(model.fusers) and all(
                b.norm1.normalized_shape[0] == f.linear.out_features for b, f in zip(blocks, model.fusers))
            if not fits:
                raise ValueError(f"this GLIGEN model ({len(model.fusers)} gated layers) does not fit the UNet "
                                 f"({len(blocks)} transformer blocks of other widths): GLIGEN files are for SD1.x")
            if any("fuser" in b._modules for b in blocks):
                raise ValueError("this UNet already has GLIGEN layers of its own")
            try:
                for block, fuser in zip(blocks, model.fusers):
                    block.fuser = fuser
                unet.position_net = model.position_net
                yield
            finally:
                for module, name in [*((b, "fuser") for b in blocks), (unet, "position_net")]:
                    if name in module._modules:
                        delattr(module, name)


class GLIGENLoader(Node):
    """Loads a GLIGEN model (gated self-attention layers and box encoder for SD1.x)."""

    DISPLAY_NAME = "GLIGENLoader"
    CATEGORY = "loaders"
    RETURNS = (Output("GLIGEN"),)

    gligen_name: Annotated[str, Combo(ModelFiles("gligen"))]

    @classmethod
    def estimate(cls, inputs, upstream, services=None):
        return costs.model_file(services, "gligen", inputs.get("gligen_name"), 1)

    def execute(self, ctx) -> tuple:
        manager = ctx.services.manager
        with loading(self.gligen_name):
            path = ctx.services.folders.resolve("gligen", self.gligen_name)
            model = manager.load_file_module("gligen", path, load_gligen, "gligen")
        return (Gligen(manager.ref(model), manager),)


Box = Annotated[int, Int(min=8, max=MAX_RESOLUTION, step=8)]
Offset = Annotated[int, Int(min=0, max=MAX_RESOLUTION, step=8)]


class GLIGENTextBoxApply(Node):
    """Places a phrase in a box of the image (GLIGEN): the box and the phrase's CLIP embedding go to the UNet."""

    DISPLAY_NAME = "GLIGENTextBoxApply"
    CATEGORY = "conditioning/gligen"
    RETURNS = (Output("CONDITIONING"),)

    conditioning_to: Conditioning
    clip: Clip
    gligen_textbox_model: GligenSocket
    text: Annotated[str, String(multiline=True, dynamic_prompts=True)]
    width: Box = 64
    height: Box = 64
    x: Offset = 0
    y: Offset = 0

    def execute(self, ctx) -> tuple:
        _, pooled = self.clip.encode(self.text, ctx.progress)
        box = (pooled, self.height // 8, self.width // 8, self.y // 8, self.x // 8)
        out = []
        for cond, extras in self.conditioning_to:
            previous = extras["gligen"][2] if "gligen" in extras else []
            out.append([cond, {**extras, "gligen": ("position", self.gligen_textbox_model, [*previous, box])}])
        return (out,)


NODE_CLASSES = [GLIGENLoader, GLIGENTextBoxApply]
