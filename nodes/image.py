"""Image nodes: load from input/, save to output/ or temp/, scale, invert, pad for outpainting.

IMAGE = [B, H, W, C] float 0..1; MASK = [B, H, W] float 0..1."""

from __future__ import annotations

import hashlib
import math
import random
import string
from pathlib import Path
from typing import Annotated, Any

import torch

from graphengine import Combo, Float, Int, Node, NodeOutput, Output, Socket, String

from . import costs
from .imageio import (annotated_path, check_relative_name, common_upscale, existing_image_file, frame_alpha,
                      frame_channel, frame_to_rgb, png_text_chunks, read_frames, save_images,
                      scaled_size, split_annotation)
from .option_sources import input_images
from .types import MAX_RESOLUTION, Image
from .work import map_batch

IMAGE_UPSCALE_METHODS = ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]
CROP_METHODS = ["disabled", "center"]
MASK_CHANNELS = ["alpha", "red", "green", "blue"]
NO_ALPHA_MASK_SIZE = 64
SAVE_COMPRESS_LEVEL = 4
PREVIEW_COMPRESS_LEVEL = 1


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_image_name(name: Any, services: Any = None) -> bool | str:
    """True when `name` is a safe image name (and, given the services, an existing file); else a message."""
    try:
        plain, _ = split_annotation(name)
        check_relative_name(plain, "image name")
        if services is not None:
            existing_image_file(services, name)
    except (ValueError, OSError) as exc:
        return f"Invalid image file: {exc}"
    return True


def image_fingerprint(name: Any, services: Any = None) -> Any:
    """sha256 of the file; NaN (always re-run) when the file cannot be located here."""
    if services is None:
        return float("nan")
    try:
        return file_sha256(annotated_path(services, name))
    except (ValueError, OSError):
        return float("nan")


