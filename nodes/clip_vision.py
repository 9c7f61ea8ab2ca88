"""CLIP vision: the CLIP_VISION handle, image preprocessing, CLIP_VISION_OUTPUT and the loader/encode nodes.

Preprocessing follows ComfyUI: RGB only; "center" scales the short side to the model's image size (224 px, bicubic
with antialiasing) and crops the middle, "none" stretches to the square; the pixels are rounded to 8-bit levels and
normalised with CLIP's mean and std. The output carries the projected `image_embeds`, the encoder's
`last_hidden_state` (before the post layer norm, as transformers and ComfyUI give it) and the penultimate layer's
hidden states.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import torch
import torch.nn.functional as F

from graphengine import Combo, Node, Output, Socket

from . import costs
from .handles import held_bytes, live_module, module_device_dtype, on_compute_device
from .loaders import loading
from .models.clip_vision import load_clip_vision
from .services import ModelFiles
from .types import Image
from .work import cancel_checks, row_chunks, run_units

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGES_PER_CALL = 16

ClipVision = Annotated[Any, Socket("CLIP_VISION")]
ClipVisionOutputSocket = Annotated[Any, Socket("CLIP_VISION_OUTPUT")]


def clip_preprocess(image: torch.Tensor, size: int, crop: bool) -> torch.Tensor:
    """IMAGE [B,H,W,C] 0..1 -> normalised pixel values [B,3,size,size]."""
    pixels = image[..., :3].movedim(-1, 1).to(torch.float32)
    height, width = pixels.shape[-2:]
    if (height, width) != (size, size):
        if crop:
            scale = size / min(height, width)
            target = (round(height * scale), round(width * scale))
        else:
            target = (size, size)
        pixels = F.interpolate(pixels, size=target, mode="bicubic", antialias=True)
        top, left = (pixels.shape[-2] - size) // 2, (pixels.shape[-1] - size) // 2
        pixels = pixels[..., top:top + size, left:left + size]
    pixels = (pixels * 255.0).clamp(0.0, 255.0).round() / 255.0
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (pixels - mean) / std


@dataclass(frozen=True, eq=False)
class ClipVisionOutput:
    """CLIP_VISION_OUTPUT: per image of the batch, float32 on the CPU; `output["image_embeds"]` works too."""

    image_embeds: torch.Tensor  # [B, projection_dim]
    last_hidden_state: torch.Tensor  # [B, tokens, width]
    penultimate_hidden_states: torch.Tensor  # [B, tokens, width]

    def __getitem__(self, key: str) -> torch.Tensor:
        return getattr(self, key)

    @property
    def nbytes(self) -> int:
        return sum(t.element_size() * t.nelement()
                   for t in (self.image_embeds, self.last_hidden_state, self.penultimate_hidden_states))


@dataclass(frozen=True, eq=False)
class ClipVisionModel:
    """CLIP_VISION: a transformers CLIPVisionModelWithProjection held through the model manager."""

    source: Any  # module or ModelRef (see nodes.handles)
    manager: Any = None

    @property
    def model(self) -> torch.nn.Module:
        return live_module(self.source)

    @property
    def image_size(self) -> int:
        return int(self.source.config.image_size)

    @property
    def nbytes(self) -> int:
        return held_bytes(self.source)

    def encode(self, image: torch.Tensor, crop: bool = True, interrupt: Any = None) -> ClipVisionOutput:
        """Encode an IMAGE batch; big batches run in chunks with `interrupt()` between them."""
        pixels = clip_preprocess(image, self.image_size, crop)
        with on_compute_device(self.manager, self.source) as model:
            device, dtype = module_device_dtype(model)

            def run(rows: slice) -> tuple[torch.Tensor, ...]:
                with torch.no_grad():
                    out = model(pixel_values=pixels[rows].to(device, dtype), output_hidden_states=True)
                return tuple(t.to("cpu", torch.float32)
                             for t in (out.image_embeds, out.last_hidden_state, out.hidden_states[-2]))

            chunks = run_units(row_chunks(pixels.shape[0], IMAGES_PER_CALL), run,
                               cancel_checks(interrupt) if interrupt else None)
        return ClipVisionOutput(*(torch.cat(parts) for parts in zip(*chunks)))


class CLIPVisionLoader(Node):
    """Loads a CLIP vision model (ViT-L/14, ViT-H/14, ViT-bigG/14; transformers or OpenCLIP key layout)."""

    DISPLAY_NAME = "Load CLIP Vision"
    CATEGORY = "loaders"
    RETURNS = (Output("CLIP_VISION"),)

    clip_name: Annotated[str, Combo(ModelFiles("clip_vision"))]

    @classmethod
    def estimate(cls, inputs, upstream, services=None):
        return costs.model_file(services, "clip_vision", inputs.get("clip_name"), 1)

    def execute(self, ctx) -> tuple:
        services = ctx.services
        with loading(self.clip_name):
            path = services.folders.resolve("clip_vision", self.clip_name)
            model = services.manager.load_file_module("clip_vision", path, load_clip_vision, "clip_vision")
        return (ClipVisionModel(services.manager.ref(model), services.manager),)


class CLIPVisionEncode(Node):
    """Encodes an image with a CLIP vision model (image embeddings and hidden states)."""

    DISPLAY_NAME = "CLIP Vision Encode"
    CATEGORY = "conditioning"
    RETURNS = (Output("CLIP_VISION_OUTPUT"),)

    clip_vision: ClipVision
    image: Image
    crop: Annotated[str, Combo(["center", "none"])] = "center"

    def execute(self, ctx) -> tuple:
        if self.clip_vision is None:
            raise RuntimeError("ERROR: clip vision model is invalid: None\n\nIf the clip vision is from a checkpoint "
                               "loader node your checkpoint does not contain a valid clip vision model.")
        return (self.clip_vision.encode(self.image, crop=self.crop == "center", interrupt=ctx.check_cancelled),)


NODE_CLASSES = [CLIPVisionLoader, CLIPVisionEncode]
