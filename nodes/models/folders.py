"""The models-folder layout (ComfyUI-like) and safe name → path resolution.

Names are relative, '/'-separated paths (a Windows-style '\\' is accepted as a separator too, so workflows saved
on Windows still resolve). Resolution is contained by real path: '..', absolute names, NUL bytes and symlinks
that point outside the search root are refused with ``UnsafeModelPath``. Model folders that should live elsewhere
are added as search paths (constructor or ``extra_model_paths.yaml``), not symlinked in.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import yaml

from .errors import ModelNotFound, UnsafeModelPath

MODEL_EXTENSIONS = (".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft")

# folder key -> (default sub-directories of the models dir, file extensions listed)
DEFAULT_FOLDERS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "checkpoints": (("checkpoints",), MODEL_EXTENSIONS),
    "configs": (("configs",), (".yaml",)),
    "vae": (("vae",), MODEL_EXTENSIONS),
    "text_encoders": (("text_encoders", "clip"), MODEL_EXTENSIONS),
    "diffusion_models": (("unet", "diffusion_models"), MODEL_EXTENSIONS),
    "loras": (("loras",), MODEL_EXTENSIONS),
    "hypernetworks": (("hypernetworks",), MODEL_EXTENSIONS),
    "controlnet": (("controlnet", "t2i_adapter"), MODEL_EXTENSIONS),
    "embeddings": (("embeddings",), MODEL_EXTENSIONS),
    "upscale_models": (("upscale_models",), MODEL_EXTENSIONS),
    "depth": (("depth",), MODEL_EXTENSIONS),
    "diffusers": (("diffusers",), ()),  # only diffusers-format folders
    "vae_approx": (("vae_approx",), MODEL_EXTENSIONS),
    "clipseg": (("clipseg",), ()),  # transformers CLIPSeg folders (config.json + weights + processor files)
    "clip_vision": (("clip_vision",), MODEL_EXTENSIONS),
    "style_models": (("style_models",), MODEL_EXTENSIONS),
    "gligen": (("gligen",), MODEL_EXTENSIONS),
}
FOLDER_ALIASES = {"clip": "text_encoders", "unet": "diffusion_models"}

# A directory holding one of these is a diffusers-format model: listed as one entry, never descended into.
DIFFUSERS_MARKERS = ("model_index.json", "config.json")

_YAML_RESERVED = ("base_path", "is_default")
_DRIVE = re.compile(r"^[A-Za-z]:")


class ModelFolders:
    """Search paths per folder key, listing and contained resolution. No global state: make one per server."""

    def __init__(
        self,
        models_dir: str | Path,
        extra_paths: Mapping[str, str | Path | Sequence[str | Path]] | None = None,
        extra_config_files: Iterable[str | Path] = (),
    ) -> None:
        self.models_dir = Path(models_dir)
        self._paths: dict[str, list[Path]] = {}
        self._extensions: dict[str, tuple[str, ...]] = {}
        for key, (subdirs, extensions) in DEFAULT_FOLDERS.items():
            self._paths[key] = [self.models_dir / d for d in subdirs]
            self._extensions[key] = extensions
        for key, value in (extra_paths or {}).items():
            for p in [value] if isinstance(value, (str, Path)) else value:
                self.add_path(key, p)
        for config_file in extra_config_files:
            self.load_extra_config(config_file)

    # -- configuration -------------------------------------------------------------------------------------
    def folder_key(self, folder: str) -> str:
        """Canonical key for a folder name or alias ('clip' -> 'text_encoders'); KeyError if unknown."""
        key = FOLDER_ALIASES.get(folder, folder)
        if key not in self._paths:
            raise KeyError(f"unknown model folder {folder!r}; known: {', '.join(sorted(self._paths))}")
        return key

    def folders(self) -> list[str]:
        return sorted(self._paths)

    def paths(self, folder: str) -> list[Path]:
        return list(self._paths[self.folder_key(folder)])

    def add_path(self, folder: str, path: str | Path, first: bool = False) -> None:
        """Add a search path; unknown folder keys create a new folder listing model extensions."""
        key = FOLDER_ALIASES.get(folder, folder)
        paths = self._paths.setdefault(key, [])
        self._extensions.setdefault(key, MODEL_EXTENSIONS)
        path = Path(path)
        if path in paths:
            paths.remove(path)
        if first:
            paths.insert(0, path)
        else:
            paths.append(path)

    def load_extra_config(self, yaml_file: str | Path) -> None:
        """Read an ``extra_model_paths.yaml``: sections of ``base_path``, ``is_default`` and ``<folder>: paths``."""
        yaml_file = Path(yaml_file)
        data = yaml.safe_load(yaml_file.read_text(encoding="utf-8")) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{yaml_file}: expected a mapping of sections")
        for section in data.values():
            if isinstance(section, dict):
                self._apply_yaml_section(section, yaml_file.parent)

    def _apply_yaml_section(self, section: dict, yaml_dir: Path) -> None:
        base = section.get("base_path")
        base_path = _expand(str(base), yaml_dir) if base else None
        first = bool(section.get("is_default", False))
        for key, value in section.items():
            if key in _YAML_RESERVED or value is None:
                continue
            entries = value if isinstance(value, list) else str(value).splitlines()
            entries = [str(e).strip() for e in entries if str(e).strip()]
            # is_default prepends; insert in reverse so the section's own order is kept at the front
            for entry in reversed(entries) if first else entries:
                self.add_path(str(key), _expand(entry, base_path or yaml_dir), first=first)

    # -- listing -------------------------------------------------------------------------------------------
    def list(self, folder: str) -> list[str]:
        """Sorted, de-duplicated relative names ('/'-separated) of loadable entries in every search path."""
        key = self.folder_key(folder)
        names: set[str] = set()
        for root in self._paths[key]:
            names.update(_walk(root, self._extensions[key]))
        return sorted(names)

    # -- resolution ----------------------------------------------------------------------------------------
    def resolve(self, folder: str, name: str) -> Path:
        """Real path of ``name`` in the first search path holding it; refuses anything outside the roots."""
        key = self.folder_key(folder)
        parts = split_safe_name(name)
        extensions = self._extensions[key]
        for root in self._paths[key]:
            real_root = os.path.realpath(root)
            candidate = os.path.realpath(os.path.join(real_root, *parts))
            if not os.path.exists(candidate):
                continue
            if not _is_within(candidate, real_root):
                raise UnsafeModelPath(f"{name!r} resolves outside the {key} folder {root}")
            if os.path.isfile(candidate) and _has_extension(candidate, extensions):
                return Path(candidate)
            if os.path.isdir(candidate) and _is_diffusers_dir(candidate):
                return Path(candidate)
        searched = ", ".join(str(p) for p in self._paths[key]) or "(no search paths)"
        raise ModelNotFound(f"{name!r} not found in model folder {key!r} (searched: {searched})")


def split_safe_name(name: str) -> list[str]:
    """Split a client-supplied relative name into path parts, refusing traversal and absolute forms."""
    if not isinstance(name, str) or not name.strip():
        raise UnsafeModelPath(f"invalid model name {name!r}: expected a non-empty relative path")
    if "\x00" in name:
        raise UnsafeModelPath(f"invalid model name {name!r}: contains a NUL byte")
    normalized = name.replace("\\", "/")
    if normalized.startswith("/") or _DRIVE.match(normalized):
        raise UnsafeModelPath(f"invalid model name {name!r}: absolute paths are not allowed")
    parts = [p for p in normalized.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeModelPath(f"invalid model name {name!r}: '..' is not allowed")
    if not parts:
        raise UnsafeModelPath(f"invalid model name {name!r}: expected a relative path")
    return parts


def _expand(path: str, relative_to: Path) -> Path:
    expanded = os.path.expandvars(os.path.expanduser(path))
    return Path(expanded) if os.path.isabs(expanded) else Path(relative_to) / expanded


def _is_within(path: str, root: str) -> bool:
    return os.path.commonpath([path, root]) == root


def _has_extension(path: str, extensions: tuple[str, ...]) -> bool:
    return path.lower().endswith(extensions)


def _is_diffusers_dir(path: str) -> bool:
    return any(os.path.isfile(os.path.join(path, marker)) for marker in DIFFUSERS_MARKERS)


def _walk(root: Path, extensions: tuple[str, ...]) -> set[str]:
    """Names under ``root``; follows symlinks only while their targets stay inside the root (loop-safe)."""
    real_root = os.path.realpath(root)
    if not os.path.isdir(real_root):
        return set()
    found: set[str] = set()
    seen_dirs: set[str] = set()
    stack = [(real_root, "")]
    while stack:
        directory, prefix = stack.pop()
        real_dir = os.path.realpath(directory)
        if real_dir in seen_dirs or not _is_within(real_dir, real_root):
            continue
        seen_dirs.add(real_dir)
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            rel = f"{prefix}{entry.name}"
            real = os.path.realpath(entry.path)
            if not _is_within(real, real_root):
                continue
            if os.path.isdir(real):
                if _is_diffusers_dir(real):
                    found.add(rel)
                else:
                    stack.append((entry.path, rel + "/"))
            elif os.path.isfile(real) and _has_extension(entry.name, extensions):
                found.add(rel)
    return found
