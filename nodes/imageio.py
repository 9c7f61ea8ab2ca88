"""Image files and tensors: contained path resolution, safe decoding, PNG saving with ComfyUI's naming, resizing.

Tensor conventions (ComfyUI's): IMAGE [B, H, W, C] float 0..1, MASK [B, H, W] float 0..1."""

from __future__ import annotations

import datetime
import json
import os
import re
import urllib.parse
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, ImageSequence, PngImagePlugin

# the engine's one limit, also used by the server's routes
from graphengine.limits import MAX_IMAGE_PIXELS, check_image_size

# Decompression-bomb guards, checked against the header before any pixel is decoded.
MAX_BATCH_PIXELS = 200_000_000
MAX_FRAMES = 4096

_ANNOTATION_RE = re.compile(r"^(.*) \[(output|input|temp)\]$")
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, KeyError, MemoryError)


class UnsafePathError(ValueError):
    """A file name that would leave its allowed folder (traversal, absolute path, NUL, escaping symlink)."""


# -- path containment ----------------------------------------------------------------------------------------------

def _decoded_forms(name: str) -> list[str]:
    """The name and its percent-decoded forms (decoded until stable, a few rounds at most)."""
    forms = [name]
    for _ in range(3):
        decoded = urllib.parse.unquote(forms[-1])
        if decoded == forms[-1]:
            break
        forms.append(decoded)
    return forms


def check_relative_name(name: Any, what: str = "file name") -> str:
    """Refuse names that are not plain relative paths: empty, NUL, absolute, drive letters, backslashes, `..`."""
    if not isinstance(name, str) or not name.strip():
        raise UnsafePathError(f"Invalid {what}: {name!r}")
    for form in _decoded_forms(name):
        if "\x00" in form:
            raise UnsafePathError(f"Invalid {what} {name!r}: contains a NUL character")
        if "\\" in form:
            raise UnsafePathError(f"Invalid {what} {name!r}: backslashes are not allowed")
        if form.startswith("/") or re.match(r"^[A-Za-z]:", form) or os.path.isabs(form):
            raise UnsafePathError(f"Invalid {what} {name!r}: absolute paths are not allowed")
        if ".." in form.split("/"):
            raise UnsafePathError(f"Invalid {what} {name!r}: '..' is not allowed")
    return name


def is_within(base: Path | str, target: Path | str) -> bool:
    base_real = os.path.realpath(base)
    target_real = os.path.realpath(target)
    try:
        return os.path.commonpath([base_real, target_real]) == base_real
    except ValueError:  # different drives
        return False


def resolve_inside(base: Path | str, name: str, what: str = "file name") -> Path:
    """`base/name` after checking the name and that its real path (symlinks followed) stays inside `base`."""
    check_relative_name(name, what)
    candidate = Path(base) / name
    if not is_within(base, candidate):
        raise UnsafePathError(f"Invalid {what} {name!r}: resolves outside its folder")
    return candidate


def split_annotation(name: str) -> tuple[str, str | None]:
    """`"a.png [output]"` → `("a.png", "output")`; names without a known annotation are returned unchanged."""
    match = _ANNOTATION_RE.match(name) if isinstance(name, str) else None
    return (match.group(1), match.group(2)) if match else (name, None)


def folder_for(services: Any, kind: str) -> Path:
    return {"input": services.input_dir, "output": services.output_dir, "temp": services.temp_dir}[kind]


def annotated_path(services: Any, name: str, default_kind: str = "input") -> Path:
    """The contained path of a LoadImage-style name (`sub/x.png`, `x.png [output]`, …)."""
    plain, kind = split_annotation(name)
    return resolve_inside(folder_for(services, kind or default_kind), plain, "image name")


def existing_image_file(services: Any, name: str) -> Path:
    path = annotated_path(services, name)
    if not path.is_file():
        raise FileNotFoundError(f"Image file not found: {name!r}")
    return path


# -- decoding ------------------------------------------------------------------------------------------------------

