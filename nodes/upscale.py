"""Upscale models (ESRGAN, RealESRGAN, SwinIR, … whatever spandrel detects): the UPSCALE_MODEL loader and a tiled
image upscale.

spandrel is an optional extra (`pip install "graphengine[upscale]"`): it is imported when a model is loaded, never
at module import, so the nodes stay listed without it and the loader fails with `SpandrelUnavailable`, which says
what to install. Weights are read by `read_state_dict` (safetensors, or pickles through weights-only loading), and
spandrel only detects the architecture from the keys and builds it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import torch

from graphengine import Combo, Node, Output, Socket

from . import costs
from .handles import (ModuleSource, held_bytes, module_device_dtype, on_compute_device, retry_tiled, tile_starts,
                      tiled_map)
from .loaders import loading
from .models.state_dict import read_state_dict
from .services import ModelFiles
from .types import Image
from .work import Progress

# ComfyUI's tiling: 512-pixel tiles sharing 32 pixels, the tile halved after each out-of-memory error down to 128.
UPSCALE_TILE = 512
UPSCALE_OVERLAP = 32
MIN_UPSCALE_TILE = 128
INSTALL_HINT = ('pip install "graphengine[upscale]" (it brings spandrel and torchvision; on a CPU-only torch, '
                'install the CPU build of torchvision that matches your torch first; see the README, "Upscale models")')


class SpandrelUnavailable(ImportError):
    """spandrel (the upscale-model library) is not installed or cannot be imported."""


def import_spandrel() -> Any:
    """The spandrel module, or SpandrelUnavailable naming what to install and why the import failed."""
    try:
        import spandrel
    except Exception as exc:  # noqa: BLE001 - a broken torchvision raises RuntimeError, not ImportError
        reason = f"{type(exc).__name__}: {exc}"
        raise SpandrelUnavailable(f"upscale models need the spandrel package, which could not be imported "
                                  f"({reason}). Install it with: {INSTALL_HINT}") from exc
    return spandrel


class SpandrelNet(torch.nn.Module):
    """A spandrel image model as one module the model manager can cache and move; calling it runs the model the
    way spandrel does (input padded to the model's size requirements, output cropped back and clamped to 0..1)."""

    def __init__(self, descriptor: Any) -> None:
        super().__init__()
        self.net = descriptor.model  # registered, so moving or casting this module moves the descriptor's model
        self.descriptor = descriptor

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.descriptor(pixels)


def without_prefix(state_dict: dict[str, torch.Tensor], prefix: str = "module.") -> dict[str, torch.Tensor]:
    """Keys without a common `prefix` (files saved from a DataParallel-wrapped model carry "module.")."""
    if state_dict and all(key.startswith(prefix) for key in state_dict):
        return {key[len(prefix):]: value for key, value in state_dict.items()}
    return state_dict


def load_upscale_model(path: Path) -> SpandrelNet:
    """A single-image spandrel model from a weight file, its architecture detected from the keys."""
    spandrel = import_spandrel()
    tensors, _metadata = read_state_dict(path)
    descriptor = spandrel.ModelLoader().load_from_state_dict(without_prefix(tensors))
    if not isinstance(descriptor, spandrel.ImageModelDescriptor):
        raise ValueError(f"{descriptor.architecture.name} is a {descriptor.purpose.lower()} model, not an upscale "
                         f"model (upscale models take one image and return one)")
    return SpandrelNet(descriptor.eval())


@dataclass(frozen=True, eq=False)
class UpscaleModel:
    """UPSCALE_MODEL: a spandrel model held through the model manager, with the facts needed to tile an image."""

    source: ModuleSource
    architecture: str
    scale: int
    input_channels: int
    output_channels: int
    manager: Any = None

    @classmethod
    def of(cls, net: SpandrelNet, manager: Any) -> UpscaleModel:
        described = net.descriptor
        source = manager.ref(net) if manager is not None else net
        return cls(source, described.architecture.name, described.scale, described.input_channels,
                   described.output_channels, manager)

    @property
    def nbytes(self) -> int:
        return held_bytes(self.source)

    def upscale(self, image: torch.Tensor, progress: Progress | None = None, tile: int = UPSCALE_TILE,
                overlap: int = UPSCALE_OVERLAP) -> torch.Tensor:
        """IMAGE [B,H,W,C] -> IMAGE [B,H*scale,W*scale,3], in tiles of `tile` input pixels sharing `overlap`, the
        tile halved after each out-of-memory error down to MIN_UPSCALE_TILE; progress(i, n) before each tile of
        each image (n = images × tiles) and (n, n) after the last, when there is more than one tile in all."""
        pixels = self._channels_in(image.to(torch.float32).movedim(-1, 1))
        with on_compute_device(self.manager, self.source) as net:
            out = retry_tiled(lambda size, shared: self._tiled(net, pixels, size, shared, progress),
                              tile=tile, overlap=overlap, min_tile=min(tile, MIN_UPSCALE_TILE))
        return self._channels_out(out).clamp(0.0, 1.0).movedim(1, -1)

    def _channels_in(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.input_channels == pixels.shape[1]:
            return pixels
        if self.input_channels == 1:
            return pixels[:, :3].mean(dim=1, keepdim=True)
        if self.input_channels == 3 and pixels.shape[1] in (1, 4):
            return pixels[:, :3] if pixels.shape[1] == 4 else pixels.expand(-1, 3, -1, -1)
        raise ValueError(f"the {self.architecture} model takes {self.input_channels}-channel images, "
                         f"not {pixels.shape[1]}-channel ones")

    @staticmethod
    def _channels_out(pixels: torch.Tensor) -> torch.Tensor:
        return pixels.expand(-1, 3, -1, -1) if pixels.shape[1] == 1 else pixels[:, :3]

    def _tiled(self, net: torch.nn.Module, pixels: torch.Tensor, tile: int, overlap: int,
               progress: Progress | None) -> torch.Tensor:
        device, dtype = module_device_dtype(net)
        batch, _, height, width = pixels.shape
        per_image = len(tile_starts(height, min(tile, height), overlap)) * len(tile_starts(width, min(tile, width),
                                                                                             overlap))
        total = batch * per_image
        report = progress if progress is not None and total > 1 else None

        def run(piece: torch.Tensor) -> torch.Tensor:
            return net(piece.to(device, dtype)).to("cpu", torch.float32)

        outs = []
        for index in range(batch):  # one image at a time, as a batch of big tiles may not fit where one does
            done = index * per_image
            if report is not None:
                report(done, total)
            inner = None if report is None else (lambda i, n, done=done: report(done + i, total) if 0 < i < n
                                                 else None)
            outs.append(tiled_map(run, pixels[index:index + 1], tile=tile, overlap=overlap, scale=self.scale,
                                  out_channels=self.output_channels, progress=inner))
        if report is not None:
            report(total, total)
        return torch.cat(outs)


UpscaleModelSocket = Annotated[Any, Socket("UPSCALE_MODEL")]


class UpscaleModelLoader(Node):
    """Loads an upscale model (ESRGAN, RealESRGAN, SwinIR, … detected by spandrel) from models/upscale_models."""

    DISPLAY_NAME = "Load Upscale Model"
    CATEGORY = "loaders"
    RETURNS = (Output("UPSCALE_MODEL"),)

    model_name: Annotated[str, Combo(ModelFiles("upscale_models"))]

    @classmethod
    def estimate(cls, inputs, upstream, services=None):
        return costs.model_file(services, "upscale_models", inputs.get("model_name"), 1)

    def execute(self, ctx) -> tuple:
        services = ctx.services
        import_spandrel()  # outside `loading`: the missing package is the error, not the file
        with loading(self.model_name):
            path = services.folders.resolve("upscale_models", self.model_name)
            net = services.manager.get(("upscale_model", str(path)), lambda: load_upscale_model(path),
                                       "upscale_model")
        return (UpscaleModel.of(net, services.manager),)


class ImageUpscaleWithModel(Node):
    """Upscales images with an upscale model, tile by tile so that large images fit in memory."""

    DISPLAY_NAME = "Upscale Image (using Model)"
    CATEGORY = "image/upscaling"
    RETURNS = (Output("IMAGE"),)

    upscale_model: UpscaleModelSocket
    image: Image

    def execute(self, ctx) -> tuple:
        return (self.upscale_model.upscale(self.image, ctx.progress),)


NODE_CLASSES = [UpscaleModelLoader, ImageUpscaleWithModel]
