"""Small live previews of the x0 prediction during sampling.

SD1.x/SD2.x and SDXL latents map to RGB almost linearly; the published per-channel factors below turn a latent
(model units, i.e. VAE latent × scale factor) into an approximate image at latent resolution. Other latent spaces
(the "custom" family) are decoded with the model's own VAE when one is attached to the MODEL handle.

Methods are ComfyUI's: "none", "latent2rgb", "taesd" (a TAESD decoder from models/vae_approx/, see nodes.taesd) and
"auto" (TAESD when a decoder file fits the model's latent space, else latent2rgb).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from PIL import Image as PILImage

from .samplers.latent_format import latent_from_model

# (factors [4 latent channels × RGB], bias RGB) per latent space.
LATENT_RGB: dict[str, tuple[tuple[tuple[float, float, float], ...], tuple[float, float, float]]] = {
    "sd1": (
        ((0.3512, 0.2297, 0.3227), (0.3250, 0.4974, 0.2350), (-0.2829, 0.1762, 0.2721), (-0.2120, -0.2616, -0.7177)),
        (0.0, 0.0, 0.0),
    ),
    "sdxl": (
        ((0.3651, 0.4232, 0.4341), (-0.2533, -0.0042, 0.1068), (0.1076, 0.1111, -0.0362), (-0.3165, -0.2492, -0.2188)),
        (0.1084, -0.0175, -0.0011),
    ),
    "pixel": (((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)), (0.0, 0.0, 0.0)),  # pixel-space models: the image
}
PREVIEW_MAX_SIDE = 512
log = logging.getLogger("graphengine.previews")
# Decoding a custom-family preview with its VAE only when the latent is this small (latent pixels per image).
CHEAP_DECODE_AREA = 64 * 64


def effective_preview_method(services: Any, extra_data: dict | None) -> str:
    """The prompt's `extra_data.preview_method` (v0.33) overrides the server setting unless it is "default"."""
    method = (extra_data or {}).get("preview_method")
    if not method or method == "default":
        method = getattr(services, "preview_method", "none") or "none"
    return str(method)


def latent_to_rgb(latent: torch.Tensor, latent_space: str) -> torch.Tensor | None:
    """[C,h,w] model-unit latent -> [h,w,3] in 0..1, or None when the latent space has no linear factors."""
    table = LATENT_RGB.get(latent_space)
    if table is None or latent.shape[0] != len(table[0]):
        return None
    factors = torch.tensor(table[0], dtype=torch.float32)
    bias = torch.tensor(table[1], dtype=torch.float32)
    rgb = latent.to(torch.float32).movedim(0, -1) @ factors + bias
    return ((rgb + 1.0) / 2.0).clamp(0.0, 1.0)


def to_pil(rgb: torch.Tensor) -> PILImage.Image:
    """[h,w,3] 0..1 -> PIL image, shrunk to fit PREVIEW_MAX_SIDE."""
    array = (rgb.detach().cpu() * 255.0).round().to(torch.uint8).numpy()
    image = PILImage.fromarray(array)
    if max(image.size) > PREVIEW_MAX_SIDE:
        image.thumbnail((PREVIEW_MAX_SIDE, PREVIEW_MAX_SIDE), PILImage.BILINEAR)
    return image


def preview_image(model: Any, x0: torch.Tensor, taesd: Any = None) -> PILImage.Image | None:
    """Preview of the first image of an x0 prediction [B,C,h,w] (model units), decoded by `taesd` (an
    AutoencoderTiny) when given; None when there is no cheap way."""
    first = x0[0].detach().to("cpu", torch.float32)
    if taesd is not None:
        from .taesd import decode_preview
        return to_pil(decode_preview(taesd, first))
    rgb = latent_to_rgb(first, getattr(model, "latent_space", "sd1"))
    if rgb is None:
        vae = getattr(model, "preview_vae", None)
        if vae is None or first.shape[-1] * first.shape[-2] > CHEAP_DECODE_AREA:
            return None
        rgb = vae.decode(latent_from_model(model, first.unsqueeze(0)))[0]
    return to_pil(rgb)


def taesd_for(services: Any, model: Any, method: str) -> Any:
    """The TAESD decoder the method asks for (None for latent2rgb); "taesd" with no file for the model's latent space
    says so in the log and falls back to latent2rgb (ComfyUI does the same)."""
    if method not in ("auto", "taesd") or services is None:
        return None
    from .taesd import DECODER_STEMS, find_decoder

    latent_space = getattr(model, "latent_space", "sd1")
    path = find_decoder([str(p) for p in services.folders.paths("vae_approx")], latent_space)
    if path is None:
        if method == "taesd":
            log.warning("preview method taesd: no %s.safetensors in models/vae_approx/ for this model (latent "
                        "space %r); previews use latent2rgb", DECODER_STEMS.get(latent_space, "TAESD decoder"),
                        latent_space)
        return None
    try:
        return services.taesd.get(path)
    except Exception as exc:  # noqa: BLE001 - a broken preview file must never fail the prompt
        log.warning("TAESD preview decoder %s not usable (%s); previews use latent2rgb", path.name, exc)
        return None


def make_step_callback(ctx: Any, model: Any, method: str):
    """A ksample callback(step, total, x0, x) reporting progress (and a preview unless the method is "none")."""
    taesd = taesd_for(getattr(ctx, "services", None), model, method)

    def on_step(step: int, total: int, x0: torch.Tensor, _x: torch.Tensor) -> None:
        preview = preview_image(model, x0, taesd) if method != "none" else None
        ctx.progress(step + 1, total, preview=preview)

    return on_step
