"""The editor's template browser: `/templates/index.json` and the files it names (`/templates/<name>.json`,
`/templates/<name>-1.webp`).

This project's templates (workflows/editor_templates/, written by tools/make_editor_templates.py) come first. When
the `comfyui-workflow-templates` package is installed, its templates are offered too, but only those whose every node
type the registry has (the newest index is mostly other model families an SD engine cannot run)."""

from __future__ import annotations

import importlib.util
import json
import logging
import re
from pathlib import Path
from typing import Any

from aiohttp import web

from ..registry import NodeRegistry
from ..ui_convert import VIRTUAL_NODES
from .security import PathRejected, check_component, contained_path, json_error

log = logging.getLogger("graphengine.server")

OWN_TEMPLATES = Path(__file__).resolve().parents[2] / "workflows" / "editor_templates"
# Packages that hold a `templates/` folder with index.json (the classic single package, and the JSON bundle).
TEMPLATE_PACKAGES = ("comfyui_workflow_templates", "comfyui_workflow_templates_json")
LOCALE_INDEX = re.compile(r"index(\.[a-z]{2}(-[A-Za-z]{2,4})?)?\.json")


def package_template_dirs(packages: tuple[str, ...] = TEMPLATE_PACKAGES) -> list[Path]:
    """`templates/` folders (with an index.json) of the installed template packages, found on sys.path."""
    found = []
    for name in packages:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            continue
        for location in (spec.submodule_search_locations or ()) if spec else ():
            folder = Path(location) / "templates"
            if (folder / "index.json").is_file():
                found.append(folder)
    return found


def node_types(workflow: dict[str, Any]) -> set[str]:
    """Node types a UI workflow uses, subgraph contents included (a subgraph instance's own type is its id)."""
    subgraphs = (workflow.get("definitions") or {}).get("subgraphs") or []
    ids = {str(s.get("id")) for s in subgraphs if isinstance(s, dict)}
    types = set()
    for graph in [workflow, *[s for s in subgraphs if isinstance(s, dict)]]:
        for node in graph.get("nodes") or []:
            if isinstance(node, dict) and isinstance(node.get("type"), str):
                types.add(node["type"])
    return types - ids - VIRTUAL_NODES


class TemplateLibrary:
    """The merged index and the files it may serve; built once, on first use."""

    def __init__(self, registry: NodeRegistry, own: Path = OWN_TEMPLATES, packages: list[Path] | None = None):
        self.registry = registry
        self.own = own
        self.packages = package_template_dirs() if packages is None else packages
        self._index: list[dict[str, Any]] | None = None
        self._files: dict[str, Path] = {}

    def runnable(self, folder: Path, name: str) -> bool:
        try:
            workflow = json.loads((folder / f"{name}.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return isinstance(workflow, dict) and all(self.registry.get(t) for t in node_types(workflow))

    def _add(self, folder: Path, categories: Any, keep: Any) -> list[dict[str, Any]]:
        out = []
        for category in categories if isinstance(categories, list) else []:
            if not isinstance(category, dict):
                continue
            templates = [t for t in category.get("templates") or [] if isinstance(t, dict)
                         and isinstance(t.get("name"), str) and t["name"] not in self._files and keep(folder, t["name"])]
            for template in templates:
                self._files[template["name"]] = folder
            if templates:
                out.append({**category, "templates": templates})
        return out

    def index(self) -> list[dict[str, Any]]:
        if self._index is None:
            index: list[dict[str, Any]] = []
            for folder, keep in [(self.own, lambda f, n: True)] + [(p, self.runnable) for p in self.packages]:
                try:
                    categories = json.loads((folder / "index.json").read_text(encoding="utf-8"))
                except (OSError, ValueError) as exc:
                    log.warning("templates: %s/index.json not readable: %s", folder, exc)
                    continue
                index += self._add(folder, categories, keep)
            self._index = index
        return self._index

    def file(self, filename: str) -> Path | None:
        """The file for `<name>.json` or `<name>-<n>.<ext>` of a listed template, else None."""
        self.index()
        stem = filename.rsplit(".", 1)[0]
        name = stem if filename.endswith(".json") else stem.rsplit("-", 1)[0]
        folder = self._files.get(name)
        if folder is None:
            return None
        path = contained_path(folder, filename)
        return path if path.is_file() else None


def setup(app: web.Application, library: TemplateLibrary) -> None:
    async def serve(request: web.Request) -> web.StreamResponse:
        filename = request.match_info["filename"]
        try:
            check_component(filename, "filename", allow_slash=False)
            if LOCALE_INDEX.fullmatch(filename):
                return web.json_response(library.index())
            if filename == "index_logo.json":
                return web.json_response({})
            path = library.file(filename)
        except PathRejected as exc:
            return exc.response()
        if path is None:
            return json_error(404, "not_found", "Not found", request.path[:200])
        return web.FileResponse(path)

    app.router.add_get("/templates/{filename}", serve)
