"""Fixtures: a registry with the core image nodes and the test packs of tests/data/custom_packs loaded from a copy."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from graphengine import Executor, NodeRegistry, RuntimeConfig
from nodes import image, image_transform
from nodes.services import Services

PACKS = Path(__file__).resolve().parents[1] / "data" / "custom_packs"


def pack_registry(base: Path, packs: Path = PACKS) -> NodeRegistry:
    """Core image nodes (EmptyImage, SaveImage, …) plus every pack in `packs`."""
    registry = NodeRegistry(Services(config=RuntimeConfig(base_dir=base)))
    registry.register_all([*image.NODE_CLASSES, *image_transform.NODE_CLASSES])
    registry.load_folder(packs)
    return registry


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> NodeRegistry:
    return pack_registry(tmp_path_factory.mktemp("packs_base"))


@pytest.fixture
def executor(registry) -> Executor:
    return Executor(registry)


@pytest.fixture
def events(executor) -> list[tuple[str, dict]]:
    received: list[tuple[str, dict]] = []
    executor.events.subscribe(lambda event: received.append((event.type, event.data())))
    return received


@pytest.fixture
def packs_copy(tmp_path) -> Path:
    """A writable copy of the test packs (to add or break packs in a test)."""
    target = tmp_path / "custom_nodes"
    shutil.copytree(PACKS, target, ignore=shutil.ignore_patterns("__pycache__"))
    return target


def solid(width: int = 4, height: int = 4, batch: int = 1, color: int = 0x808080) -> dict:
    return {"class_type": "EmptyImage", "inputs": {"width": width, "height": height, "batch_size": batch,
                                                   "color": color}}
