"""Depth-to-image support: a depth map -> conditioning for SD2-depth (5-channel) UNets, and a local DPT estimator."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image as PILImage

from graphengine import Combo, Node, Output

from .handles import LATENT_DOWNSCALE, module_device_dtype, on_compute_device
from .loaders import loading
from .services import ModelFiles
from .types import Conditioning, Image
from .vae import with_options
from .work import Progress, map_rows

DEPTH_IMAGES_PER_CALL = 4


def normalize_per_image(values: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Map each image of [B,...] linearly onto [low, high] (a flat image maps to the middle)."""
    flat = values.reshape(values.shape[0], -1)
    vmin = flat.amin(dim=1).reshape((-1,) + (1,) * (values.ndim - 1))
    vmax = flat.amax(dim=1).reshape((-1,) + (1,) * (values.ndim - 1))
    span = vmax - vmin
    unit = torch.where(span > 0, (values - vmin) / span.clamp_min(1e-12), torch.full_like(values, 0.5))
    return unit * (high - low) + low


def depth_to_concat(depth_image: torch.Tensor) -> torch.Tensor:
    """Depth-map IMAGE [B,H,W,C] -> [B,1,H/8,W/8] in [-1,1] per image (bicubic to latent size, as SD2-depth)."""
    depth = depth_image.to(torch.float32)[..., :3].mean(dim=-1, keepdim=True).movedim(-1, 1)
    size = (max(1, depth.shape[2] // LATENT_DOWNSCALE), max(1, depth.shape[3] // LATENT_DOWNSCALE))
    depth = F.interpolate(depth, size=size, mode="bicubic", align_corners=False)
    return normalize_per_image(depth, -1.0, 1.0)


class DepthConditioning(Node):
    """Adds a depth map to the conditioning of a depth-conditioned (SD2-depth, 5-channel) model."""

    NAME = "ConditioningSetDepth"
    DISPLAY_NAME = "Conditioning Set Depth (depth2img)"
    CATEGORY = "conditioning/depth"
    RETURNS = (Output("CONDITIONING", "positive"), Output("CONDITIONING", "negative"))

    positive: Conditioning
    negative: Conditioning
    depth_map: Image

    def execute(self, ctx) -> tuple:
        depth = depth_to_concat(self.depth_map)
        return with_options(self.positive, concat_depth=depth), with_options(self.negative, concat_depth=depth)


def load_dpt_model(path: Path) -> torch.nn.Module:
    """A local transformers DPT depth model (never downloads)."""
    from transformers import DPTForDepthEstimation

    return DPTForDepthEstimation.from_pretrained(str(path), local_files_only=True).eval()


def load_dpt_processor(path: Path) -> Any:
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(str(path), local_files_only=True)


def estimate_depth(model: torch.nn.Module, processor: Any, images: torch.Tensor, manager: Any = None,
                   progress: Progress | None = None) -> torch.Tensor:
    """IMAGE [B,H,W,C] -> relative depth (near = bright) IMAGE [B,H,W,3] in 0..1, each image normalized; a batch
    runs DEPTH_IMAGES_PER_CALL images at a time with progress(i, n) before each call."""
    return map_rows(lambda chunk: _estimate_depth(model, processor, chunk, manager), images, DEPTH_IMAGES_PER_CALL,
                    progress)


def _estimate_depth(model: torch.nn.Module, processor: Any, images: torch.Tensor, manager: Any) -> torch.Tensor:
    height, width = images.shape[1], images.shape[2]
    pil = [PILImage.fromarray((img[..., :3].clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy())
           for img in images]
    inputs = processor(images=[np.asarray(p) for p in pil], return_tensors="pt")
    with on_compute_device(manager, model) as net, torch.no_grad():
        device, dtype = module_device_dtype(net)
        predicted = net(pixel_values=inputs["pixel_values"].to(device, dtype)).predicted_depth
    predicted = predicted.to("cpu", torch.float32).unsqueeze(1)
    predicted = F.interpolate(predicted, size=(height, width), mode="bicubic", align_corners=False)
    depth = normalize_per_image(predicted, 0.0, 1.0)
    return depth.movedim(1, -1).expand(-1, -1, -1, 3).contiguous()


class DepthEstimate(Node):
    """Estimates a depth map from an image with a local DPT model (from models/depth)."""

    CATEGORY = "image/preprocessors"
    RETURNS = (Output("IMAGE", "depth_map"),)

    image: Image
    model_name: Annotated[str, Combo(ModelFiles("depth"))]

    def execute(self, ctx) -> tuple:
        services = ctx.services
        with loading(self.model_name):
            path = services.folders.resolve("depth", self.model_name)
            model = services.manager.get(("depth", str(path)), lambda: load_dpt_model(path), "depth")
            processor = load_dpt_processor(path)
        return (estimate_depth(model, processor, self.image, services.manager, ctx.progress),)


NODE_CLASSES = [DepthConditioning, DepthEstimate]
