"""Image batch nodes: join two batches, take a slice, repeat, and re-cut a list of batches.

IMAGE = [B, H, W, C] float 0..1."""

from __future__ import annotations

from typing import Annotated, Any

import torch

from graphengine import Int, Node, Output, Socket

from . import costs
from .imageio import common_upscale
from .image_transform import match_channels
from .types import Image


def join_batches(image1: torch.Tensor, image2: torch.Tensor) -> torch.Tensor:
    """image1's images then image2's, image2 resized (bilinear, centre crop) to image1's size when it differs."""
    image1, image2 = match_channels(image1, image2)
    if image1.shape[1:] != image2.shape[1:]:
        image2 = common_upscale(image2.movedim(-1, 1), image1.shape[2], image1.shape[1], "bilinear",
                                "center").movedim(1, -1)
    return torch.cat((image1, image2.to(image1)), dim=0)


def batch_slice(batch: int, index: int, length: int) -> slice:
    """ImageFromBatch's rows: the start is clamped to the last image, the length to what is left."""
    start = min(batch - 1, index)
    return slice(start, start + min(batch - start, length))


def rebatch(batches: list[torch.Tensor], size: int) -> list[torch.Tensor]:
    """All images of all batches, in order, cut into batches of `size` (the last may be smaller)."""
    images = [image for batch in batches for image in batch]
    if any(image.shape != images[0].shape for image in images):
        shapes = sorted({tuple(image.shape) for image in images})
        raise ValueError(f"RebatchImages: images of different sizes cannot share a batch: {shapes}")
    return [torch.stack(images[start:start + size]) for start in range(0, len(images), size)]


class ImageBatch(Node):
    """Join two image batches into one (image2 is resized to image1's size when they differ)."""

    DISPLAY_NAME = "Batch Images"
    CATEGORY = "image"
    RETURNS = (Output("IMAGE"),)
    image1: Image
    image2: Image

    @classmethod
    def estimate(cls, inputs, upstream, services=None):
        first, second = upstream.get("image1"), upstream.get("image2")
        if first is None or second is None:
            return None
        channels = max(first["channels"], second["channels"])
        return costs.made(costs.image(first["batch"] + second["batch"], first["width"], first["height"], channels))

    def execute(self, ctx) -> tuple:
        ctx.check_cancelled()
        return (join_batches(self.image1, self.image2),)


class ImageFromBatch(Node):
    """Take `length` images starting at `batch_index`."""

    CATEGORY = "image/batch"
    RETURNS = (Output("IMAGE"),)
    image: Image
    batch_index: Annotated[int, Int(min=0, max=4095)] = 0
    length: Annotated[int, Int(min=1, max=4096)] = 1

    @classmethod
    def estimate(cls, inputs, upstream, services=None):
        pixels, wanted = upstream.get("image"), costs.constants(inputs, "batch_index", "length")
        if pixels is None or wanted is None:
            return None
        rows = batch_slice(pixels["batch"], *wanted)
        return costs.made(costs.resized(pixels, batch=rows.stop - rows.start))

    def execute(self, ctx) -> tuple:
        return (self.image[batch_slice(self.image.shape[0], self.batch_index, self.length)].clone(),)


class RepeatImageBatch(Node):
    """Repeat the whole batch `amount` times."""

    CATEGORY = "image/batch"
    RETURNS = (Output("IMAGE"),)
    image: Image
    amount: Annotated[int, Int(min=1, max=4096)] = 1

    @classmethod
    def estimate(cls, inputs, upstream, services=None):
        pixels, amount = upstream.get("image"), inputs.get("amount")
        if pixels is None or amount is None:
            return None
        return costs.made(costs.resized(pixels, batch=pixels["batch"] * amount))

    def execute(self, ctx) -> tuple:
        copies = []
        for _ in range(self.amount):
            ctx.check_cancelled()
            copies.append(self.image)
        return (torch.cat(copies),)


class RebatchImages(Node):
    """Re-cut a list of image batches into batches of `batch_size` images."""

    CATEGORY = "image/batch"
    INPUT_IS_LIST = True
    RETURNS = (Output("IMAGE", is_list=True),)
    images: Annotated[list[Any], Socket("IMAGE")]
    batch_size: Annotated[list[int], Int(min=1, max=4096)] = 1

    def execute(self, ctx) -> tuple:
        ctx.check_cancelled()
        return (rebatch(list(self.images), self.batch_size[0]),)


NODE_CLASSES = [ImageBatch, ImageFromBatch, RepeatImageBatch, RebatchImages]
