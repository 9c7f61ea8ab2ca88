"""Pixel-space unconditional models: a diffusers ``UNet2DModel`` denoising RGB images directly (no VAE, no text).

Two on-disk forms load offline:
- a single safetensors file: the UNet's ``state_dict`` keys prefixed ``unet.``, metadata
  ``graphengine.family = "pixel_unet2d"`` and ``graphengine.config`` = JSON
  ``{"unet2d": <UNet2DModel config>, "scheduler": <scheduler config incl. "_class_name">}``;
- a diffusers folder as ``DDPMPipeline``/``DDIMPipeline.save_pretrained`` writes it: ``model_index.json``
  naming a ``UNet2DModel`` with ``unet/`` and ``scheduler/`` subfolders.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import UNet2DModel

from .errors import ModelFileError
from .families import CUSTOM_CONFIG_KEY
from .state_dict import read_safetensors_metadata, read_state_dict, write_safetensors

FAMILY_KEY = "graphengine.family"
PIXEL_FAMILY = "pixel_unet2d"
UNET_KEY_PREFIX = "unet."
PIXEL_PIPELINE_CLASSES = ("DDPMPipeline", "DDIMPipeline")
_CONFIG_PRIVATE = ("_use_default_values", "_diffusers_version", "_name_or_path")


@dataclass
class PixelModel:
    """A loaded pixel-space model: the UNet, its training scheduler's config, and where it came from."""

    unet: UNet2DModel
    scheduler_config: dict
    source: str
    metadata: dict = field(default_factory=dict)

    @property
    def sample_size(self) -> int:
        size = self.unet.config.sample_size
        return int(size[0] if isinstance(size, (list, tuple)) else size)

    @property
    def channels(self) -> int:
        return int(self.unet.config.in_channels)

    @property
    def num_class_embeds(self) -> int | None:
        return self.unet.config.num_class_embeds

    @property
    def prediction_type(self) -> str:
        return str(self.scheduler_config.get("prediction_type", "epsilon"))


def _public_config(config: Mapping) -> dict:
    return {k: v for k, v in dict(config).items() if k not in _CONFIG_PRIVATE}


def save_pixel_unet(path: str | Path, unet: UNet2DModel, scheduler_config: Mapping,
                    dtype: torch.dtype = torch.float32, extra_metadata: Mapping[str, str] | None = None) -> None:
    """Write the single-file layout (see the module docstring)."""
    scheduler = _public_config(scheduler_config)
    if "_class_name" not in scheduler:
        raise ValueError("scheduler config needs its '_class_name'")
    config = {"unet2d": _public_config(unet.config), "scheduler": scheduler}
    tensors = {UNET_KEY_PREFIX + k: v.to(dtype) for k, v in unet.state_dict().items()}
    metadata = {FAMILY_KEY: PIXEL_FAMILY, CUSTOM_CONFIG_KEY: json.dumps(config), **(extra_metadata or {})}
    write_safetensors(path, tensors, metadata)


def is_pixel_metadata(metadata: Mapping[str, str]) -> bool:
    return metadata.get(FAMILY_KEY) == PIXEL_FAMILY


def is_pixel_file(path: str | Path) -> bool:
    """True for a safetensors file in the pixel single-file layout (reads only its header)."""
    path = Path(path)
    if not path.is_file() or path.suffix.lower() not in (".safetensors", ".sft"):
        return False
    try:
        return is_pixel_metadata(read_safetensors_metadata(path))
    except (ModelFileError, OSError, ValueError):
        return False


def is_pixel_folder(path: str | Path) -> bool:
    """True for a diffusers folder whose model_index.json names a UNet2DModel pipeline."""
    index = Path(path) / "model_index.json"
    if not index.is_file():
        return False
    try:
        data = json.loads(index.read_text())
    except (OSError, ValueError):
        return False
    unet = data.get("unet")
    return data.get("_class_name") in PIXEL_PIPELINE_CLASSES or (
        isinstance(unet, list) and len(unet) == 2 and unet[1] == "UNet2DModel")


