"""Fixtures: a registry holding the latent/image/mask nodes plus tiny test nodes, run through the real executor."""

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import pytest
import torch

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from graphengine import Executor, Node, NodeOutput, NodeRegistry, Output, RuntimeConfig, Socket, String  # noqa: E402
from nodes import image, latent, mask  # noqa: E402
from nodes.services import Services  # noqa: E402


class Capture(Node):
    """Test output node: exposes its input value in the UI output."""

    OUTPUT_NODE = True
    value: Annotated[Any, Socket("*")]

    def execute(self, ctx) -> NodeOutput:
        return NodeOutput((), ui={"value": [self.value]})


class ImageConst(Node):
    """An IMAGE from JSON nested lists [B, H, W, C]."""

    RETURNS = (Output("IMAGE"),)
    data: Annotated[str, String()]

    def execute(self, ctx) -> tuple:
        return (torch.tensor(json.loads(self.data), dtype=torch.float32),)


class MaskConst(Node):
    """A MASK from JSON nested lists [B, H, W]."""

    RETURNS = (Output("MASK"),)
    data: Annotated[str, String()]

    def execute(self, ctx) -> tuple:
        return (torch.tensor(json.loads(self.data), dtype=torch.float32),)


class LatentConst(Node):
    """A LATENT from JSON: samples [B, C, h, w] and an optional batch_index list."""

    RETURNS = (Output("LATENT"),)
    data: Annotated[str, String()]
    batch_index: Annotated[str, String(optional=True)] = ""

    def execute(self, ctx) -> tuple:
        out = {"samples": torch.tensor(json.loads(self.data), dtype=torch.float32)}
        if self.batch_index:
            out["batch_index"] = json.loads(self.batch_index)
        return (out,)


TEST_NODES = [Capture, ImageConst, MaskConst, LatentConst]


@pytest.fixture
def config(tmp_path) -> RuntimeConfig:
    cfg = RuntimeConfig(base_dir=tmp_path)
    for folder in (cfg.input_dir, cfg.output_dir, cfg.temp_dir):
        folder.mkdir(parents=True, exist_ok=True)
    return cfg


@pytest.fixture
def registry(config) -> NodeRegistry:
    reg = NodeRegistry(Services(config=config))
    reg.register_all(latent.NODE_CLASSES + image.NODE_CLASSES + mask.NODE_CLASSES)
    reg.register_all(TEST_NODES, python_module="tests")
    return reg


@pytest.fixture
def executor(registry) -> Executor:
    return Executor(registry)


@pytest.fixture
def run_node(executor):
    """Run one node (id "n") with the given inputs and extra prompt nodes; return output `slot` of it."""

    def run(class_type: str, inputs: dict, slot: int = 0, extra: dict | None = None) -> Any:
        prompt = dict(extra or {})
        prompt["n"] = {"class_type": class_type, "inputs": inputs}
        prompt["out"] = {"class_type": "Capture", "inputs": {"value": ["n", slot]}}
        result = executor.execute(prompt)
        assert result.ok, result.error
        return result.outputs["out"]["value"][0]

    return run
