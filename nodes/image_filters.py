"""Image post-processing nodes: blend, blur, sharpen, quantize, add noise, morphology, YUV conversion.

IMAGE = [B, H, W, C] float 0..1. Filters come from kornia (imported on first use: it is slow to import)."""

from __future__ import annotations

from typing import Annotated

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image as PILImage

from graphengine import Combo, Float, Int, Node, Output

from .imageio import common_upscale, to_uint8
from .types import Image
from .work import map_batch

BLEND_MODES = ["normal", "multiply", "screen", "overlay", "soft_light", "difference"]
DITHERS = ["none", "floyd-steinberg", "bayer-2", "bayer-4", "bayer-8", "bayer-16"]
MORPHOLOGY_OPERATIONS = ["erode", "dilate", "open", "close", "gradient", "bottom_hat", "top_hat"]


# -- blend ---------------------------------------------------------------------------------------------------------

def soft_light_curve(x: torch.Tensor) -> torch.Tensor:
    """The W3C soft-light helper D(x): a cubic below 1/4, sqrt above."""
    return torch.where(x <= 0.25, ((16 * x - 12) * x + 4) * x, torch.sqrt(x))


def blend(base: torch.Tensor, layer: torch.Tensor, mode: str) -> torch.Tensor:
    """ComfyUI's blend modes of `layer` over `base` (difference is base − layer, clamped later)."""
    if mode == "normal":
        return layer
    if mode == "multiply":
        return base * layer
    if mode == "screen":
        return 1 - (1 - base) * (1 - layer)
    if mode == "overlay":
        return torch.where(base <= 0.5, 2 * base * layer, 1 - 2 * (1 - base) * (1 - layer))
    if mode == "soft_light":
        return torch.where(layer <= 0.5, base - (1 - 2 * layer) * base * (1 - base),
                           base + (2 * layer - 1) * (soft_light_curve(base) - base))
    if mode == "difference":
        return base - layer
    raise ValueError(f"Unknown blend_mode {mode!r}")


def blend_images(image1: torch.Tensor, image2: torch.Tensor, factor: float, mode: str) -> torch.Tensor:
    """image1 mixed with blend(image1, image2) by `factor`; image2 is resized (bicubic, centre crop) to image1."""
    image2 = image2.to(image1)
    if image1.shape[1:] != image2.shape[1:]:
        image2 = common_upscale(image2.movedim(-1, 1), image1.shape[2], image1.shape[1], "bicubic",
                                "center").movedim(1, -1)
    mixed = image1 * (1 - factor) + blend(image1, image2, mode) * factor
    return mixed.clamp(0.0, 1.0)


# -- blur and sharpen ----------------------------------------------------------------------------------------------

def gaussian_blur(images: torch.Tensor, radius: int, sigma: float) -> torch.Tensor:
    """Gaussian blur of [B, H, W, C] over a (2r+1)² window, reflect-padded.

    ComfyUI's sigma is in units of the radius (its kernel spans −1..1), so the pixel sigma is sigma × radius."""
    from kornia.filters import gaussian_blur2d

    size = 2 * radius + 1
    pixel_sigma = sigma * radius
    out = gaussian_blur2d(images.movedim(-1, 1), (size, size), (pixel_sigma, pixel_sigma), border_type="reflect")
    return out.movedim(1, -1)


def sharpen(images: torch.Tensor, radius: int, sigma: float, alpha: float) -> torch.Tensor:
    """Unsharp mask: x + 10·alpha·(x − blur(x)), clamped to 0..1."""
    blurred = gaussian_blur(images, radius, sigma)
    return (images + 10 * alpha * (images - blurred)).clamp(0.0, 1.0)


# -- quantize ------------------------------------------------------------------------------------------------------

def bayer_thresholds(order: int) -> np.ndarray:
    """order×order ordered-dither thresholds, centred on 0 in (−0.5, 0.5) (order a power of two)."""
    matrix = np.zeros((1, 1))
    while matrix.shape[0] < order:
        matrix = np.block([[4 * matrix, 4 * matrix + 2], [4 * matrix + 3, 4 * matrix + 1]])
    return (matrix + 0.5) / matrix.size - 0.5


