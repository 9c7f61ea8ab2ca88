"""Output-folder nodes beyond SaveImage: animated WEBP / PNG, mask previews, loading saved outputs, text previews.

Files are named and placed like SaveImage's (`<prefix>_<counter:05>_.<ext>`, subfolders only inside the output
folder, never overwriting); the UI entries are `{"filename", "subfolder", "type"}`."""

from __future__ import annotations

import json
import random
import string
from pathlib import Path
from typing import Annotated, Any

import torch
from PIL import Image as PILImage
from PIL import PngImagePlugin

from graphengine import Boolean, Combo, Float, Int, Node, NodeOutput, Socket, String
from graphengine.spec import ANY_TYPE

from . import costs
from .image import LoadImage, file_sha256, frames_to_batch
from .image import _metadata as metadata_of
from .imageio import (annotated_path, check_relative_name, read_frames, save_images, save_target,
                      split_annotation, to_uint8)
from .mask import as_mask_batch
from .option_sources import output_images
from .types import Image, Mask

WEBP_METHODS = {"default": 4, "fastest": 0, "slowest": 6}
MASK_PREVIEW_COMPRESS_LEVEL = 4
# WEBP EXIF tags holding the metadata: ImageDescription for the prompt, then Make, Model… downwards for the rest.
EXIF_PROMPT_TAG = 0x0110
EXIF_FIRST_EXTRA_TAG = 0x010F


def frame_images(images: torch.Tensor, interrupt) -> list[PILImage.Image]:
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"Expected an IMAGE batch [B, H, W, C], got shape {tuple(images.shape)}")
    frames = []
    for image in images:
        interrupt()
        pixels = to_uint8(image)
        frames.append(PILImage.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels))
    return frames


def webp_exif(frame: PILImage.Image, metadata: dict[str, str]) -> PILImage.Exif:
    exif = frame.getexif()
    tag = EXIF_FIRST_EXTRA_TAG
    for key, value in metadata.items():
        if key == "prompt":
            exif[EXIF_PROMPT_TAG] = f"prompt:{value}"
        else:
            exif[tag] = f"{key}:{value}"
            tag -= 1
    return exif


def apng_info(metadata: dict[str, str]) -> PngImagePlugin.PngInfo:
    """`comf` chunks after the image data: `key NUL JSON` (latin-1; JSON is ASCII already)."""
    info = PngImagePlugin.PngInfo()
    for key, value in metadata.items():
        info.add(b"comf", key.encode("latin-1", "replace") + b"\0" + value.encode("latin-1", "replace"),
                 after_idat=True)
    return info


def save_animation(frames: list[PILImage.Image], root: Path, prefix: str, extension: str,
                   **options: Any) -> dict[str, str]:
    """Write all frames as one animated file in the output folder; returns its UI entry."""
    target = save_target(root, prefix, width=frames[0].width, height=frames[0].height)
    base = target.filename.replace("%batch_num%", "0")
    counter = target.counter
    while True:
        name = f"{base}_{counter:05}_.{extension}"
        try:
            with open(target.folder / name, "xb") as handle:
                frames[0].save(handle, format=extension.upper(), save_all=True, append_images=frames[1:],
                               **options)
            break
        except FileExistsError:  # another writer took this counter
            counter += 1
    return {"filename": name, "subfolder": target.subfolder, "type": "output"}


def frame_duration(fps: float) -> int:
    return int(1000.0 / fps)


class AnimatedSave(Node):
    """Inputs shared by the animated saves (not registered itself)."""

    CATEGORY = "image/animation"
    OUTPUT_NODE = True
    RETURNS = ()
    HIDDEN = {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}
    images: Image
    filename_prefix: Annotated[str, String()] = "ComfyUI"
    fps: Annotated[float, Float(min=0.01, max=1000.0, step=0.01)] = 6.0

    def save(self, ctx, extension: str, **options: Any) -> NodeOutput:
        frames = frame_images(self.images, ctx.check_cancelled)
        metadata = metadata_of(ctx)
        if extension == "webp":
            options["exif"] = webp_exif(frames[0], metadata)
        else:
            options["pnginfo"] = apng_info(metadata)
        entry = save_animation(frames, ctx.services.output_dir, self.filename_prefix, extension,
                               duration=frame_duration(self.fps), **options)
        return NodeOutput((), ui={"images": [entry], "animated": [True]})


