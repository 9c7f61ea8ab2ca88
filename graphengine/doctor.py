"""`graphengine doctor`: what a running engine would use: folders, devices, threads, optional extras, node packs."""

from __future__ import annotations

import importlib.util
import platform
import sys
from typing import Any

from .options import available_cores, engine_version
from .runtime import RuntimeConfig, build_registry, custom_node_folders

# (extra, what it adds, an importable module that is present when it is installed)
OPTIONAL_EXTRAS = (
    ("editor", "the ComfyUI editor served at /", "comfyui_frontend_package"),
    ("upscale", "upscale models (spandrel)", "spandrel"),
    ("ray", "distributed runs", "ray"),
    ("client", "ComfyScript and other client libraries", "comfy_script"),
    ("workflow templates", "comfyui-workflow-templates", "comfyui_workflow_templates"),
)


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def gather_report(config: RuntimeConfig) -> dict[str, Any]:
    registry = build_registry(config)
    report: dict[str, Any] = {
        "graphengine": engine_version(),
        "python": f"{platform.python_version()} ({sys.executable})",
        "cpu_cores": available_cores(),
        "folders": {"base": str(config.base_dir), "models": str(config.models_dir),
                    "input": str(config.input_dir), "output": str(config.output_dir)},
        "extra_model_paths": [str(p) for p in config.extra_model_paths],
        "node_types": len(registry),
        "extras": {name: {"installed": _installed(module), "for": what} for name, what, module in OPTIONAL_EXTRAS},
        "custom_nodes_dirs": [str(p) for p in custom_node_folders(config)],
        "custom_packs_loaded": list(registry.packs_loaded),
        "custom_packs_failed": [{"path": e.path, "error": e.message} for e in registry.pack_errors],
        "custom_packs": [{"name": r.name, "path": r.path, "seconds": round(r.seconds, 3), "nodes": len(r.nodes),
                          "error": r.error, "skipped_nodes": r.node_errors, "web_directory": r.web_dir,
                          "requirements": r.requirements, "requirements_not_installed": r.missing_requirements}
                         for r in registry.packs],
    }
    info = getattr(registry.services, "doctor_info", None)
    if callable(info):
        report.update(info())
    return report


def format_report(report: dict[str, Any]) -> str:
    lines = []
    for key, value in report.items():
        label = key.replace("_", " ")
        if key == "extras":
            lines.append("extras:")
            lines += [f"  {name}: {'installed' if e['installed'] else 'not installed'} ({e['for']})"
                      for name, e in value.items()]
        elif key == "custom_packs":
            lines.append(f"{label}: {'none' if not value else ''}".rstrip())
            lines += [_pack_line(pack) for pack in value]
        elif key == "custom_packs_failed":
            lines.append(f"{label}: {'none' if not value else ''}".rstrip())
            lines += [f"  {e['path']}: {e['error']}" for e in value]
        elif isinstance(value, dict):
            lines.append(f"{label}:")
            lines += [f"  {k}: {', '.join(v) if isinstance(v, list) else v}" for k, v in value.items()]
        elif isinstance(value, list):
            lines.append(f"{label}: {', '.join(map(str, value)) or 'none'}")
        else:
            lines.append(f"{label}: {value}")
    return "\n".join(lines)


def _pack_line(pack: dict[str, Any]) -> str:
    state = f"IMPORT FAILED: {pack['error']}" if pack["error"] else f"{pack['nodes']} nodes"
    line = f"  {pack['name']}: {state} ({pack['seconds']:.1f} s; {pack['path']})"
    if pack["web_directory"]:
        line += f"; web: {pack['web_directory']}"
    if pack["requirements_not_installed"]:
        line += f"; requirements not installed: {', '.join(pack['requirements_not_installed'])}"
    return line