def quantize_image(image: torch.Tensor, colors: int, dither: str) -> torch.Tensor:
    """One [H, W, 3] image reduced to a palette of `colors` (Pillow's median cut), with the named dithering."""
    pil = PILImage.fromarray(to_uint8(image[..., :3]), mode="RGB")
    palette = pil.quantize(colors=colors)
    if dither.startswith("bayer-"):
        order = int(dither.split("-")[1])
        spread = 2 * 256 / (len(palette.getpalette()) // 3)
        thresholds = bayer_thresholds(order) * spread
        pixels = np.asarray(pil, dtype=np.float32)
        tiles = np.tile(thresholds, (-(-pixels.shape[0] // order), -(-pixels.shape[1] // order)))
        pixels = np.clip(pixels + tiles[:pixels.shape[0], :pixels.shape[1], None], 0, 255).astype(np.uint8)
        quantized = PILImage.fromarray(pixels, mode="RGB").quantize(palette=palette, dither=PILImage.Dither.NONE)
    else:
        method = PILImage.Dither.FLOYDSTEINBERG if dither == "floyd-steinberg" else PILImage.Dither.NONE
        quantized = pil.quantize(colors=colors, palette=palette, dither=method)
    return torch.from_numpy(np.asarray(quantized.convert("RGB"), dtype=np.float32) / 255.0)


# -- morphology ----------------------------------------------------------------------------------------------------

def flat_extreme(images: torch.Tensor, size: int, dilate: bool) -> torch.Tensor:
    """Grey dilation (max) or erosion (min) of [B, C, H, W] over a size×size square; pixels outside never win.

    The window is anchored like kornia's (origin size // 2; dilation reflects it). A flat square is separable: a
    column max pool, then a row one. A window reaching past the far side already covers the whole line, so each
    reach is cut at the image size: same values, and large kernels cost no more than the image."""
    before, after = size // 2, size - size // 2 - 1
    if dilate:
        before, after = after, before
    sign = 1.0 if dilate else -1.0
    out = sign * images
    for axis, length in ((-2, images.shape[-2]), (-1, images.shape[-1])):
        lead, trail = min(before, length - 1), min(after, length - 1)
        pad = (0, 0, lead, trail) if axis == -2 else (lead, trail, 0, 0)
        window = (lead + trail + 1, 1) if axis == -2 else (1, lead + trail + 1)
        out = F.max_pool2d(F.pad(out, pad, value=-torch.inf), window, stride=1)
    return sign * out


def morphology(images: torch.Tensor, operation: str, size: int) -> torch.Tensor:
    """kornia.morphology's operations with a flat square kernel and its geodesic border, on [B, H, W, C]."""
    x = images.movedim(-1, 1)
    erode = lambda t: flat_extreme(t, size, dilate=False)  # noqa: E731
    dilate = lambda t: flat_extreme(t, size, dilate=True)  # noqa: E731
    if operation == "erode":
        out = erode(x)
    elif operation == "dilate":
        out = dilate(x)
    elif operation == "open":
        out = dilate(erode(x))
    elif operation == "close":
        out = erode(dilate(x))
    elif operation == "gradient":
        out = dilate(x) - erode(x)
    elif operation == "top_hat":
        out = x - dilate(erode(x))
    elif operation == "bottom_hat":
        out = erode(dilate(x)) - x
    else:
        raise ValueError(f"Unknown morphology operation {operation!r}")
    return out.movedim(1, -1)


# -- nodes ---------------------------------------------------------------------------------------------------------

class ImageBlend(Node):
    """Blend image2 over image1 with a blend mode, mixed by blend_factor."""

    DISPLAY_NAME = "Image Blend"
    CATEGORY = "image/postprocessing"
    RETURNS = (Output("IMAGE"),)
    image1: Image
    image2: Image
    blend_factor: Annotated[float, Float(min=0.0, max=1.0, step=0.01)] = 0.5
    blend_mode: Annotated[str, Combo(BLEND_MODES)]

    def execute(self, ctx) -> tuple:
        ctx.check_cancelled()
        return (blend_images(self.image1, self.image2, self.blend_factor, self.blend_mode),)


class ImageBlur(Node):
    """Gaussian blur."""

    DISPLAY_NAME = "Image Blur"
    CATEGORY = "image/postprocessing"
    RETURNS = (Output("IMAGE"),)
    image: Image
    blur_radius: Annotated[int, Int(min=1, max=31, step=1)] = 1
    sigma: Annotated[float, Float(min=0.1, max=10.0, step=0.1)] = 1.0

    def execute(self, ctx) -> tuple:
        return (map_batch(lambda chunk: gaussian_blur(chunk, self.blur_radius, self.sigma), self.image,
                          ctx.check_cancelled),)


class ImageSharpen(Node):
    """Sharpen with an unsharp mask of the given radius, sigma and strength."""

    DISPLAY_NAME = "Image Sharpen"
    CATEGORY = "image/postprocessing"
    RETURNS = (Output("IMAGE"),)
    image: Image
    sharpen_radius: Annotated[int, Int(min=1, max=31, step=1)] = 1
    sigma: Annotated[float, Float(min=0.1, max=10.0, step=0.01)] = 1.0
    alpha: Annotated[float, Float(min=0.0, max=5.0, step=0.01)] = 1.0

    def execute(self, ctx) -> tuple:
        return (map_batch(lambda chunk: sharpen(chunk, self.sharpen_radius, self.sigma, self.alpha), self.image,
                          ctx.check_cancelled),)


class ImageQuantize(Node):
    """Reduce each image to a palette of at most `colors` colours, optionally dithered."""

    DISPLAY_NAME = "Image Quantize"
    CATEGORY = "image/postprocessing"
    RETURNS = (Output("IMAGE"),)
    image: Image
    colors: Annotated[int, Int(min=1, max=256, step=1)] = 256
    dither: Annotated[str, Combo(DITHERS)]

    def execute(self, ctx) -> tuple:
        out = []
        for image in self.image:
            ctx.check_cancelled()
            out.append(quantize_image(image, self.colors, self.dither))
        return (torch.stack(out).to(self.image),)


class ImageAddNoise(Node):
    """Add seeded Gaussian noise scaled by strength, clamped to 0..1."""

    CATEGORY = "image"
    RETURNS = (Output("IMAGE"),)
    image: Image
    seed: Annotated[int, Int(min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True)] = 0
    strength: Annotated[float, Float(min=0.0, max=1.0, step=0.01)] = 0.5

    def execute(self, ctx) -> tuple:
        ctx.check_cancelled()
        generator = torch.Generator("cpu").manual_seed(self.seed)
        noise = torch.randn(self.image.shape, generator=generator, device="cpu").to(self.image)
        return ((self.image + self.strength * noise).clamp(0.0, 1.0),)


class Morphology(Node):
    """Erode, dilate, open, close, gradient, top-hat or bottom-hat with a square kernel."""

    DISPLAY_NAME = "ImageMorphology"
    CATEGORY = "image/postprocessing"
    RETURNS = (Output("IMAGE"),)
    image: Image
    operation: Annotated[str, Combo(MORPHOLOGY_OPERATIONS)]
    kernel_size: Annotated[int, Int(min=3, max=999, step=1)] = 3

    def execute(self, ctx) -> tuple:
        return (map_batch(lambda chunk: morphology(chunk, self.operation, self.kernel_size), self.image,
                          ctx.check_cancelled),)


class ImageRGBToYUV(Node):
    """Split RGB images into Y, Cb and Cr planes (each as a grey IMAGE)."""

    CATEGORY = "image/batch"
    RETURNS = (Output("IMAGE", "Y"), Output("IMAGE", "U"), Output("IMAGE", "V"))
    image: Image

    def execute(self, ctx) -> tuple:
        from kornia.color import rgb_to_ycbcr

        ctx.check_cancelled()
        planes = rgb_to_ycbcr(self.image[..., :3].movedim(-1, 1)).movedim(1, -1)
        shape = (*self.image.shape[:-1], 3)
        return tuple(planes[..., i:i + 1].expand(shape).clone() for i in range(3))


class ImageYUVToRGB(Node):
    """Join Y, Cb and Cr planes (the channel mean of each IMAGE) into RGB images."""

    CATEGORY = "image/batch"
    RETURNS = (Output("IMAGE"),)
    Y: Image
    U: Image
    V: Image

    def execute(self, ctx) -> tuple:
        from kornia.color import ycbcr_to_rgb

        ctx.check_cancelled()
        planes = torch.cat([plane.mean(dim=-1, keepdim=True) for plane in (self.Y, self.U, self.V)], dim=-1)
        return (ycbcr_to_rgb(planes.movedim(-1, 1)).movedim(1, -1),)


NODE_CLASSES = [ImageBlend, ImageBlur, ImageSharpen, ImageQuantize, ImageAddNoise, Morphology, ImageRGBToYUV,
                ImageYUVToRGB]
