"""TAESD preview decoders: `diffusers.AutoencoderTiny` decoders read from `models/vae_approx/`.

ComfyUI's file names pick the decoder for a latent space (`taesd_decoder.*` for SD1.x/SD2.x, `taesdxl_decoder.*` for
SDXL); `taedemo_decoder.*` is this repository's distilled decoder for the bundled demo models. Files hold either the
original TAESD decoder keys (`1.weight`, `3.conv.0.weight`, …) or diffusers' (`decoder.layers.0.weight`, …); a
`graphengine.config` metadata entry gives the AutoencoderTiny config of a non-standard (smaller) decoder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

# latent space (nodes.loaders.LATENT_SPACE, "custom" for the demo family) -> decoder file stem
DECODER_STEMS = {"sd1": "taesd_decoder", "sdxl": "taesdxl_decoder", "custom": "taedemo_decoder"}
DECODER_SUFFIXES = (".safetensors", ".pth", ".pt")
CONFIG_KEY = "graphengine.config"


def find_decoder(folders: list[str] | tuple[str, ...], latent_space: str) -> Path | None:
    """The first TAESD decoder file for `latent_space` in the vae_approx folders, or None."""
    stem = DECODER_STEMS.get(latent_space)
    if stem is None:
        return None
    for folder in folders:
        for suffix in DECODER_SUFFIXES:
            path = Path(folder) / f"{stem}{suffix}"
            if path.is_file():
                return path
    return None


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            return {key: handle.get_tensor(key) for key in handle.keys()}, dict(handle.metadata() or {})
    return torch.load(path, map_location="cpu", weights_only=True), {}


def decoder_state_dict(raw: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Diffusers `decoder.layers.*` keys from either layout (original TAESD layer i is diffusers layer i-1: the
    original's first layer is a parameter-free clamp that DecoderTiny applies in forward)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in raw.items():
        if key.startswith("decoder."):
            out[key] = value
            continue
        head, _, rest = key.partition(".")
        if head.isdigit():
            out[f"decoder.layers.{int(head) - 1}.{rest}"] = value
    return out


def build_tiny(config: dict[str, Any]) -> Any:
    from diffusers import AutoencoderTiny

    # The encoder is never used for previews: keep it as small as the config allows.
    blocks = len(config.get("decoder_block_out_channels", (64, 64, 64, 64)))
    return AutoencoderTiny(encoder_block_out_channels=(8,) * blocks, num_encoder_blocks=(1,) * blocks, **config)


def load_decoder(path: Path) -> Any:
    """An AutoencoderTiny (eval, fp32, CPU) whose decoder holds the file's weights."""
    raw, metadata = _read(path)
    weights = decoder_state_dict(raw)
    if not weights:
        raise ValueError(f"{path.name}: no TAESD decoder weights in this file")
    config = json.loads(metadata[CONFIG_KEY]) if CONFIG_KEY in metadata else {
        "latent_channels": int(weights["decoder.layers.0.weight"].shape[1])}
    model = build_tiny(config)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    missing = [key for key in missing if key.startswith("decoder.")]
    if missing or unexpected:
        raise ValueError(f"{path.name}: not a TAESD decoder of this shape (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]})")
    return model.float().eval().requires_grad_(False)


def decode_preview(decoder: Any, latent: torch.Tensor) -> torch.Tensor:
    """[C,h,w] model-unit latent -> [H,W,3] in 0..1."""
    with torch.no_grad():
        image = decoder.decode(latent.unsqueeze(0).to(torch.float32)).sample[0]
    return ((image + 1.0) / 2.0).clamp(0.0, 1.0).movedim(0, -1)


class TaesdDecoders:
    """Loaded decoders by file path, shared by every prompt of a server (a Services member, never module state)."""

    def __init__(self) -> None:
        self._loaded: dict[Path, Any] = {}

    def get(self, path: Path) -> Any:
        if path not in self._loaded:
            self._loaded[path] = load_decoder(path)
        return self._loaded[path]
