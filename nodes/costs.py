"""Cost estimates of the Stable Diffusion nodes for admission control: tensor extents, bytes and pixel-steps.

An extent is a dict {"type", "batch", "width", "height", "channels", "bytes"} with width/height in pixels (a LATENT's
too). Activation sizes are rough upper figures for SD-sized models in fp32, so a prompt is refused before it could
grow the process past its memory budget; they are not a model of any one network."""

from __future__ import annotations

import os
from typing import Any

from graphengine import Estimate

FLOAT_BYTES = 4
LATENT_SCALE = 8
LATENT_CHANNELS = 4
# SD's VAE runs its last blocks with 128 channels at full resolution: about three such fp32 maps are alive at once.
VAE_BYTES_PER_PIXEL = 3 * 128 * FLOAT_BYTES
# The UNet's first level: ~8 live 320-channel fp32 maps at 1/8 resolution, twice for classifier-free guidance.
UNET_BYTES_PER_PIXEL = 2 * 8 * 320 * FLOAT_BYTES // LATENT_SCALE**2
# Text conditioning: one fp32 vector per token of the widest SD text embedding (SDXL: 2048), counted per character.
CONDITIONING_BYTES_PER_CHAR = 2048 * FLOAT_BYTES


def extent(kind: str, batch: int, width: int, height: int, channels: int) -> dict[str, Any]:
    elements = batch * channels * (max(1, height // LATENT_SCALE) * max(1, width // LATENT_SCALE)
                                   if kind == "LATENT" else height * width)
    return {"type": kind, "batch": batch, "width": width, "height": height, "channels": channels,
            "bytes": elements * FLOAT_BYTES}


def latent(batch: int, width: int, height: int, channels: int = LATENT_CHANNELS) -> dict[str, Any]:
    return extent("LATENT", batch, width, height, channels)


def image(batch: int, width: int, height: int, channels: int = 3) -> dict[str, Any]:
    return extent("IMAGE", batch, width, height, channels)


def mask(batch: int, width: int, height: int) -> dict[str, Any]:
    return extent("MASK", batch, width, height, 1)


def pixels(ext: dict[str, Any]) -> int:
    return ext["batch"] * ext["width"] * ext["height"]


def constants(inputs: dict[str, Any], *names: str) -> list[Any] | None:
    """The named constant inputs, or None when one is linked (unknown before running)."""
    values = [inputs.get(n) for n in names]
    return None if any(v is None for v in values) else values


def made(*extents: dict[str, Any] | None, peak: int = 0, work: float = 0, **quantities: float) -> Estimate:
    """A node that creates its outputs: their bytes are held, the largest one's pixels count as batch_pixels."""
    known = [e for e in extents if e]
    quantities.setdefault("batch_pixels", max((pixels(e) for e in known), default=0))
    return Estimate(output_bytes=sum(e["bytes"] for e in known), peak_bytes=peak, work=work, quantities=quantities,
                    extents=extents)


def resized(ext: dict[str, Any] | None, width: float | None = None, height: float | None = None,
            batch: int | None = None) -> dict[str, Any] | None:
    """`ext` at a new size (a side of 0 keeps the aspect ratio; both 0 keep the size) or batch."""
    if ext is None:
        return None
    w, h = int(width or 0), int(height or 0)
    if w == 0 and h == 0:
        w, h = ext["width"], ext["height"]
    elif w == 0:
        w = max(1, round(ext["width"] * h / max(1, ext["height"])))
    elif h == 0:
        h = max(1, round(ext["height"] * w / max(1, ext["width"])))
    return extent(ext["type"], batch if batch is not None else ext["batch"], w, h, ext["channels"])


def scaled(ext: dict[str, Any] | None, factor: float) -> dict[str, Any] | None:
    if ext is None:
        return None
    return resized(ext, max(1, round(ext["width"] * factor)), max(1, round(ext["height"] * factor)))


def sampling(latent_ext: dict[str, Any] | None, steps: int, outputs: int = 1) -> Estimate | None:
    """A sampler: `steps` UNet passes over the latent (pixel-steps), each of its `outputs` latents the size of its
    input."""
    if latent_ext is None:
        return None
    step_pixels = max(0, steps) * pixels(latent_ext)
    return made(*[latent_ext] * outputs, peak=pixels(latent_ext) * UNET_BYTES_PER_PIXEL, work=step_pixels,
                step_pixels=step_pixels)


def sigmas(count: Any, outputs: int = 1) -> Estimate | None:
    """A SIGMAS vector of `count` noise levels (None when the count is linked, so unknown)."""
    if not isinstance(count, int):
        return None
    ext = {"type": "SIGMAS", "count": max(0, count), "bytes": max(0, count) * FLOAT_BYTES}
    return Estimate(output_bytes=ext["bytes"] * outputs, extents=(ext,) * outputs)


def vae_decode(latent_ext: dict[str, Any] | None, tile: int | None = None) -> Estimate | None:
    if latent_ext is None:
        return None
    out = image(latent_ext["batch"], latent_ext["width"], latent_ext["height"])
    at_once = pixels(out) if tile is None else latent_ext["batch"] * min(tile * tile, pixels(out))
    return made(out, peak=at_once * VAE_BYTES_PER_PIXEL)


def vae_encode(image_ext: dict[str, Any] | None, tile: int | None = None,
               extra: tuple[dict[str, Any] | None, ...] = ()) -> Estimate | None:
    """Pixels → latent (placed after the `extra` outputs, e.g. InpaintModelConditioning's conditionings)."""
    if image_ext is None:
        return None
    out = latent(image_ext["batch"], image_ext["width"], image_ext["height"])
    at_once = pixels(image_ext) if tile is None else image_ext["batch"] * min(tile * tile, pixels(image_ext))
    return made(*extra, out, peak=at_once * VAE_BYTES_PER_PIXEL)


def text_encode(*texts: str | None) -> Estimate:
    """Conditioning grows with the prompt: a vector per token, and a token is at most one character."""
    lengths = [len(t) for t in texts if isinstance(t, str)]
    return Estimate(output_bytes=sum(lengths) * CONDITIONING_BYTES_PER_CHAR,
                    quantities={"text_length": max(lengths, default=0)}, extents=(None,))


def model_file(services: Any, folder: str, name: Any, outputs: int) -> Estimate | None:
    """A loader holds about its file's size in memory (stat only)."""
    try:
        size = os.stat(services.folders.resolve(folder, name)).st_size
    except (AttributeError, OSError, ValueError, TypeError):
        return None
    return Estimate(output_bytes=size, extents=(None,) * outputs)


def image_file(path: Any) -> tuple[int, int, int] | None:
    """(width, height, frames) from an image file's header, without decoding it."""
    from PIL import Image

    try:
        with Image.open(path) as picture:
            return picture.width, picture.height, int(getattr(picture, "n_frames", 1) or 1)
    except (OSError, ValueError, TypeError, Image.DecompressionBombError):
        return None