def read_frames(path: Path | str, label: str | None = None) -> list[Image.Image]:
    """Decode every frame of an image file (EXIF orientation applied), refusing bombs before decoding.

    Errors are ValueErrors naming the file: not an image, truncated or corrupt data, oversized header."""
    label = repr(label if label is not None else os.path.basename(str(path)))
    frames: list[Image.Image] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit is checked below
            with Image.open(path) as img:
                check_image_size(*img.size, label)
                total = 0
                for index, frame in enumerate(ImageSequence.Iterator(img)):
                    if index >= MAX_FRAMES:
                        raise ValueError(f"Image {label} has more than {MAX_FRAMES} frames")
                    check_image_size(*frame.size, label)
                    total += frame.size[0] * frame.size[1]
                    if total > MAX_BATCH_PIXELS:
                        raise ValueError(f"Image {label} is too large: its frames hold more than "
                                         f"{MAX_BATCH_PIXELS} pixels; refusing to decode it")
                    frame.load()
                    frames.append(ImageOps.exif_transpose(frame))  # a transposed copy
                    if img.format == "MPO":  # extra MPO frames are alternate views, not a batch
                        break
    except FileNotFoundError:
        raise FileNotFoundError(f"Image file not found: {label}") from None
    except Image.UnidentifiedImageError as exc:
        raise ValueError(f"File {label} is not a readable image") from exc
    except Image.DecompressionBombError as exc:
        raise ValueError(f"Image {label} is too large to decode safely: {exc}") from exc
    except _DECODE_ERRORS as exc:
        if isinstance(exc, ValueError) and str(exc).startswith(("Image ", "File ")):
            raise
        raise ValueError(f"Image {label} is corrupt or truncated: {type(exc).__name__}: {exc}") from exc
    if not frames:
        raise ValueError(f"Image {label} has no frames")
    return frames


def _integer_scale(mode: str) -> float | None:
    """Divisor bringing 32-bit / 16-bit integer modes to 0..1 (None for 8-bit modes)."""
    return 65535.0 if mode == "I" or mode.startswith("I;16") else None


def frame_to_rgb(frame: Image.Image) -> torch.Tensor:
    """One frame → [H, W, 3] float 0..1 (16-bit images keep their precision)."""
    scale = _integer_scale(frame.mode)
    if scale is not None:
        grey = torch.from_numpy(np.asarray(frame, dtype=np.float32) / scale).clamp(0.0, 1.0)
        return grey.unsqueeze(-1).expand(-1, -1, 3).contiguous()
    return torch.from_numpy(np.asarray(frame.convert("RGB"), dtype=np.float32) / 255.0)


def frame_alpha(frame: Image.Image) -> torch.Tensor | None:
    """The frame's alpha [H, W] in 0..1, or None when it has none (palette transparency counts as alpha)."""
    if "A" in frame.getbands():
        return torch.from_numpy(np.asarray(frame.getchannel("A"), dtype=np.float32) / 255.0)
    if frame.mode == "P" and "transparency" in frame.info:
        return torch.from_numpy(np.asarray(frame.convert("RGBA").getchannel("A"), dtype=np.float32) / 255.0)
    return None


def frame_channel(frame: Image.Image, channel: str) -> torch.Tensor:
    """One channel (`R`, `G`, `B` or `A`) of a frame as [H, W] float 0..1 (missing alpha reads as opaque)."""
    scale = _integer_scale(frame.mode)
    if scale is not None:
        if channel == "A":
            return torch.ones(frame.size[1], frame.size[0])
        return torch.from_numpy(np.asarray(frame, dtype=np.float32) / scale).clamp(0.0, 1.0)
    rgba = frame if frame.mode == "RGBA" else frame.convert("RGBA")
    return torch.from_numpy(np.asarray(rgba.getchannel(channel), dtype=np.float32) / 255.0)


# -- saving --------------------------------------------------------------------------------------------------------

def to_uint8(image: torch.Tensor) -> np.ndarray:
    """[H, W, C] float → uint8 as ComfyUI does it: clip(255·x) then truncate."""
    array = np.clip(255.0 * image.detach().to("cpu", torch.float32).numpy(), 0, 255)
    return np.nan_to_num(array).astype(np.uint8)


def png_text_chunks(prompt: Any, extra_pnginfo: Mapping[str, Any] | None) -> dict[str, str]:
    """`prompt` plus one chunk per extra_pnginfo key, each as JSON."""
    chunks: dict[str, str] = {}
    if prompt is not None:
        chunks["prompt"] = json.dumps(prompt)
    for key, value in (extra_pnginfo or {}).items():
        chunks[str(key)] = json.dumps(value)
    return chunks


