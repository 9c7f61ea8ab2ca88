"""Image preprocessors that make ControlNet hint images (ComfyUI's core ones): Canny edges with kornia."""

from __future__ import annotations

from typing import Annotated

import torch

from graphengine import Float, Node, Output

from .types import Image
from .work import map_batch

Threshold = Annotated[float, Float(min=0.01, max=0.99, step=0.01)]


def canny_edges(image: torch.Tensor, low_threshold: float, high_threshold: float,
                device: torch.device | str = "cpu") -> torch.Tensor:
    """IMAGE [B,H,W,C] -> white-on-black edge IMAGE [B,H,W,3] (kornia's Canny on the grey image, hysteresis on)."""
    from kornia.filters import canny

    pixels = image[..., :3].movedim(-1, 1).to(device, torch.float32)
    _, edges = canny(pixels, low_threshold, high_threshold)
    return edges.to("cpu", torch.float32).repeat(1, 3, 1, 1).movedim(1, -1).contiguous()


class Canny(Node):
    """Finds the edges of an image (Canny): white lines on black, a hint for canny ControlNets."""

    CATEGORY = "image/preprocessors"
    RETURNS = (Output("IMAGE"),)

    image: Image
    low_threshold: Threshold = 0.4
    high_threshold: Threshold = 0.8

    def execute(self, ctx) -> tuple:
        device = ctx.services.manager.device
        edges = map_batch(lambda chunk: canny_edges(chunk, self.low_threshold, self.high_threshold, device),
                          self.image, ctx.check_cancelled, out_elements=self.image[0, ..., :1].numel() * 3)
        return (edges,)


NODE_CLASSES = [Canny]