class SaveAnimatedWEBP(AnimatedSave):
    """Save the batch as one animated WEBP in the output folder."""

    lossless: Annotated[bool, Boolean()] = True
    quality: Annotated[int, Int(min=0, max=100)] = 80
    method: Annotated[str, Combo(list(WEBP_METHODS))]

    def execute(self, ctx) -> NodeOutput:
        return self.save(ctx, "webp", lossless=self.lossless, quality=self.quality, method=WEBP_METHODS[self.method])


class SaveAnimatedPNG(AnimatedSave):
    """Save the batch as one animated PNG (APNG) in the output folder."""

    compress_level: Annotated[int, Int(min=0, max=9)] = 4

    def execute(self, ctx) -> NodeOutput:
        return self.save(ctx, "png", compress_level=self.compress_level)


class MaskPreview(Node):
    """Preview masks as grey images (saved to the temp folder)."""

    CATEGORY = "mask"
    OUTPUT_NODE = True
    RETURNS = ()
    HIDDEN = {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}
    mask: Mask

    def execute(self, ctx) -> NodeOutput:
        masks = as_mask_batch(self.mask)
        grey = masks.unsqueeze(-1).expand(-1, -1, -1, 3)
        suffix = "".join(random.choice(string.ascii_lowercase) for _ in range(5))
        results = save_images(grey, ctx.services.temp_dir, f"ComfyUI_temp_{suffix}", metadata_of(ctx),
                              MASK_PREVIEW_COMPRESS_LEVEL, "temp", interrupt=ctx.check_cancelled)
        return NodeOutput((), ui={"images": results})


def output_image_file(services: Any, name: Any) -> Path:
    """The file a LoadImageOutput name points at: the output folder unless annotated otherwise."""
    path = annotated_path(services, name, default_kind="output")
    if not path.is_file():
        raise FileNotFoundError(f"Image file not found: {name!r}")
    return path


class LoadImageOutput(Node):
    """Load an image from the output folder (names like "x.png [output]"); its alpha becomes a mask."""

    DISPLAY_NAME = "Load Image (from Outputs)"
    CATEGORY = "image"
    EXPERIMENTAL = True
    RETURNS = LoadImage.RETURNS
    CUSTOM_VALIDATED = frozenset({"image"})
    image: Annotated[str, Combo(output_images, extra={
        "image_upload": True, "image_folder": "output",
        "remote": {"route": "/internal/files/output", "refresh_button": True, "control_after_refresh": "first"}})]

    @classmethod
    def validate_inputs(cls, inputs: dict[str, Any], services: Any = None) -> bool | str:
        name = inputs.get("image")
        try:
            check_relative_name(split_annotation(name)[0], "image name")
            if services is not None:
                output_image_file(services, name)
        except (ValueError, OSError) as exc:
            return f"Invalid image file: {exc}"
        return True

    @classmethod
    def fingerprint(cls, inputs: dict[str, Any], services: Any = None) -> Any:
        try:
            return file_sha256(output_image_file(services, inputs.get("image")))
        except (ValueError, OSError, AttributeError):
            return float("nan")

    @classmethod
    def estimate(cls, inputs, upstream, services=None):
        try:
            found = costs.image_file(output_image_file(services, inputs.get("image"))) if services else None
        except (ValueError, OSError):
            found = None
        if found is None:
            return None
        width, height, frames = found
        return costs.made(costs.image(frames, width, height), costs.mask(frames, width, height), batch_pixels=0)

    def execute(self, ctx) -> tuple:
        return frames_to_batch(read_frames(output_image_file(ctx.services, self.image), label=self.image))


def preview_text(value: Any) -> str:
    """A string as is, a number as str, anything else as JSON when it can be, else its str()."""
    if value is None:
        return "None"
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, int, float)):
        return str(value)
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        try:
            return str(value)
        except Exception:  # noqa: BLE001 - a value whose __str__ fails still gets a preview
            return "source exists, but could not be serialized."


class PreviewAny(Node):
    """Show any value as text in the UI."""

    DISPLAY_NAME = "Preview Any"
    CATEGORY = "utils"
    OUTPUT_NODE = True
    RETURNS = ()
    source: Annotated[Any, Socket(ANY_TYPE)]

    def execute(self, ctx) -> NodeOutput:
        return NodeOutput((), ui={"text": [preview_text(self.source)]})


NODE_CLASSES = [SaveAnimatedWEBP, SaveAnimatedPNG, MaskPreview, LoadImageOutput, PreviewAny]