def write_png(path: Path, pixels: np.ndarray, text: Mapping[str, str], compress_level: int) -> None:
    """Write a PNG with tEXt chunks; never overwrites (raises FileExistsError)."""
    info = PngImagePlugin.PngInfo()
    for key, value in text.items():
        info.add_text(key, value)
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    with open(path, "xb") as handle:
        Image.fromarray(pixels).save(handle, format="PNG", pnginfo=info, compress_level=compress_level)


@dataclass(frozen=True)
class SaveTarget:
    folder: Path       # absolute folder the files go to
    filename: str      # prefix base name (may still contain %batch_num%)
    subfolder: str     # relative to the output root, "" when none ("/" separated)
    counter: int       # first free counter

    def file_name(self, batch_number: int, counter: int) -> str:
        return f"{self.filename.replace('%batch_num%', str(batch_number))}_{counter:05}_.png"


def substitute_tokens(prefix: str, width: int, height: int, now: datetime.datetime | None = None) -> str:
    if "%" not in prefix:
        return prefix
    now = now or datetime.datetime.now()
    values = {"width": str(width), "height": str(height), "year": str(now.year), "month": f"{now.month:02}",
              "day": f"{now.day:02}", "hour": f"{now.hour:02}", "minute": f"{now.minute:02}",
              "second": f"{now.second:02}"}
    for key, value in values.items():
        prefix = prefix.replace(f"%{key}%", value)
    return prefix


def highest_counter(folder: Path, filename: str) -> int:
    """Highest `<filename>_<digits>_…` counter in `folder` (0 if none); `%batch_num%` matches any number."""
    pattern = re.compile(re.escape(filename).replace(re.escape("%batch_num%"), r"\d+") + r"_(\d+)_")
    best = 0
    try:
        entries = os.listdir(folder)
    except OSError:
        return 0
    for entry in entries:
        match = pattern.match(entry)
        if match:
            best = max(best, int(match.group(1)))
    return best


def save_target(root: Path | str, prefix: str, width: int, height: int,
                now: datetime.datetime | None = None) -> SaveTarget:
    """Where images with this filename prefix go (ComfyUI's rules; the prefix may name subfolders inside root)."""
    if not isinstance(prefix, str) or "\x00" in prefix:
        raise UnsafePathError(f"Invalid filename_prefix {prefix!r}")
    prefix = substitute_tokens(prefix, width, height, now)
    normalized = os.path.normpath(prefix.replace("\\", "/")) if prefix.strip() else ""
    subfolder, filename = os.path.split(normalized)
    root = Path(root)
    folder = root / subfolder
    if (not filename or filename in (".", "..") or os.path.isabs(normalized)
            or ".." in normalized.split("/") or not is_within(root, folder)):
        raise UnsafePathError(f"Saving image outside the output folder is not allowed (filename_prefix "
                              f"{prefix!r})")
    folder.mkdir(parents=True, exist_ok=True)
    if not is_within(root, folder):  # a symlink created concurrently
        raise UnsafePathError(f"Saving image outside the output folder is not allowed (filename_prefix {prefix!r})")
    return SaveTarget(folder, filename, subfolder, highest_counter(folder, filename) + 1)


def save_images(images: torch.Tensor, root: Path | str, prefix: str, text: Mapping[str, str], compress_level: int,
                kind: str, interrupt: Callable[[], None] | None = None) -> list[dict[str, str]]:
    """Save a batch as PNGs named like ComfyUI; returns the UI entries `{"filename", "subfolder", "type"}`.
    `interrupt()` is called before each image (it raises to stop; the images already written stay)."""
    if images.ndim == 3:
        images = images.unsqueeze(0)
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"Expected an IMAGE batch [B, H, W, C], got shape {tuple(images.shape)}")
    target = save_target(root, prefix, width=int(images.shape[2]), height=int(images.shape[1]))
    counter = target.counter
    results = []
    for batch_number, image in enumerate(images):
        if interrupt is not None:
            interrupt()
        pixels = to_uint8(image)
        while True:
            name = target.file_name(batch_number, counter)
            try:
                write_png(target.folder / name, pixels, text, compress_level)
                break
            except FileExistsError:  # another writer took this counter
                counter += 1
        results.append({"filename": name, "subfolder": target.subfolder, "type": kind})
        counter += 1
    return results


# -- resizing ------------------------------------------------------------------------------------------------------

