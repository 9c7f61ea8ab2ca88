"""Text-prompted masks with CLIPSeg (transformers `CLIPSegForImageSegmentation`, a folder in models/clipseg).

The node keeps the class and input names of the widely used "CLIPSeg" custom node (image, text, blur, threshold,
dilation_factor -> Mask, Heatmap Mask, BW Mask) and adds the model folder as an input. The mask is computed at the
model's resolution from sigmoid(logits): values at or below `threshold` become 0, a Gaussian blur of `blur`
pixels (sigma), a per-image rescale to 0..1, a square max-filter dilation of `dilation_factor` pixels, then a
bilinear resize to the image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from graphengine import Boolean, Combo, Float, Int, Node, Output, String

from .handles import module_device_dtype, on_compute_device
from .loaders import loading
from .services import ModelFiles
from .types import Image
from .work import Progress, map_rows

CLIPSEG_IMAGES_PER_CALL = 4
HEATMAP_OPACITY = 0.5
# A viridis-like ramp (dark purple -> teal -> yellow) for the heatmap preview, at mask values 0, 0.5 and 1.
HEATMAP_COLORS = torch.tensor([[0.267, 0.005, 0.329], [0.128, 0.567, 0.551], [0.993, 0.906, 0.144]])
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer_config.json")


def load_clipseg_model(path: Path) -> torch.nn.Module:
    """A local transformers CLIPSeg model (never downloads)."""
    from transformers import CLIPSegForImageSegmentation

    return CLIPSegForImageSegmentation.from_pretrained(str(path), local_files_only=True).eval()


def load_clipseg_inputs(path: Path) -> tuple[Any, Any]:
    """(image processor, tokenizer) of a CLIPSeg folder; a folder without tokenizer files uses the shipped CLIP
    tokenizer (CLIPSeg's text encoder is CLIP's, with CLIP's vocabulary)."""
    from transformers import AutoImageProcessor, AutoTokenizer

    from .models.families import load_tokenizer

    if not (path / "preprocessor_config.json").is_file():
        raise FileNotFoundError(f"{path.name} has no preprocessor_config.json (the image processor's settings)")
    processor = AutoImageProcessor.from_pretrained(str(path), local_files_only=True)
    has_tokenizer = any((path / name).is_file() for name in TOKENIZER_FILES)
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True) if has_tokenizer else load_tokenizer()
    return processor, tokenizer


