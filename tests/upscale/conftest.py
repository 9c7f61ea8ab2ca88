"""A models folder with tiny random-weight ESRGAN files (x4 safetensors, x2 BasicSR .pth) and the full node pack."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from graphengine import Executor, NodeRegistry, RuntimeConfig  # noqa: E402
from nodes import register  # noqa: E402
from tests.nodes_basic.conftest import Capture, ImageConst  # noqa: E402

from .spandrel_support import write_esrgan  # noqa: E402


@dataclass
class UpscaleEnv:
    base: Path
    registry: NodeRegistry

    def run(self, prompt: dict):
        return Executor(self.registry).execute(prompt)


@pytest.fixture(scope="session")
def upscale_env(tmp_path_factory) -> UpscaleEnv:
    base = tmp_path_factory.mktemp("upscale")
    folder = base / "models" / "upscale_models"
    write_esrgan(folder / "esrgan_x4.safetensors", scale=4)
    write_esrgan(folder / "realesrgan_x2.pth", scale=2, seed=1)
    (folder / "sub").mkdir()
    save_file({"encoder.weight": torch.zeros(4, 4)}, str(folder / "sub" / "not_an_upscaler.safetensors"))
    registry = NodeRegistry()
    register(registry, RuntimeConfig(base_dir=base))
    registry.register_all([Capture, ImageConst], python_module="tests")
    return UpscaleEnv(base, registry)
