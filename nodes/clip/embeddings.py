"""Textual-inversion embeddings: finding `embedding:name` files and reading their vectors safely.

Lookup (ComfyUI's order): in each embeddings folder (then its sub-folders), the exact file name, then
`name.safetensors`, `name.pt`, `name.bin`; the first hit wins and names that escape the folder are ignored.
`.pt`/`.bin` files are read with `torch.load(weights_only=True)` only: a pickle payload is refused, logged and the
embedding skipped. Payload formats: a bare tensor, A1111 `{"string_to_param": {"*": tensor}}`, `{"emb_params":
tensor}`, SDXL `{"clip_l": …, "clip_g": …}` (picked by the encoder's key), a list of such dicts, or any dict whose
first value is the tensor.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

log = logging.getLogger(__name__)

EMBEDDING_EXTENSIONS = (".safetensors", ".pt", ".bin")


def _search_folders(roots: Iterable[str | os.PathLike]) -> list[Path]:
    folders: list[Path] = []
    for root in roots:
        root_path = Path(root).resolve()
        if not root_path.is_dir():
            continue
        folders.append(root_path)
        folders.extend(sorted(p for p in root_path.rglob("*") if p.is_dir()))
    return folders


def _inside(folder: Path, candidate: Path) -> bool:
    try:
        return os.path.commonpath((str(folder), str(candidate))) == str(folder)
    except ValueError:
        return False


def find_embedding_file(name: str, roots: Sequence[str | os.PathLike]) -> Path | None:
    """The file `embedding:name` refers to, or None."""
    if not name or "\x00" in name:
        return None
    for folder in _search_folders(roots):
        base = Path(os.path.abspath(folder / name))
        if not _inside(folder, base):
            continue
        for candidate in (base, *(Path(str(base) + ext) for ext in EMBEDDING_EXTENSIONS)):
            if candidate.is_file():
                return candidate
    return None


def _read_payload(path: Path) -> object:
    if path.name.lower().endswith(".safetensors"):
        from safetensors.torch import load_file
        return load_file(str(path), device="cpu")
    return torch.load(str(path), map_location="cpu", weights_only=True)


def _as_matrix(tensor: torch.Tensor) -> torch.Tensor:
    tensor = tensor.detach().to(torch.float32)
    return tensor.reshape(-1, tensor.shape[-1]) if tensor.ndim != 1 else tensor.unsqueeze(0)


def vectors_from_payload(payload: object, key: str, size: int) -> torch.Tensor | None:
    """The [n, dim] vectors of one encoder in an embedding payload, or None if there are none."""
    if isinstance(payload, torch.Tensor):
        return _as_matrix(payload)
    if isinstance(payload, list):
        # A list of dicts: keep every tensor whose width matches this encoder.
        rows = [_as_matrix(t) for item in payload if isinstance(item, dict) for t in item.values()
                if isinstance(t, torch.Tensor) and t.shape[-1] == size]
        return torch.cat(rows, dim=0) if rows else None
    if not isinstance(payload, dict) or not payload:
        return None
    if "string_to_param" in payload and isinstance(payload["string_to_param"], dict):
        return vectors_from_payload(next(iter(payload["string_to_param"].values()), None), key, size)
    if key in payload:
        return vectors_from_payload(payload[key], key, size)
    return vectors_from_payload(next(iter(payload.values())), key, size)


def load_embedding(name: str, roots: Sequence[str | os.PathLike], key: str, size: int) -> torch.Tensor | None:
    """Vectors [n, dim] for `embedding:name` (dim may differ from `size`; the encoder decides), or None."""
    path = find_embedding_file(name, roots)
    if path is None:
        return None
    try:
        payload = _read_payload(path)
    except Exception as exc:  # noqa: BLE001 - any unreadable/unsafe file is skipped, as ComfyUI does
        log.warning("error loading embedding %s (%s), skipping it: %s", name, path.name, exc)
        return None
    vectors = vectors_from_payload(payload, key, size)
    if vectors is None or vectors.shape[0] == 0:
        log.warning("embedding %s (%s) holds no usable vectors, skipping it", name, path.name)
        return None
    return vectors