def clipseg_logits(model: torch.nn.Module, processor: Any, tokenizer: Any, images: torch.Tensor, text: str,
                   manager: Any = None, progress: Progress | None = None) -> torch.Tensor:
    """IMAGE [B,H,W,C] and one text -> logits [B,h,w] at the model's resolution (float32, CPU)."""
    positions = model.config.text_config.max_position_embeddings
    tokens = tokenizer([text], padding="max_length", max_length=positions, truncation=True, return_tensors="pt")

    def run(chunk: torch.Tensor) -> torch.Tensor:
        pixels = [(img[..., :3].clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy() for img in chunk]
        pixel_values = processor(images=pixels, return_tensors="pt")["pixel_values"]
        count = len(pixels)
        with on_compute_device(manager, model) as net, torch.no_grad():
            device, dtype = module_device_dtype(net)
            logits = net(input_ids=tokens["input_ids"].repeat(count, 1).to(device),
                         attention_mask=tokens["attention_mask"].repeat(count, 1).to(device),
                         pixel_values=pixel_values.to(device, dtype)).logits
        return logits.to("cpu", torch.float32).reshape(count, *logits.shape[-2:])  # one image comes back [h,w]

    return map_rows(run, images, CLIPSEG_IMAGES_PER_CALL, progress)


def mask_from_logits(logits: torch.Tensor, threshold: float, blur: float, dilation: int,
                     size: tuple[int, int]) -> torch.Tensor:
    """Logits [B,h,w] -> MASK [B,*size] in 0..1 (see the module docstring for the steps)."""
    probs = torch.sigmoid(logits.to(torch.float32))
    kept = torch.where(probs > threshold, probs, torch.zeros_like(probs))
    if blur > 0:
        kept = torch.from_numpy(gaussian_filter(kept.numpy(), sigma=(0, blur, blur))).to(torch.float32)
    flat = kept.reshape(kept.shape[0], -1)
    low, high = flat.amin(dim=1)[:, None, None], flat.amax(dim=1)[:, None, None]
    span = high - low
    # a flat map has nothing to rescale: all of it is found (above threshold) or none of it
    mask = torch.where(span > 0, (kept - low) / span.clamp_min(1e-12), (kept > 0).to(torch.float32))
    mask = mask.unsqueeze(1)
    if dilation > 0:
        mask = F.max_pool2d(mask, kernel_size=2 * dilation + 1, stride=1, padding=dilation)
    if tuple(mask.shape[-2:]) != tuple(size):
        mask = F.interpolate(mask, size=size, mode="bilinear", align_corners=False)
    return mask.squeeze(1).clamp(0.0, 1.0)


def heatmap(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The image [B,H,W,C] with the mask [B,H,W] laid over it in a dark-to-yellow ramp, half opaque."""
    position = mask.clamp(0, 1) * (len(HEATMAP_COLORS) - 1)
    low = position.floor().clamp(max=len(HEATMAP_COLORS) - 2).long()
    fraction = (position - low).unsqueeze(-1)
    colors = HEATMAP_COLORS[low] * (1 - fraction) + HEATMAP_COLORS[low + 1] * fraction
    return image[..., :3] * (1 - HEATMAP_OPACITY) + colors * HEATMAP_OPACITY


class CLIPSeg(Node):
    """Makes a mask of what a text names in an image, with a CLIPSeg model from models/clipseg."""

    CATEGORY = "image"
    RETURNS = (Output("MASK", "Mask"), Output("IMAGE", "Heatmap Mask"), Output("IMAGE", "BW Mask"))

    image: Image
    text: Annotated[str, String(tooltip="What to find, e.g. \"the red circle\".")]
    blur: Annotated[float, Float(min=0.0, max=15.0, step=0.1, optional=True,
                                 tooltip="Gaussian blur (sigma, in model pixels) of the thresholded map.")] = 7.0
    threshold: Annotated[float, Float(min=0.0, max=1.0, step=0.05, optional=True,
                                      tooltip="Probabilities at or below this count as background.")] = 0.4
    dilation_factor: Annotated[int, Int(min=0, max=10, step=1, optional=True,
                                        tooltip="Grow the mask by this many model pixels.")] = 4
    use_cuda: Annotated[bool, Boolean(optional=True, tooltip="Accepted for compatibility; the model runs on the "
                                                             "engine's compute device.")] = True
    every_batch: Annotated[bool, Boolean(optional=True, tooltip="Segment every image of the batch (off: only "
                                                                "the first).")] = False
    model_name: Annotated[str | None, Combo(ModelFiles("clipseg"), optional=True,
                                            tooltip="A transformers CLIPSeg folder in models/clipseg (default: "
                                                    "the first one).")] = None

    def execute(self, ctx) -> tuple:
        services = ctx.services
        name = self.model_name or next(iter(services.folders.list("clipseg")), None)
        if name is None:
            raise FileNotFoundError("no CLIPSeg model: put a transformers CLIPSeg folder (config.json, weights, "
                                    "preprocessor_config.json) in models/clipseg")
        with loading(name):
            path = services.folders.resolve("clipseg", name)
            model = services.manager.get(("clipseg", str(path)), lambda: load_clipseg_model(path), "clipseg")
            processor, tokenizer = load_clipseg_inputs(path)
        images = self.image if self.every_batch else self.image[:1]
        logits = clipseg_logits(model, processor, tokenizer, images, self.text, services.manager, ctx.progress)
        mask = mask_from_logits(logits, self.threshold, self.blur, self.dilation_factor,
                                (images.shape[1], images.shape[2]))
        bw = mask.unsqueeze(-1).expand(-1, -1, -1, 3).contiguous()
        return mask, heatmap(images.to(torch.float32), mask), bw


NODE_CLASSES = [CLIPSeg]
