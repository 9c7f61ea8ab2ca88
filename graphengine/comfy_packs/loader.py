"""Registering a ComfyUI-style pack's nodes, the `comfy_api` / `comfy_execution` modules packs import, and what a
pack declares beside its nodes (its frontend folder, its requirements)."""

from __future__ import annotations

import re
import traceback
import types
from collections.abc import Callable
from enum import Enum
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..node import ExecutionBlocker
from . import graph_builder, io
from .adapter import DynamicPrompt, settle
from .v1 import adapt_v1
from .v3 import adapt_v3

if TYPE_CHECKING:
    from ..registry import NodeRegistry, PackRecord


def is_comfy_module(module: types.ModuleType) -> bool:
    return isinstance(getattr(module, "NODE_CLASS_MAPPINGS", None), dict) or \
        callable(getattr(module, "comfy_entrypoint", None))


def _module(name: str, package: bool = False, **attributes: Any) -> types.ModuleType:
    module = types.ModuleType(name)
    if package:
        module.__path__ = []  # a package, so `import parent.child` finds the child in sys.modules
    module.__dict__.update(attributes)
    return module


def _ui_module() -> types.ModuleType:
    return _module("comfy_api.latest.ui", PreviewText=io.PreviewText, PreviewImage=io.PreviewImage,
                   PreviewMask=io.PreviewMask)


def _latest_module() -> types.ModuleType:
    return _module("comfy_api.latest", package=True, io=io, IO=io, ui=_ui_module(), UI=_ui_module(),
                   ComfyExtension=io.ComfyExtension)


class IO(str, Enum):
    """ComfyUI's socket type names (`comfy.comfy_types.IO`), for V1 classes that type their INPUT_TYPES with it."""

    ANY = "*"
    NUMBER = "FLOAT,INT"
    PRIMITIVE = "STRING,FLOAT,INT,BOOLEAN"
    STRING = "STRING"
    INT = "INT"
    FLOAT = "FLOAT"
    BOOLEAN = "BOOLEAN"
    COMBO = "COMBO"
    IMAGE = "IMAGE"
    MASK = "MASK"
    LATENT = "LATENT"
    CONDITIONING = "CONDITIONING"
    MODEL = "MODEL"
    CLIP = "CLIP"
    VAE = "VAE"
    CLIP_VISION = "CLIP_VISION"
    CLIP_VISION_OUTPUT = "CLIP_VISION_OUTPUT"
    CONTROL_NET = "CONTROL_NET"
    UPSCALE_MODEL = "UPSCALE_MODEL"
    SAMPLER = "SAMPLER"
    SIGMAS = "SIGMAS"
    NOISE = "NOISE"
    GUIDER = "GUIDER"
    STYLE_MODEL = "STYLE_MODEL"
    GLIGEN = "GLIGEN"

    def __str__(self) -> str:
        return self.value


class ComfyNodeABC:
    """The base class V1 packs may derive from for typing (`comfy.comfy_types.ComfyNodeABC`); it adds nothing."""


def _node_typing(name: str) -> types.ModuleType:
    return _module(name, package=name.endswith("comfy_types"), IO=IO, ComfyNodeABC=ComfyNodeABC,
                   InputTypeDict=dict, CheckLazyMixin=object)


def builtin_shims() -> dict[str, Callable[[], types.ModuleType]]:
    """The modules of ComfyUI's node APIs that this package provides (V3 schema classes, graph helpers)."""
    return {
        "comfy_api": lambda: _module("comfy_api", package=True),
        "comfy_api.latest": _latest_module,
        "comfy_api.v0_0_2": _latest_module,
        # under the compatibility layer's `comfy` package when it is installed
        "comfy.comfy_types": lambda: _node_typing("comfy.comfy_types"),
        "comfy.comfy_types.node_typing": lambda: _node_typing("comfy.comfy_types.node_typing"),
        "comfy_api.latest.io": lambda: io,
        "comfy_api.latest.ui": _ui_module,
        "comfy_execution": lambda: _module("comfy_execution", package=True),
        "comfy_execution.graph": lambda: _module("comfy_execution.graph", ExecutionBlocker=ExecutionBlocker,
                                                 DynamicPrompt=DynamicPrompt),
        "comfy_execution.graph_utils": lambda: _module(
            "comfy_execution.graph_utils", GraphBuilder=graph_builder.GraphBuilder, Node=graph_builder.GraphNode,
            is_link=lambda v: isinstance(v, list) and len(v) == 2 and isinstance(v[1], int)),
    }


def register_comfy_module(registry: NodeRegistry, module: types.ModuleType, module_name: str,
                          record: PackRecord) -> None:
    """Register the nodes of NODE_CLASS_MAPPINGS and of `comfy_entrypoint()`'s extension.

    A node class that cannot be adapted is recorded on `record.node_errors` and skipped; a name the registry
    already has is kept (packs never replace existing nodes, as in ComfyUI)."""
    display = getattr(module, "NODE_DISPLAY_NAME_MAPPINGS", None) or {}
    classes: list[tuple[str | None, Any]] = list((getattr(module, "NODE_CLASS_MAPPINGS", None) or {}).items())
    entrypoint = getattr(module, "comfy_entrypoint", None)
    if callable(entrypoint):
        extension = settle(entrypoint())
        settle(extension.on_load())
        classes += [(None, cls) for cls in settle(extension.get_node_list())]
    for key, cls in classes:
        label = key or getattr(cls, "__name__", repr(cls))
        try:
            if isinstance(cls, type) and issubclass(cls, io.ComfyNode):
                adapted, schema = adapt_v3(cls)
                if key and key != schema.name:
                    schema = type(schema)(**{**schema.__dict__, "name": key})
            else:
                adapted, schema = adapt_v1(str(key), cls, display.get(key))
        except Exception as exc:  # noqa: BLE001 - one bad class must not hide the pack's other nodes
            record.node_errors.append(f"{label}: {type(exc).__name__}: {exc}")
            record.traceback += traceback.format_exc()
            continue
        if schema.name in registry:
            record.node_errors.append(f"{schema.name}: a node of that name exists already; kept the existing one")
            continue
        registry.register(adapted, python_module=module_name, schema=schema,
                          display_name=display.get(schema.name))
        record.nodes.append(schema.name)


def web_directory(module: types.ModuleType, pack_dir: Path) -> Path | None:
    """The pack's frontend folder (WEB_DIRECTORY, relative to the pack), if it exists."""
    declared = getattr(module, "WEB_DIRECTORY", None)
    if not isinstance(declared, str):
        return None
    folder = (pack_dir / declared).resolve()
    return folder if folder.is_dir() else None


_REQUIREMENT_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def requirements(pack_dir: Path) -> tuple[list[str], list[str]]:
    """The pack's requirements.txt lines, and the distributions among them that are not installed."""
    path = pack_dir / "requirements.txt"
    if not path.is_file():
        return [], []
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines()]
    wanted = [line for line in lines if line and not line.startswith(("#", "-"))]
    missing = []
    for line in wanted:
        match = _REQUIREMENT_NAME.match(line)
        if not match:
            continue
        try:
            metadata.version(match.group(1))
        except metadata.PackageNotFoundError:
            missing.append(match.group(1))
    return wanted, missing
