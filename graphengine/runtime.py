"""Where a running engine keeps its files, and how node packs are found and registered.

The engine never imports a node pack by name: packs announce themselves through the `graphengine.nodes` entry-point
group (a callable `register(registry, config)`), and custom node folders are loaded from `custom_nodes/` beside
the models folder and from `custom_nodes_dirs`."""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from .registry import NodeRegistry

ENTRY_POINT_GROUP = "graphengine.nodes"
FALLBACK_PACKS = ("nodes:register",)


@dataclass
class RuntimeConfig:
    base_dir: Path = field(default_factory=Path.cwd)
    output_dir: Path | None = None
    input_dir: Path | None = None
    temp_dir: Path | None = None
    user_dir: Path | None = None
    models_dir: Path | None = None
    extra_model_paths: list[Path] = field(default_factory=list)
    custom_nodes_dirs: list[Path] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    # A pack may then register its nodes' schemas without their implementations (graphengine.described): enough
    # to validate or convert a workflow, not to run it. `validate` and `convert` ask for this.
    schemas_only: bool = False

    def __post_init__(self) -> None:
        base = Path(self.base_dir)
        self.base_dir = base
        self.output_dir = Path(self.output_dir or base / "output")
        self.input_dir = Path(self.input_dir or base / "input")
        self.temp_dir = Path(self.temp_dir or base / "temp")
        self.user_dir = Path(self.user_dir or base / "user")
        self.models_dir = Path(self.models_dir or base / "models")


def _load_callable(spec: str) -> Any:
    module_name, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module_name), attr or "register")


def pack_registrars() -> list[Any]:
    """The `register(registry, config)` callables of installed node packs (env GRAPHENGINE_NODE_PACKS overrides)."""
    override = os.environ.get("GRAPHENGINE_NODE_PACKS")
    if override is not None:
        return [_load_callable(s.strip()) for s in override.split(",") if s.strip()]
    found = [ep.load() for ep in entry_points(group=ENTRY_POINT_GROUP)]
    if found:
        return found
    registrars = []
    for spec in FALLBACK_PACKS:
        try:
            registrars.append(_load_callable(spec))
        except ImportError:
            continue
    return registrars


def build_registry(config: RuntimeConfig | None = None) -> NodeRegistry:
    config = config or RuntimeConfig()
    registry = NodeRegistry()
    for register in pack_registrars():
        register(registry, config)
    for folder in custom_node_folders(config):
        registry.load_folder(folder)
    return registry


def custom_node_folders(config: RuntimeConfig) -> list[Path]:
    """The folders of custom node packs: `custom_nodes/` beside the models folder when it exists (as in ComfyUI),
    then the ones given (`--custom-nodes`), each once."""
    folders: list[Path] = []
    default = Path(config.models_dir).parent / "custom_nodes"
    for folder in ([default] if default.is_dir() else []) + [Path(f) for f in config.custom_nodes_dirs]:
        if all(folder.resolve() != known.resolve() for known in folders):
            folders.append(folder)
    return folders
