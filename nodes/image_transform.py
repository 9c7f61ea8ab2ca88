"""Image geometry nodes: crop, flip, rotate, stitch, resize-and-pad, size, and solid-colour images.

IMAGE = [B, H, W, C] float 0..1."""

from __future__ import annotations

from typing import Annotated

import torch

from graphengine import Boolean, Combo, Int, Node, Output

from . import costs
from .imageio import common_upscale
from .types import MAX_RESOLUTION, Image, OptionalImage
from .work import map_batch

FLIP_METHODS = ["x-axis: vertically", "y-axis: horizontally"]
ROTATIONS = ["none", "90 degrees", "180 degrees", "270 degrees"]
STITCH_DIRECTIONS = ["right", "down", "left", "up"]
SPACING_COLORS = {"white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0), "red": (1.0, 0.0, 0.0),
                  "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0)}
PAD_COLORS = {"white": 1.0, "black": 0.0}
PAD_INTERPOLATIONS = ["area", "bicubic", "nearest-exact", "bilinear", "lanczos"]


def rgb_of(color: int) -> tuple[float, float, float]:
    """0xRRGGBB → (r, g, b) in 0..1."""
    return ((color >> 16) & 0xFF) / 0xFF, ((color >> 8) & 0xFF) / 0xFF, (color & 0xFF) / 0xFF


def crop_box(height: int, width: int, x: int, y: int, crop_w: int, crop_h: int) -> tuple[slice, slice]:
    """Rows and columns of ImageCrop: the corner is clamped inside the image, the size to what is left of it."""
    x, y = min(x, width - 1), min(y, height - 1)
    return slice(y, y + crop_h), slice(x, x + crop_w)


def rotate_quarters(images: torch.Tensor, rotation: str) -> torch.Tensor:
    """Rotate clockwise by the named multiple of 90 degrees."""
    turns = ROTATIONS.index(rotation)
    return torch.rot90(images, k=turns, dims=[2, 1]) if turns else images


def match_channels(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Give the image with fewer channels an opaque alpha channel when the other has one (3 vs 4)."""
    def with_alpha(image: torch.Tensor, channels: int) -> torch.Tensor:
        if image.shape[-1] >= channels:
            return image
        return torch.cat([image, image.new_ones(*image.shape[:-1], channels - image.shape[-1])], -1)
    channels = max(a.shape[-1], b.shape[-1])
    return with_alpha(a, channels), with_alpha(b, channels)


def pad_batch(images: torch.Tensor, batch: int) -> torch.Tensor:
    """Repeat the last image until the batch has `batch` images."""
    missing = batch - images.shape[0]
    return torch.cat([images, images[-1:].expand(missing, -1, -1, -1)]) if missing > 0 else images


def center_pad(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pad [B, H, W, C] with zeros to height×width, the image centred."""
    top, left = (height - image.shape[1]) // 2, (width - image.shape[2]) // 2
    out = image.new_zeros(image.shape[0], height, width, image.shape[3])
    out[:, top:top + image.shape[1], left:left + image.shape[2]] = image
    return out


def stitch_size(first: tuple[int, int], second: tuple[int, int], direction: str) -> tuple[int, int]:
    """(height, width) image2 takes when matched to image1: same height beside it, same width above or below."""
    (h1, w1), (h2, w2) = first, second
    if direction in ("left", "right"):
        return h1, max(1, int(h1 * w2 / h2))
    return max(1, int(w1 * h2 / w2)), w1


def stitch(image1: torch.Tensor, image2: torch.Tensor, direction: str, match_image_size: bool, spacing: int,
           spacing_color: str) -> torch.Tensor:
    """image2 beside image1 (right/left) or below/above it (down/up), with a coloured gap of `spacing` pixels."""
    batch = max(image1.shape[0], image2.shape[0])
    image1, image2 = pad_batch(image1, batch), pad_batch(image2, batch)
    image1, image2 = match_channels(image1, image2)
    horizontal = direction in ("left", "right")
    if match_image_size:
        height, width = stitch_size(image1.shape[1:3], image2.shape[1:3], direction)
        image2 = common_upscale(image2.movedim(-1, 1), width, height, "lanczos", "disabled").movedim(1, -1)
    axis = 2 if horizontal else 1
    across = 1 if horizontal else 2  # the side both images must share
    size = max(image1.shape[across], image2.shape[across])
    if image1.shape[across] != size or image2.shape[across] != size:
        image1, image2 = (center_pad(im, size if horizontal else im.shape[1], im.shape[2] if horizontal else size)
                          for im in (image1, image2))
    parts = [image1, image2] if direction in ("right", "down") else [image2, image1]
    if spacing > 0:
        gap_shape = [batch, size, spacing] if horizontal else [batch, spacing, size]
        color = torch.tensor(SPACING_COLORS[spacing_color] + (1.0,) * (image1.shape[-1] - 3))[:image1.shape[-1]]
        parts.insert(1, color.to(image1).expand(*gap_shape, -1))
    return torch.cat(parts, dim=axis)


def resize_and_pad(images: torch.Tensor, width: int, height: int, fill: float, method: str) -> torch.Tensor:
    """Fit inside width×height keeping the aspect ratio (sizes truncated), centred on a `fill` background."""
    old_h, old_w = images.shape[1:3]
    scale = min(width / old_w, height / old_h)
    new_w, new_h = max(1, int(old_w * scale)), max(1, int(old_h * scale))
    resized = common_upscale(images.movedim(-1, 1), new_w, new_h, method, "disabled").movedim(1, -1)
    out = images.new_full((images.shape[0], height, width, images.shape[3]), fill)
    top, left = (height - new_h) // 2, (width - new_w) // 2
    out[:, top:top + new_h, left:left + new_w] = resized
    return out


class ImageCrop(Node):
    """Crop a width×height region at (x, y); the corner is kept inside the image."""

    DISPLAY_NAME = "Image Crop"
    CATEGORY = "image/transform"
    RETURNS = (Output("IMAGE"),)
    image: Image
    width: Annotated[int, Int(min=1, max=MAX_RESOLUTION, step=1)] = 512
    height: Annotated[int, Int(min=1, max=MAX_RESOLUTION, step=1)] = 512
    x: Annotated[int, Int(min=0, max=MAX_RESOLUTION, step=1)] = 0
    y: Annotated[int, Int(min=0, max=MAX_RESOLUTION, step=1)] = 0

    @classmethod
    def estimate(cls, inputs, upstream, services=None):
        pixels, box = upstream.get("image"), costs.constants(inputs, "width", "height", "x", "y")
        if pixels is None or box is None:
            return None
        rows, cols = crop_box(pixels["height"], pixels["width"], box[2], box[3], box[0], box[1])
        width = len(range(pixels["width"])[cols])
        height = len(range(pixels["height"])[rows])
        return costs.made(costs.resized(pixels, width, height))

    def execute(self, ctx) -> tuple:
        rows, cols = crop_box(self.image.shape[1], self.image.shape[2], self.x, self.y, self.width, self.height)
        return (self.image[:, rows, cols, :].clone(),)


class ImageFlip(Node):
    """Mirror images top to bottom (x-axis) or left to right (y-axis)."""

    DISPLAY_NAME = "Image Flip"
    CATEGORY = "image/transform"
    RETURNS = (Output("IMAGE"),)
    image: Image
    flip_method: Annotated[str, Combo(FLIP_METHODS)]

    def execute(self, ctx) -> tuple:
        dim = 1 if self.flip_method == FLIP_METHODS[0] else 2
        return (map_batch(lambda chunk: torch.flip(chunk, dims=[dim]), self.image, ctx.check_cancelled),)


class ImageRotate(Node):
    """Rotate images clockwise by a multiple of 90 degrees."""

    DISPLAY_NAME = "Image Rotate"
    CATEGORY = "image/transform"
    RETURNS = (Output("IMAGE"),)
    image: Image
    rotation: Annotated[str, Combo(ROTATIONS)]

    @classmethod
    def estimate(cls, inputs, upstream, services=None):
        pixels = upstream.get("image")
        if pixels is None or inputs.get("rotation") not in ("90 degrees", "270 degrees"):
            return None
        return costs.made(costs.resized(pixels, pixels["height"], pixels["width"]))

    def execute(self, ctx) -> tuple:
        return (map_batch(lambda chunk: rotate_quarters(chunk, self.rotation), self.image, ctx.check_cancelled),)


class ImageStitch(Node):
    """Put image2 to the right of, below, left of or above image1, optionally matched in size and spaced."""

    DISPLAY_NAME = "Image Stitch"
    CATEGORY = "image/transform"
    RETURNS = (Output("IMAGE"),)
    image1: Image
    direction: Annotated[str, Combo(STITCH_DIRECTIONS)] = "right"
    match_image_size: Annotated[bool, Boolean()] = True
    spacing_width: Annotated[int, Int(min=0, max=1024, step=2)] = 0
    spacing_color: Annotated[str, Combo(list(SPACING_COLORS))] = "white"
    image2: OptionalImage = None

    @classmethod
    def estimate(cls, inputs, upstream, services=None):
        first, second = upstream.get("image1"), upstream.get("image2")
        direction, spacing = inputs.get("direction", "right"), inputs.get("spacing_width", 0)
        if first is None or second is None or not isinstance(spacing, int):
            return None
        h2, w2 = second["height"], second["width"]
        if inputs.get("match_image_size", True):
            h2, w2 = stitch_size((first["height"], first["width"]), (h2, w2), direction)
        if direction in ("left", "right"):
            width, height = first["width"] + spacing + w2, max(first["height"], h2)
        else:
            width, height = max(first["width"], w2), first["height"] + spacing + h2
        batch = max(first["batch"], second["batch"])
        channels = max(first["channels"], second["channels"])
        return costs.made(costs.image(batch, width, height, channels))

    def execute(self, ctx) -> tuple:
        if self.image2 is None:
            return (self.image1,)
        ctx.check_cancelled()
        return (stitch(self.image1, self.image2, self.direction, self.match_image_size, self.spacing_width,
                       self.spacing_color),)


class ResizeAndPadImage(Node):
    """Resize images to fit inside the target size, keeping the aspect ratio, and pad the rest with a colour."""

    CATEGORY = "image/transform"
    RETURNS = (Output("IMAGE"),)
    image: Image
    target_width: Annotated[int, Int(min=1, max=MAX_RESOLUTION, step=1)] = 512
    target_height: Annotated[int, Int(min=1, max=MAX_RESOLUTION, step=1)] = 512
    padding_color: Annotated[str, Combo(list(PAD_COLORS))]
    interpolation: Annotated[str, Combo(PAD_INTERPOLATIONS)]

    @classmethod
    def estimate(cls, inputs, upstream, services=None):
        size = costs.constants(inputs, "target_width", "target_height")
        return costs.made(costs.resized(upstream.get("image"), *size)) if size else None

    def execute(self, ctx) -> tuple:
        def fit(chunk: torch.Tensor) -> torch.Tensor:
            return resize_and_pad(chunk, self.target_width, self.target_height, PAD_COLORS[self.padding_color],
                                  self.interpolation)
        out_elements = self.image.shape[-1] * self.target_width * self.target_height
        return (map_batch(fit, self.image, ctx.check_cancelled, out_elements),)


class GetImageSize(Node):
    """The width, height and batch size of an image batch."""

    DISPLAY_NAME = "Get Image Size"
    CATEGORY = "image"
    RETURNS = (Output("INT", "width"), Output("INT", "height"), Output("INT", "batch_size"))
    image: Image

    def execute(self, ctx) -> tuple:
        return (int(self.image.shape[2]), int(self.image.shape[1]), int(self.image.shape[0]))


class EmptyImage(Node):
    """A batch of images of one colour (0xRRGGBB)."""

    CATEGORY = "image"
    RETURNS = (Output("IMAGE"),)
    width: Annotated[int, Int(min=1, max=MAX_RESOLUTION, step=1)] = 512
    height: Annotated[int, Int(min=1, max=MAX_RESOLUTION, step=1)] = 512
    batch_size: Annotated[int, Int(min=1, max=4096)] = 1
    color: Annotated[int, Int(min=0, max=0xFFFFFF, step=1, display="color")] = 0

    @classmethod
    def estimate(cls, inputs, upstream, services=None):
        size = costs.constants(inputs, "batch_size", "width", "height")
        return costs.made(costs.image(*size)) if size else None

    def execute(self, ctx) -> tuple:
        color = torch.tensor(rgb_of(self.color), dtype=torch.float32)
        return (color.expand(self.batch_size, self.height, self.width, 3).clone(),)


NODE_CLASSES = [ImageCrop, ImageFlip, ImageRotate, ImageStitch, ResizeAndPadImage, GetImageSize, EmptyImage]
