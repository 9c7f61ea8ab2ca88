"""Reading weight files into flat ``{key: tensor}`` dicts, safely.

Pickle-based files (``.ckpt .pt .pth .bin``) go only through ``torch.load(weights_only=True)``, which
refuses arbitrary objects (a malicious ``__reduce__`` raises instead of running).
"""

from __future__ import annotations

import json
import pickle
import struct
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file as _load_safetensors
from safetensors.torch import save_file as _save_safetensors

from .errors import ModelFileError

SAFETENSORS_EXTENSIONS = (".safetensors", ".sft")
PICKLE_EXTENSIONS = (".ckpt", ".pt", ".pth", ".bin")
READABLE_EXTENSIONS = SAFETENSORS_EXTENSIONS + PICKLE_EXTENSIONS

# Original LDM checkpoints wrap the weights: {"state_dict": {...}, "global_step": N, ...}; BasicSR-trained upscale
# models (RealESRGAN, SwinIR, …): {"params_ema": {...}} and/or {"params": {...}} (the EMA weights are the ones used).
_WRAPPER_KEYS = ("state_dict", "params_ema", "params")


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Return ``(tensors, metadata)`` of a weight file, all tensors on CPU.

    ``metadata`` is the safetensors ``__metadata__`` header, or for pickle files the scalar top-level
    entries (e.g. ``global_step``) as strings.
    Raises ``ModelFileError`` naming the file for unknown extensions, missing, truncated or corrupt files.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in READABLE_EXTENSIONS:
        raise ModelFileError(
            f"{path.name}: unsupported weight file extension {suffix!r}; "
            f"expected one of {', '.join(READABLE_EXTENSIONS)}"
        )
    if not path.is_file():
        raise ModelFileError(f"{path}: no such weight file")
    if suffix in SAFETENSORS_EXTENSIONS:
        return _read_safetensors(path)
    return _read_pickle(path)


def tensor_names(path: str | Path) -> list[str]:
    """The tensor keys of a weight file (a safetensors file: from its header only)."""
    path = Path(path)
    if path.suffix.lower() not in SAFETENSORS_EXTENSIONS:
        return list(read_state_dict(path)[0])
    return [k for k in _read_safetensors_header(path) if k != "__metadata__"]


def read_prefixed(path: str | Path, prefix: str) -> dict[str, torch.Tensor]:
    """Only the tensors whose keys start with ``prefix`` (keys kept whole): a safetensors file reads just those,
    a pickle file is read whole."""
    path = Path(path)
    if path.suffix.lower() not in SAFETENSORS_EXTENSIONS:
        sd, _ = read_state_dict(path)
        return {k: v for k, v in sd.items() if k.startswith(prefix)}
    names = [k for k in tensor_names(path) if k.startswith(prefix)]
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {name: f.get_tensor(name) for name in names}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ModelFileError(f"{path.name}: truncated or corrupt safetensors file: {e}") from e


def read_safetensors_metadata(path: str | Path) -> dict[str, str]:
    """Only the ``__metadata__`` of a safetensors file (reads the header, not the tensors)."""
    header = _read_safetensors_header(Path(path))
    metadata = header.get("__metadata__") or {}
    return {str(k): str(v) for k, v in metadata.items()}


def write_safetensors(
    path: str | Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> None:
    """Write tensors (made contiguous, on CPU) with string metadata."""
    prepared = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    _save_safetensors(prepared, str(path), metadata={str(k): str(v) for k, v in (metadata or {}).items()})


def _read_safetensors_header(path: Path) -> dict:
    size = path.stat().st_size
    try:
        with path.open("rb") as f:
            raw_len = f.read(8)
            if len(raw_len) != 8:
                raise ModelFileError(f"{path.name}: truncated safetensors file (no 8-byte header length)")
            (header_len,) = struct.unpack("<Q", raw_len)
            if header_len > size - 8:
                raise ModelFileError(
                    f"{path.name}: truncated or corrupt safetensors file "
                    f"(header claims {header_len} bytes, file has {size})"
                )
            header = json.loads(f.read(header_len))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelFileError(f"{path.name}: corrupt safetensors header (expected JSON): {e}") from e
    if not isinstance(header, dict):
        raise ModelFileError(f"{path.name}: corrupt safetensors header (expected a JSON object)")
    return header


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    metadata = read_safetensors_metadata(path)  # also validates the header length against the file size
    try:
        tensors = _load_safetensors(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ModelFileError(f"{path.name}: truncated or corrupt safetensors file: {e}") from e
    return tensors, metadata


def _read_pickle(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    return _flatten_pickled(read_pickled(path), path)


def read_pickled(path: str | Path) -> object:
    """The object in a ``torch.save`` file, unpickled weights-only (tensors and plain containers, nothing else).

    Raises ``ModelFileError`` naming the file when it is refused, truncated or corrupt."""
    path = Path(path)
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ModelFileError(
            f"{path.name}: refused to load: the pickle holds objects other than tensors and plain containers "
            f"(only weights_only loading is allowed; convert the file to .safetensors): {e}"
        ) from e
    except Exception as e:  # torch.load surfaces malformed input as many types (IndexError, EOFError, ...)
        raise ModelFileError(
            f"{path.name}: truncated or corrupt PyTorch weight file (expected a torch.save archive): {e}"
        ) from e
    return obj


def _flatten_pickled(obj: object, path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if not isinstance(obj, Mapping):
        raise ModelFileError(f"{path.name}: expected a dict of tensors, found {type(obj).__name__}")
    metadata: dict[str, str] = {}
    while True:
        wrapped = next((k for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if wrapped is None:
            break
        metadata.update({str(k): str(v) for k, v in obj.items() if isinstance(v, (int, float, str, bool))})
        obj = obj[wrapped]
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    metadata.update({str(k): str(v) for k, v in obj.items() if isinstance(v, (int, float, str, bool))})
    if not tensors:
        raise ModelFileError(f"{path.name}: no tensors found (expected a state dict)")
    return tensors, metadata
