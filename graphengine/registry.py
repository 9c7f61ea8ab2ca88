"""A registry of node classes (an object, never global state) that renders ComfyUI's `/object_info`."""

from __future__ import annotations

import fnmatch
import importlib.util
import sys
import time
import traceback
import types
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .comfy_packs import builtin_shims, is_comfy_module, register_comfy_module, requirements, web_directory
from .node import Node, NodeDefinitionError, NodeSchema, schema_of


@dataclass(frozen=True)
class PackLoadError:
    """A custom node pack that failed to load; reported, never fatal."""

    path: str
    message: str
    traceback: str


@dataclass
class PackRecord:
    """One custom node pack as loaded: its nodes, import time, error, frontend folder and requirements."""

    name: str
    path: str
    seconds: float = 0.0
    nodes: list[str] = field(default_factory=list)
    error: str | None = None
    traceback: str = ""
    node_errors: list[str] = field(default_factory=list)  # node classes skipped in a pack that loaded
    web_dir: str | None = None
    requirements: list[str] = field(default_factory=list)
    missing_requirements: list[str] = field(default_factory=list)

    @property
    def loaded(self) -> bool:
        return self.error is None


def _custom_nodes_package(folder: Path) -> types.ModuleType:
    """The `custom_nodes` package packs are imported under, with `folder` on its path: Python resolves a relative
    import inside a pack's submodule through the top-level package, and some packs import `custom_nodes.<pack>`."""
    package = sys.modules.get("custom_nodes")
    if package is None:
        package = types.ModuleType("custom_nodes", "The custom node packs loaded by graphengine.")
        package.__path__ = []
        sys.modules["custom_nodes"] = package
    path = getattr(package, "__path__", None)
    if isinstance(path, list) and str(folder) not in path:
        path.append(str(folder))
    return package


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
        self.packs: list[PackRecord] = []  # every custom node pack tried, in load order
        self._import_shims: dict[str, Callable[[], types.ModuleType]] = {}
        for name, factory in builtin_shims().items():
            self.add_import_shim(name, factory)
        self._server_extensions: list[Callable[[Any], None]] = []

    def register(self, cls: type[Node], *, python_module: str = "nodes", display_name: str | None = None,
                 schema: NodeSchema | None = None) -> NodeSchema:
        """Register a node class (`schema`: one built by an adapter instead of read from the class)."""
        schema = schema or schema_of(cls)
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
        return s.cls.render_object_info(info, self.services)

    def object_info(self) -> dict[str, Any]:
        return {name: self.node_info(name) for name in self._schemas}

    # -- modules and server hooks for ComfyUI-style packs --------------------------------------------------------

    def add_import_shim(self, name: str, factory: Callable[[], types.ModuleType]) -> None:
        """Provide module `name` to custom node packs (`folder_paths`, `comfy.utils`…): before a pack is imported,
        `factory()` is put into sys.modules under `name` unless something is there already (parents first)."""
        self._import_shims[name] = factory

    def import_shims(self) -> dict[str, Callable[[], types.ModuleType]]:
        return dict(self._import_shims)

    def install_import_shims(self) -> list[str]:
        """Install the shims whose names are absent (a child only where its package is there, and set as an
        attribute of it); returns the names installed now."""
        installed = []
        for name in sorted(self._import_shims, key=lambda n: n.count(".")):
            parent, _, child = name.rpartition(".")
            if name in sys.modules or (parent and parent not in sys.modules):
                continue  # there already, or its package is missing (a child alone cannot be imported)
            module = self._import_shims[name]()
            sys.modules[name] = module
            if parent and not hasattr(sys.modules[parent], child):
                setattr(sys.modules[parent], child, module)
            installed.append(name)
        return installed

    def add_server_extension(self, attach: Callable[[Any], None]) -> None:
        """`attach(server)` is called once by a server as it is built (before it starts), with an object offering
        `add_routes(route_defs)`, `send(event_type, data, sid=None)` from any thread and `interrupt()`."""
        self._server_extensions.append(attach)

    def server_extensions(self) -> list[Callable[[Any], None]]:
        return list(self._server_extensions)

    # -- custom node packs ----------------------------------------------------------------------------------------

    def load_folder(self, folder: str | Path) -> list[str]:
        """Load every pack (a `.py` file or a package) in `folder`, each on its own, timed.

        A pack exports ComfyUI's `NODE_CLASS_MAPPINGS` (V1 classes or V3 `io.ComfyNode` classes) or
        `comfy_entrypoint`, or this engine's `NODE_CLASSES` (Node subclasses) or `register(registry)`. A pack that
        fails is recorded in `pack_errors` and skipped. Every pack tried is in `packs`. Returns the names loaded."""
        loaded: list[str] = []
        root = Path(folder)
        if not root.is_dir():
            return loaded
        for entry in sorted(root.iterdir()):
            if entry.name.startswith((".", "_")) or entry.name.endswith(".disabled"):
                continue
            if entry.is_file() and entry.suffix == ".py":
                pack, init = entry.stem, entry
            elif entry.is_dir() and (entry / "__init__.py").is_file():
                pack, init = entry.name, entry / "__init__.py"
            else:
                continue
            record = PackRecord(pack, str(entry))
            started = time.perf_counter()
            try:
                self._load_pack(pack, init, record)
                loaded.append(pack)
                self.packs_loaded.append(str(entry))
            except (Exception, SystemExit) as exc:  # noqa: BLE001 - one broken pack must not stop the others
                record.error, record.traceback = f"{type(exc).__name__}: {exc}", traceback.format_exc()
                self.pack_errors.append(PackLoadError(str(entry), record.error, record.traceback))
            record.seconds = time.perf_counter() - started
            if entry.is_dir():
                record.requirements, record.missing_requirements = requirements(entry)
            self.packs.append(record)
        return loaded

    def _load_pack(self, pack: str, init: Path, record: PackRecord) -> None:
        module_name = f"custom_nodes.{pack}"
        self.install_import_shims()
        parent = _custom_nodes_package(init.parent.parent if init.name == "__init__.py" else init.parent)
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
        setattr(parent, pack, module)
        before = set(self._schemas)
        if is_comfy_module(module):
            register_comfy_module(self, module, module_name, record)
            if init.name == "__init__.py":
                web = web_directory(module, init.parent)
                record.web_dir = str(web) if web else None
            return
        if callable(getattr(module, "register", None)):
            module.register(self)
        elif isinstance(getattr(module, "NODE_CLASSES", None), (list, tuple)):
            self.register_all(module.NODE_CLASSES, python_module=module_name)
        else:
            raise NodeDefinitionError(f"{init}: export NODE_CLASS_MAPPINGS, comfy_entrypoint, NODE_CLASSES "
                                      "or register(registry)")
        record.nodes = [n for n in self._schemas if n not in before]

    def web_directories(self) -> dict[str, Path]:
        """Pack name -> the frontend folder it declared (WEB_DIRECTORY), served under /extensions/<pack>/."""
        return {r.name: Path(r.web_dir) for r in self.packs if r.loaded and r.web_dir}

    def pack_summary(self) -> str:
        """ComfyUI-style import summary: one line per pack with its import time, failures marked."""
        if not self.packs:
            return ""
        lines = ["Import times for custom nodes:"]
        for record in sorted(self.packs, key=lambda r: r.seconds):
            state = "" if record.loaded else " (IMPORT FAILED)"
            lines.append(f"{record.seconds:6.1f} seconds{state}: {record.path}")
        for record in self.packs:
            if record.error:
                lines.append(f"Cannot import {record.path}: {record.error}")
            lines += [f"{record.name}: skipped node {problem}" for problem in record.node_errors]
            if record.missing_requirements:
                lines.append(f"{record.name}: requirements.txt lists packages that are not installed "
                             f"(not installed automatically): {', '.join(record.missing_requirements)}")
        return "\n".join(lines)
