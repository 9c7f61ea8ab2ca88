"""Coverage of ComfyUI's core SD1.x / SD2.x / SDXL node set: every name is registered here, or listed below as not
supported with the reason (the README's list). A node that lands must leave the list; a listed one must not exist."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from graphengine import NodeRegistry, RuntimeConfig
from nodes import register

CORE = json.loads((Path(__file__).parent / "data" / "comfyui_core_sd_nodes.json").read_text())["nodes"]

NOT_SUPPORTED = {
    "ImageOnlyCheckpointLoader": "it loads Stable Video Diffusion / Zero123 checkpoints: no video or 3D family here",
}


@pytest.fixture(scope="module")
def registered(tmp_path_factory) -> set[str]:
    registry = NodeRegistry()
    register(registry, RuntimeConfig(base_dir=tmp_path_factory.mktemp("coverage")))
    return set(registry.object_info())


def test_every_core_node_is_registered_or_listed_with_a_reason(registered):
    missing = [name for name in CORE if name not in registered and name not in NOT_SUPPORTED]
    assert missing == [], f"ComfyUI core nodes neither registered nor listed as not supported: {missing}"


def test_the_not_supported_list_is_true_and_in_the_readme(registered):
    assert [name for name in NOT_SUPPORTED if name in registered] == []
    assert set(NOT_SUPPORTED) <= set(CORE)
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    assert [name for name in NOT_SUPPORTED if f"`{name}`" not in readme] == []