def _build_unet(config: dict, weights: Mapping[str, torch.Tensor], source: str,
                dtype: torch.dtype | None) -> UNet2DModel:
    try:
        unet = UNet2DModel.from_config(config)
    except (TypeError, ValueError) as exc:
        raise ModelFileError(f"{source}: invalid UNet2DModel config: {exc}") from exc
    missing, unexpected = unet.load_state_dict(dict(weights), strict=False)
    if missing or unexpected:
        raise ModelFileError(f"{source}: weights do not match its UNet2DModel config "
                             f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")
    if dtype is not None and dtype != torch.float32:
        unet = torch.nn.Module.to(unet, dtype=dtype)
    return unet.eval().requires_grad_(False)


def load_pixel_file(path: str | Path, dtype: torch.dtype | None = torch.float32) -> PixelModel:
    """Load the single-file layout; ModelFileError naming the file if its metadata or weights are wrong."""
    path = Path(path)
    tensors, metadata = read_state_dict(path)
    if not is_pixel_metadata(metadata):
        raise ModelFileError(f"{path.name}: not a pixel-space UNet2DModel file ({FAMILY_KEY} != {PIXEL_FAMILY!r})")
    try:
        config = json.loads(metadata[CUSTOM_CONFIG_KEY])
        unet_config, scheduler_config = dict(config["unet2d"]), dict(config["scheduler"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"{path.name}: bad {CUSTOM_CONFIG_KEY} metadata: {exc}") from exc
    weights = {k[len(UNET_KEY_PREFIX):]: v for k, v in tensors.items() if k.startswith(UNET_KEY_PREFIX)}
    unet = _build_unet(unet_config, weights, path.name, dtype)
    return PixelModel(unet, scheduler_config, str(path), dict(metadata))


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"{path}: unreadable config: {exc}") from exc


def load_pixel_folder(path: str | Path, dtype: torch.dtype | None = torch.float32) -> PixelModel:
    """Load a DDPMPipeline/DDIMPipeline-style diffusers folder (unet/ + scheduler/) without any download."""
    path = Path(path)
    unet_dir, scheduler_file = path / "unet", path / "scheduler" / "scheduler_config.json"
    if not (unet_dir / "config.json").is_file() or not scheduler_file.is_file():
        raise ModelFileError(f"{path.name}: a pixel diffusers folder needs unet/config.json and "
                             "scheduler/scheduler_config.json")
    weight_files = sorted(unet_dir.glob("diffusion_pytorch_model*.safetensors")) or sorted(
        unet_dir.glob("diffusion_pytorch_model*.bin"))
    if not weight_files:
        raise ModelFileError(f"{path.name}: no unet/diffusion_pytorch_model weights")
    weights: dict[str, torch.Tensor] = {}
    for file in weight_files:
        weights.update(read_state_dict(file)[0])
    unet = _build_unet(_read_json(unet_dir / "config.json"), weights, path.name, dtype)
    scheduler_config = _read_json(scheduler_file)
    scheduler_config.setdefault("_class_name", "DDPMScheduler")
    return PixelModel(unet, scheduler_config, str(path))


def scheduler_config_of(path: str | Path) -> dict:
    """The scheduler config of either form, without reading the weights."""
    path = Path(path)
    if path.is_dir():
        config = _read_json(path / "scheduler" / "scheduler_config.json")
        config.setdefault("_class_name", "DDPMScheduler")
        return config
    try:
        return dict(json.loads(read_safetensors_metadata(path)[CUSTOM_CONFIG_KEY])["scheduler"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"{path.name}: bad {CUSTOM_CONFIG_KEY} metadata: {exc}") from exc


def load_pixel_model(path: str | Path, dtype: torch.dtype | None = torch.float32) -> PixelModel:
    """Either form, by what is at ``path``."""
    path = Path(path)
    if path.is_dir():
        return load_pixel_folder(path, dtype)
    return load_pixel_file(path, dtype)
