"""`comfy.utils`: ProgressBar (the running node's progress events), resizing, weights-only file loading, tiling."""

from __future__ import annotations

import types
from typing import Any

import torch
from PIL import Image as PILImage

from graphengine import current_context

from ..handles import tiled_map
from ..imageio import bislerp, common_upscale, lanczos
from ..models.state_dict import read_state_dict
from . import make_module


class ProgressBar:
    """Progress of the node that made it: each update is the engine's `progress` event for that node (and raises
    the engine's interrupt when the prompt was cancelled). Outside a running node, updates only count."""

    def __init__(self, total: int, node_id: str | None = None) -> None:
        self.total = int(total)
        self.current = 0
        self.node_id = node_id  # accepted for signature compatibility; events go to the node that made the bar
        self._ctx = current_context()

    def update_absolute(self, value: int, total: int | None = None, preview: Any = None) -> None:
        if total is not None:
            self.total = int(total)
        self.current = min(int(value), self.total)
        ctx = self._ctx or current_context()
        if ctx is not None and self._enabled():
            ctx.progress(self.current, self.total, preview=_preview_image(preview))

    def update(self, value: int) -> None:
        self.update_absolute(self.current + int(value))

    @staticmethod
    def _enabled() -> bool:
        import sys
        utils = sys.modules.get("comfy.utils")
        return bool(getattr(utils, "PROGRESS_BAR_ENABLED", True))


def _preview_image(preview: Any) -> PILImage.Image | None:
    """ComfyUI's preview argument is ("JPEG"|"PNG", PIL image, max size); a bare PIL image is taken too."""
    if isinstance(preview, tuple) and len(preview) >= 2:
        preview = preview[1]
    return preview if isinstance(preview, PILImage.Image) else None


def load_torch_file(ckpt: str, safe_load: bool = False, device: Any = None,
                    return_metadata: bool = False) -> Any:
    """A weight file's tensors: safetensors, or a torch pickle loaded weights-only (never arbitrary objects)."""
    tensors, metadata = read_state_dict(ckpt)
    if device is not None:
        tensors = {k: v.to(device) for k, v in tensors.items()}
    return (tensors, metadata) if return_metadata else tensors


def tiled_scale(samples: torch.Tensor, function: Any, tile_x: int = 64, tile_y: int = 64, overlap: int = 8,
                upscale_amount: float = 4, out_channels: int = 3, output_device: Any = "cpu",
                pbar: ProgressBar | None = None) -> torch.Tensor:
    """Apply `function` to square tiles of [B, C, H, W] samples (output = input × upscale_amount), blending the
    overlaps; `tile_x` and `tile_y` must agree (the engine's tiler uses square tiles)."""
    if int(tile_x) != int(tile_y):
        raise NotImplementedError(f"comfy.utils.tiled_scale: tile_x ({tile_x}) != tile_y ({tile_y}) is not "
                                  f"supported here (square tiles only)")

    def progress(index: int, total: int) -> None:
        if pbar is not None and index > 0:
            pbar.update(1)

    out = tiled_map(function, samples, tile=int(tile_x), overlap=int(overlap), scale=float(upscale_amount),
                    out_channels=int(out_channels), progress=progress)
    if pbar is not None:
        pbar.update(1)
    return out.to(output_device)


def repeat_to_batch_size(tensor: torch.Tensor, batch_size: int, dim: int = 0) -> torch.Tensor:
    """Repeat (or cut) along `dim` to exactly `batch_size` rows."""
    size = tensor.shape[dim]
    if size > batch_size:
        return tensor.narrow(dim, 0, batch_size)
    if size < batch_size:
        repeats = [1] * tensor.ndim
        repeats[dim] = -(-batch_size // size)
        return tensor.repeat(*repeats).narrow(dim, 0, batch_size)
    return tensor


def build(bound: Any) -> types.ModuleType:
    module = make_module("comfy.utils", __doc__, {
        "ProgressBar": ProgressBar, "common_upscale": common_upscale, "bislerp": bislerp, "lanczos": lanczos,
        "load_torch_file": load_torch_file, "tiled_scale": tiled_scale,
        "repeat_to_batch_size": repeat_to_batch_size, "PROGRESS_BAR_ENABLED": True,
    })

    def set_progress_bar_enabled(enabled: bool) -> None:
        module.PROGRESS_BAR_ENABLED = bool(enabled)

    module.set_progress_bar_enabled = set_progress_bar_enabled
    return module
