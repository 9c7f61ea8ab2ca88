"""A registry of node classes (an object, never global state) that renders ComfyUI's `/object_info`."""

from __future__ import annotations

import fnmatch
import importlib.util
import sys
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .node import Node, NodeDefinitionError, NodeSchema, schema_of


@dataclass(frozen=True)
class PackLoadError:
    """A custom node pack that failed to load; reported, never fatal."""

    path: str
    message: str
    traceback: str


class NodeRegistry:
    """Holds node classes by ComfyUI class_type and the node layer's services (used for computed combos)."""

    def __init__(self, services: Any = None) -> None:
        self.services = services
        self._schemas: dict[str, NodeSchema] = {}
        self._modules: dict[str, str] = {}
        self._warm_ups: list[Callable[[], None]] = []
        self._missing_hints: dict[str, str] = {}
        self.pack_errors: list[PackLoadError] = []
        self.packs_loaded: list[str] = []  # custom node packs loaded from folders (paths)

    def register(self, cls: type[Node], *, python_module: str = "nodes", display_name: str | None = None) -> NodeSchema:
        schema = schema_of(cls)
        if display_name:
            schema = NodeSchema(**{**schema.__dict__, "display_name": display_name})
        return self.register_schema(schema, python_module=python_module)

    def register_schema(self, schema: NodeSchema, *, python_module: str = "nodes") -> NodeSchema:
        """Register an already built schema (graphengine.described builds them from a description)."""
        self._schemas[schema.name] = schema
        self._modules[schema.name] = python_module
        return schema

    def register_all(self, classes: Iterable[type[Node]], *, python_module: str = "nodes") -> None:
        for cls in classes:
            self.register(cls, python_module=python_module)

    def __contains__(self, name: object) -> bool:
        return name in self._schemas

    def __len__(self) -> int:
        return len(self._schemas)

    def names(self) -> list[str]:
        return list(self._schemas)

    def schema(self, name: str) -> NodeSchema:
        return self._schemas[name]

    def get(self, name: str) -> NodeSchema | None:
        return self._schemas.get(name)

    def python_module(self, name: str) -> str:
        return self._modules[name]

    # -- node types it does not have ---------------------------------------------------------------------------------

    def add_missing_node_hints(self, hints: Mapping[str, str]) -> None:
        """Say where foreign node types come from: class name or shell pattern (`IPAdapter*`) -> one sentence."""
        self._missing_hints.update(hints)

    def missing_node_hint(self, class_type: str) -> str | None:
        """The hint for a class this registry lacks (an exact name wins over patterns; first pattern that matches)."""
        if class_type in self._schemas:
            return None
        if class_type in self._missing_hints:
            return self._missing_hints[class_type]
        return next((hint for pattern, hint in self._missing_hints.items()
                     if fnmatch.fnmatchcase(class_type, pattern)), None)

    # -- start-up ------------------------------------------------------------------------------------------------

    def on_warm_up(self, hook: Callable[[], None]) -> None:
        """Register slow one-time preparation (heavy imports, folder scans) for a server to run before serving."""
        self._warm_ups.append(hook)

    def warm_up(self) -> list[str]:
        """Run the packs' warm-up hooks, then build every node definition once (computed combos import what they
        need). Meant for a worker thread at start-up; returns what failed, which is never fatal."""
        steps = [(getattr(hook, "__qualname__", repr(hook)), hook) for hook in self._warm_ups]
        steps += [(name, lambda name=name: self.node_info(name)) for name in self._schemas]
        failures = []
        for name, step in steps:
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - the request that needs it reports it properly
                failures.append(f"{name}: {type(exc).__name__}: {exc}")
        return failures

    # -- /object_info ---------------------------------------------------------------------------------------------

    def node_info(self, name: str) -> dict[str, Any]:
        s = self._schemas[name]
        required = {n: i.spec.object_info(i.default, self.services) for n, i in s.inputs.items() if i.required}
        optional = {n: i.spec.object_info(i.default, self.services) for n, i in s.inputs.items() if not i.required}
        inputs: dict[str, Any] = {"required": required}
        if optional:
            inputs["optional"] = optional
        if s.hidden:
            inputs["hidden"] = dict(s.hidden)
        info: dict[str, Any] = {
            "input": inputs,
            "input_order": {"required": list(required), **({"optional": list(optional)} if optional else {}),
                            **({"hidden": list(s.hidden)} if s.hidden else {})},
            "is_input_list": s.input_is_list,
            "output": [o.type for o in s.outputs],
            "output_is_list": [o.is_list for o in s.outputs],
            "output_name": [o.display_name for o in s.outputs],
            "name": s.name,
            "display_name": s.display_name,
            "description": s.description,
            "python_module": self._modules[name],
            "category": s.category,
            "output_node": s.output_node,
            "has_intermediate_output": False,
            "search_aliases": [],
        }
        tooltips = [o.tooltip for o in s.outputs]
        if any(tooltips):
            info["output_tooltips"] = [t or "" for t in tooltips]
        if s.cls.DEPRECATED:
            info["deprecated"] = True
        if s.cls.EXPERIMENTAL:
            info["experimental"] = True
        return info

    def object_info(self) -> dict[str, Any]:
        return {name: self.node_info(name) for name in self._schemas}

    # -- custom node packs ----------------------------------------------------------------------------------------

    def load_folder(self, folder: str | Path) -> list[str]:
        """Load every pack (a `.py` file or a package) in `folder`.

        A pack exports `NODE_CLASSES` (a list of Node subclasses) or `register(registry)`. A pack that fails is
        recorded in `pack_errors` and skipped. Returns the names of the packs loaded."""
        loaded: list[str] = []
        root = Path(folder)
        if not root.is_dir():
            return loaded
        for entry in sorted(root.iterdir()):
            if entry.name.startswith((".", "_")):
                continue
            if entry.is_file() and entry.suffix == ".py":
                pack, init = entry.stem, entry
            elif entry.is_dir() and (entry / "__init__.py").is_file():
                pack, init = entry.name, entry / "__init__.py"
            else:
                continue
            try:
                self._load_pack(pack, init)
                loaded.append(pack)
                self.packs_loaded.append(str(entry))
            except Exception as exc:  # noqa: BLE001 - one broken pack must not stop the others
                self.pack_errors.append(PackLoadError(str(entry), f"{type(exc).__name__}: {exc}",
                                                      traceback.format_exc()))
        return loaded

    def _load_pack(self, pack: str, init: Path) -> None:
        module_name = f"custom_nodes.{pack}"
        spec = importlib.util.spec_from_file_location(module_name, init,
                                                      submodule_search_locations=[str(init.parent)]
                                                      if init.name == "__init__.py" else None)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot import {init}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(module_name, None)
            raise
        if callable(getattr(module, "register", None)):
            module.register(self)
        elif isinstance(getattr(module, "NODE_CLASSES", None), (list, tuple)):
            self.register_all(module.NODE_CLASSES, python_module=module_name)
        else:
            raise NodeDefinitionError(f"{init}: export NODE_CLASSES or register(registry)")
