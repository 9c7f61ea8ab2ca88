"""Combo options computed from the services: folder listings of images and latents (model files are
`services.ModelFiles`). Torch-free, so that the node description (`node_schemas.json`) can name them and
`graphengine validate` can list the files without importing the nodes."""

from __future__ import annotations

import mimetypes
import os
from pathlib import Path
from typing import Any

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".jfif", ".apng",
                              ".avif", ".heic", ".heif", ".ico", ".tga", ".ppm", ".pgm", ".pbm", ".mpo"})
LATENT_SUFFIX = ".latent"
OUTPUT_ANNOTATION = " [output]"


def list_image_files(folder: Path | str) -> list[str]:
    """Image files (by extension / MIME type) directly inside `folder`, sorted; [] if it does not exist."""
    try:
        entries = os.listdir(folder)
    except OSError:
        return []
    names = []
    for entry in entries:
        if not os.path.isfile(os.path.join(folder, entry)):
            continue
        mime = mimetypes.guess_type(entry)[0] or ""
        if mime.startswith("image/") or Path(entry).suffix.lower() in IMAGE_EXTENSIONS:
            names.append(entry)
    return sorted(names)


def input_images(services: Any) -> list[str]:
    return list_image_files(services.input_dir) if services is not None else []


def output_images(services: Any) -> list[str]:
    """Images directly in the output folder, newest first, annotated `name [output]`."""
    if services is None:
        return []
    folder = services.output_dir
    names = list_image_files(folder)
    names.sort(key=lambda name: os.path.getmtime(folder / name), reverse=True)
    return [name + OUTPUT_ANNOTATION for name in names]


def latent_files(services: Any) -> list[str]:
    """`*.latent` files directly inside the input folder, sorted."""
    folder = Path(services.input_dir) if services is not None else None
    if folder is None or not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_file() and p.name.endswith(LATENT_SUFFIX))