def center_crop_to_aspect(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Crop [..., H, W] symmetrically so its aspect ratio matches width/height."""
    old_h, old_w = samples.shape[-2], samples.shape[-1]
    old_aspect, new_aspect = old_w / old_h, width / height
    x = y = 0
    if old_aspect > new_aspect:
        x = round((old_w - old_w * (new_aspect / old_aspect)) / 2)
    elif old_aspect < new_aspect:
        y = round((old_h - old_h * (old_aspect / new_aspect)) / 2)
    return samples[..., y:old_h - y, x:old_w - x]


def _bilinear_taps(old: int, new: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Half-pixel-centred source positions: left index, right index, fraction (edges clamped)."""
    pos = ((torch.arange(new, dtype=torch.float64) + 0.5) * (old / new) - 0.5).clamp(0, old - 1)
    left = pos.floor().long()
    right = (left + 1).clamp(max=old - 1)
    return left, right, (pos - left).float()


def _slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation of channel vectors (last dim) with linearly interpolated magnitude."""
    norm_a = a.norm(dim=-1, keepdim=True)
    norm_b = b.norm(dim=-1, keepdim=True)
    unit_a = torch.where(norm_a == 0, torch.zeros_like(a), a / norm_a)
    unit_b = torch.where(norm_b == 0, torch.zeros_like(b), b / norm_b)
    dot = (unit_a * unit_b).sum(-1, keepdim=True)
    omega = torch.acos(dot.clamp(-1.0, 1.0))
    sin_omega = torch.sin(omega)
    t = t.unsqueeze(-1)
    out = (torch.sin((1 - t) * omega) * unit_a + torch.sin(t * omega) * unit_b) / sin_omega
    out = out * (norm_a * (1 - t) + norm_b * t)
    out = torch.where(dot > 1 - 1e-5, a, out)  # parallel: nothing to rotate
    return torch.where(dot < 1e-5 - 1, a * (1 - t) + b * t, out)  # opposite: rotation undefined


def _bislerp_axis(samples: torch.Tensor, new: int, axis: int) -> torch.Tensor:
    left, right, frac = _bilinear_taps(samples.shape[axis], new)
    moved = samples.movedim(1, -1)  # channels last: slerp acts on channel vectors
    axis_m = axis - 1  # spatial axis index once the channel axis (1) moved last
    a = moved.index_select(axis_m, left)
    b = moved.index_select(axis_m, right)
    shape = [1] * (moved.ndim - 1)
    shape[axis_m] = new
    return _slerp(a, b, frac.reshape(shape).expand(a.shape[:-1])).movedim(-1, 1)


def bislerp(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Bilinear resize whose blends are spherical interpolations of the channel vectors (width first)."""
    dtype = samples.dtype
    out = _bislerp_axis(samples.float(), width, samples.ndim - 1)
    return _bislerp_axis(out, height, samples.ndim - 2).to(dtype)


def lanczos(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Lanczos resize of [B, C, H, W] images in 0..1 through PIL (8-bit, like ComfyUI)."""
    resized = []
    for image in samples:
        pixels = to_uint8(image.movedim(0, -1))
        pil = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
        array = np.asarray(pil.resize((width, height), resample=Image.Resampling.LANCZOS), dtype=np.float32) / 255.0
        tensor = torch.from_numpy(array.reshape(height, width, -1)).movedim(-1, 0)
        resized.append(tensor)
    return torch.stack(resized).to(samples.dtype)


def common_upscale(samples: torch.Tensor, width: int, height: int, method: str, crop: str) -> torch.Tensor:
    """Resize [B, C, H, W] to height×width with a ComfyUI upscale_method, optionally centre-cropping first."""
    if width < 1 or height < 1:
        raise ValueError(f"Cannot resize to {width}x{height}")
    if crop == "center":
        samples = center_crop_to_aspect(samples, width, height)
    if method == "bislerp":
        return bislerp(samples, width, height)
    if method == "lanczos":
        return lanczos(samples, width, height)
    if method not in ("nearest-exact", "bilinear", "area", "bicubic"):
        raise ValueError(f"Unknown upscale_method {method!r}")
    return F.interpolate(samples, size=(height, width), mode=method)


def scaled_size(old_w: int, old_h: int, width: int, height: int, minimum: int) -> tuple[int, int]:
    """Target size where a 0 side keeps the aspect ratio; each side at least `minimum`."""
    if width == 0:
        height = max(minimum, height)
        width = max(minimum, round(old_w * height / old_h))
    elif height == 0:
        width = max(minimum, width)
        height = max(minimum, round(old_h * width / old_w))
    else:
        width, height = max(minimum, width), max(minimum, height)
    return width, height
