"""Workflow templates (Python functions that build graphs) and the API-format JSON files generated from them.

The engine finds the templates through the `graphengine.templates` entry point (`workflows.templates:TEMPLATES`);
the JSON files next to this module are written by `tools/generate_workflows.py`."""

from pathlib import Path

WORKFLOWS_DIR = Path(__file__).resolve().parent


def workflow_files() -> list[Path]:
    """The committed API-format workflow files, sorted by name."""
    return sorted(WORKFLOWS_DIR.glob("*.json"))