def frames_to_batch(frames: list) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames → (IMAGE, MASK): frames sized unlike the first are skipped; mask = 1 − alpha (64×64 zeros if none)."""
    width, height = frames[0].size
    images, masks = [], []
    for frame in frames:
        if frame.size != (width, height):
            continue
        images.append(frame_to_rgb(frame))
        alpha = frame_alpha(frame)
        masks.append(1.0 - alpha if alpha is not None else None)
    if all(m is None for m in masks):
        blank = torch.zeros(NO_ALPHA_MASK_SIZE, NO_ALPHA_MASK_SIZE)
    else:  # frames without alpha in a batch with alpha: fully unmasked at the image size
        blank = torch.zeros(height, width)
    masks = [blank if m is None else m for m in masks]
    return torch.stack(images), torch.stack(masks)


class _ImageFileInput:
    """Validation and change detection shared by the nodes reading an `image` from the input folder."""

    @classmethod
    def validate_inputs(cls, inputs: dict[str, Any], services: Any = None) -> bool | str:
        return check_image_name(inputs.get("image"), services)

    @classmethod
    def fingerprint(cls, inputs: dict[str, Any], services: Any = None) -> Any:
        return image_fingerprint(inputs.get("image"), services)


class LoadImage(_ImageFileInput, Node):
    """Load an image from the input folder; its alpha channel becomes a mask (1 − alpha)."""

    DISPLAY_NAME = "Load Image"
    CATEGORY = "image"
    RETURNS = (Output("IMAGE"), Output("MASK"))
    CUSTOM_VALIDATED = frozenset({"image"})
    image: Annotated[str, Combo(input_images, extra={"image_upload": True})]

    @classmethod
    def estimate(cls, inputs, upstream, services=None):
        found = costs.image_file(annotated_path(services, inputs.get("image"))) if services else None
        if found is None:
            return None
        width, height, frames = found
        return costs.made(costs.image(frames, width, height), costs.mask(frames, width, height), batch_pixels=0)

    def execute(self, ctx) -> tuple:
        path = existing_image_file(ctx.services, self.image)
        return frames_to_batch(read_frames(path, label=self.image))


class LoadImageMask(_ImageFileInput, Node):
    """Load one channel of an image from the input folder as a mask (alpha is inverted: 1 − alpha)."""

    DISPLAY_NAME = "Load Image (as Mask)"
    CATEGORY = "mask"
    RETURNS = (Output("MASK"),)
    CUSTOM_VALIDATED = frozenset({"image"})
    image: Annotated[str, Combo(input_images, extra={"image_upload": True})]
    channel: Annotated[str, Combo(MASK_CHANNELS)]

    @classmethod
    def estimate(cls, inputs, upstream, services=None):
        found = costs.image_file(annotated_path(services, inputs.get("image"))) if services else None
        return costs.made(costs.mask(found[2], found[0], found[1]), batch_pixels=0) if found else None

    def execute(self, ctx) -> tuple:
        path = existing_image_file(ctx.services, self.image)
        frame = read_frames(path, label=self.image)[0]
        letter = self.channel[0].upper()
        values = frame_channel(frame, letter)
        return ((1.0 - values if letter == "A" else values).unsqueeze(0),)


def _metadata(ctx) -> dict[str, str]:
    if ctx.services.config.options.get("disable_metadata"):
        return {}
    return png_text_chunks(ctx.prompt or None, ctx.extra_pnginfo)


class SaveImage(Node):
    """Save images as PNG in the output folder, with the prompt and workflow embedded."""

    DISPLAY_NAME = "Save Image"
    CATEGORY = "image"
    OUTPUT_NODE = True
    RETURNS = ()
    HIDDEN = {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}
    images: Annotated[Any, Socket("IMAGE", tooltip="The images to save.")]
    filename_prefix: Annotated[str, String(tooltip="The prefix for the file to save. This may include formatting "
                                                   "information such as %date:yyyy-MM-dd% or %Empty Latent "
                                                   "Image.width% to include values from nodes.")] = "ComfyUI"

    def execute(self, ctx) -> NodeOutput:
        results = save_images(self.images, ctx.services.output_dir, self.filename_prefix, _metadata(ctx),
                              SAVE_COMPRESS_LEVEL, "output", interrupt=ctx.check_cancelled)
        return NodeOutput((), ui={"images": results})


class PreviewImage(Node):
    """Save images to the temp folder for display."""

    DISPLAY_NAME = "Preview Image"
    CATEGORY = "image"
    OUTPUT_NODE = True
    RETURNS = ()
    HIDDEN = {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}
    images: Image

    def execute(self, ctx) -> NodeOutput:
        return NodeOutput((), ui={"images": save_previews(self.images, ctx.services.temp_dir, _metadata(ctx),
                                                          interrupt=ctx.check_cancelled)})


def save_previews(images: torch.Tensor, temp_dir: Path, metadata: dict[str, str] | None = None,
                  interrupt: Any = None) -> list[dict[str, str]]:
    """Save a batch as previews in the temp folder, named like ComfyUI's (PreviewImage, packs' ui.PreviewImage)."""
    suffix = "".join(random.choice(string.ascii_lowercase) for _ in range(5))
    return save_images(images, temp_dir, f"ComfyUI_temp_{suffix}", metadata or {}, PREVIEW_COMPRESS_LEVEL, "temp",
                       interrupt=interrupt)


def _resize_images(ctx, images: torch.Tensor, width: int, height: int, method: str, crop: str) -> torch.Tensor:
    """Resize in chunks of the batch, checking for cancellation between them."""
    def resize(chunk: torch.Tensor) -> torch.Tensor:
        return common_upscale(chunk.movedim(-1, 1), width, height, method, crop).movedim(1, -1)
    return map_batch(resize, images, ctx.check_cancelled, images.shape[-1] * width * height)


class ImageScale(Node):
    """Resize images to width×height (0 on one side keeps the aspect ratio)."""

    DISPLAY_NAME = "Upscale Image"
    CATEGORY = "image/upscaling"
    RETURNS = (Output("IMAGE"),)
    image: Image
    upscale_method: Annotated[str, Combo(IMAGE_UPSCALE_METHODS)]
    width: Annotated[int, Int(min=0, max=MAX_RESOLUTION, step=1)] = 512
    height: Annotated[int, Int(min=0, max=MAX_RESOLUTION, step=1)] = 512
    crop: Annotated[str, Combo(CROP_METHODS)]

    @classmethod
    def estimate(cls, inputs, upstream, services=None):
        return costs.made(costs.resized(upstream.get("image"), inputs.get("width"), inputs.get("height")))

    def execute(self, ctx) -> tuple:
        if self.width == 0 and self.height == 0:
            return (self.image,)
        width, height = scaled_size(self.image.shape[2], self.image.shape[1], self.width, self.height, 1)
        return (_resize_images(ctx, self.image, width, height, self.upscale_method, self.crop),)


class ImageScaleBy(Node):
    """Resize images by a factor."""

    DISPLAY_NAME = "Upscale Image By"
    CATEGORY = "image/upscaling"
    RETURNS = (Output("IMAGE"),)
    image: Image
    upscale_method: Annotated[str, Combo(IMAGE_UPSCALE_METHODS)]
    scale_by: Annotated[float, Float(min=0.01, max=8.0, step=0.01)] = 1.0

    @classmethod
    def estimate(cls, inputs, upstream, services=None):
        return costs.made(costs.scaled(upstream.get("image"), inputs.get("scale_by", 1.0)))

    def execute(self, ctx) -> tuple:
        width = max(1, round(self.image.shape[2] * self.scale_by))
        height = max(1, round(self.image.shape[1] * self.scale_by))
        return (_resize_images(ctx, self.image, width, height, self.upscale_method, "disabled"),)


def total_pixels_size(width: int, height: int, megapixels: float, steps: int) -> tuple[int, int]:
    """The aspect-keeping size of about megapixels × 1024² pixels, each side rounded to a multiple of `steps`."""
    scale = math.sqrt(megapixels * 1024 * 1024 / (width * height))
    return (max(steps, round(width * scale / steps) * steps), max(steps, round(height * scale / steps) * steps))


class ImageScaleToTotalPixels(Node):
    """Resize images to a total pixel count (in megapixels), keeping the aspect ratio."""

    DISPLAY_NAME = "Scale Image to Total Pixels"
    CATEGORY = "image/upscaling"
    RETURNS = (Output("IMAGE"),)
    image: Image
    upscale_method: Annotated[str, Combo(IMAGE_UPSCALE_METHODS)]
    megapixels: Annotated[float, Float(min=0.01, max=16.0, step=0.01)] = 1.0
    resolution_steps: Annotated[int, Int(min=1, max=256, step=1, advanced=True,
                                         tooltip="Round each side to a multiple of this.")] = 1

    @classmethod
    def estimate(cls, inputs, upstream, services=None):
        pixels, known = upstream.get("image"), costs.constants(inputs, "megapixels", "resolution_steps")
        if pixels is None or known is None:
            return None
        return costs.made(costs.resized(pixels, *total_pixels_size(pixels["width"], pixels["height"], *known)))

    def execute(self, ctx) -> tuple:
        width, height = total_pixels_size(self.image.shape[2], self.image.shape[1], self.megapixels,
                                          self.resolution_steps)
        return (_resize_images(ctx, self.image, width, height, self.upscale_method, "disabled"),)


class ImageInvert(Node):
    """1 − image."""

    DISPLAY_NAME = "Invert Image"
    CATEGORY = "image"
    RETURNS = (Output("IMAGE"),)
    image: Image

    def execute(self, ctx) -> tuple:
        return (map_batch(lambda chunk: 1.0 - chunk, self.image, ctx.check_cancelled),)


def outpaint_feather(height: int, width: int, feathering: int, sides: tuple[bool, bool, bool, bool]) -> torch.Tensor:
    """Mask over the original area: ((F − d) / F)² within F pixels of a padded side, else 0.

    d is the distance to the nearest padded side: i from the top, H − i from the bottom, j / W − j left / right."""
    top, bottom, left, right = sides
    mask = torch.zeros(height, width)
    if feathering <= 0 or feathering * 2 >= height or feathering * 2 >= width:
        return mask
    rows = torch.arange(height, dtype=torch.float32).unsqueeze(1).expand(height, width)
    cols = torch.arange(width, dtype=torch.float32).unsqueeze(0).expand(height, width)
    distance = torch.full((height, width), math.inf)
    for padded, d in ((top, rows), (bottom, height - rows), (left, cols), (right, width - cols)):
        if padded:
            distance = torch.minimum(distance, d)
    ramp = ((feathering - distance) / feathering) ** 2
    return torch.where(distance < feathering, ramp, mask)


class ImagePadForOutpaint(Node):
    """Pad images with grey for outpainting; the mask is 1 over the new area, feathered into the original."""

    DISPLAY_NAME = "Pad Image for Outpainting"
    CATEGORY = "image"
    RETURNS = (Output("IMAGE"), Output("MASK"))
    image: Image
    left: Annotated[int, Int(min=0, max=MAX_RESOLUTION, step=8)] = 0
    top: Annotated[int, Int(min=0, max=MAX_RESOLUTION, step=8)] = 0
    right: Annotated[int, Int(min=0, max=MAX_RESOLUTION, step=8)] = 0
    bottom: Annotated[int, Int(min=0, max=MAX_RESOLUTION, step=8)] = 0
    feathering: Annotated[int, Int(min=0, max=MAX_RESOLUTION, step=1)] = 40

    @classmethod
    def estimate(cls, inputs, upstream, services=None):
        pixels, pad = upstream.get("image"), costs.constants(inputs, "left", "top", "right", "bottom")
        if pixels is None or pad is None:
            return None
        width, height = pixels["width"] + pad[0] + pad[2], pixels["height"] + pad[1] + pad[3]
        return costs.made(costs.resized(pixels, width, height), costs.mask(1, width, height))

    def execute(self, ctx) -> tuple:
        batch, height, width, channels = self.image.shape
        new_h, new_w = height + self.top + self.bottom, width + self.left + self.right
        padded = torch.full((batch, new_h, new_w, channels), 0.5, dtype=self.image.dtype)
        padded[:, self.top:self.top + height, self.left:self.left + width, :] = self.image
        mask = torch.ones(new_h, new_w)
        sides = (self.top != 0, self.bottom != 0, self.left != 0, self.right != 0)
        mask[self.top:self.top + height, self.left:self.left + width] = \
            outpaint_feather(height, width, self.feathering, sides)
        return (padded, mask.unsqueeze(0))


NODE_CLASSES = [LoadImage, LoadImageMask, SaveImage, PreviewImage, ImageScale, ImageScaleBy, ImageScaleToTotalPixels,
                ImageInvert, ImagePadForOutpaint]
