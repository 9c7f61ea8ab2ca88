"""Fixtures: a registry with the latent, latent-operation, latent-file and primitive nodes plus test nodes that make
LATENTs (with noise_mask / batch_index) from JSON, run through the real executor."""

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import pytest
import torch

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from graphengine import Executor, Node, NodeRegistry, Output, PromptValidationError, String  # noqa: E402
from nodes import (latent, latent_batch, latent_composite, latent_files, latent_operations, latent_ops,  # noqa: E402
                   mask, primitives)
from nodes.services import Services  # noqa: E402

from ..nodes_basic.conftest import Capture, config  # noqa: E402,F401 - the capture node and folders fixture


class LatentJson(Node):
    """A LATENT from JSON: samples [B, C, h, w], optional noise_mask [B, 1, H, W] and batch_index."""

    RETURNS = (Output("LATENT"),)
    data: Annotated[str, String()]
    noise_mask: Annotated[str, String(optional=True)] = ""
    batch_index: Annotated[str, String(optional=True)] = ""

    def execute(self, ctx) -> tuple:
        out = {"samples": torch.tensor(json.loads(self.data), dtype=torch.float32)}
        if self.noise_mask:
            out["noise_mask"] = torch.tensor(json.loads(self.noise_mask), dtype=torch.float32)
        if self.batch_index:
            out["batch_index"] = json.loads(self.batch_index)
        return (out,)


class MaskJson(Node):
    """A MASK from JSON [B, H, W]."""

    RETURNS = (Output("MASK"),)
    data: Annotated[str, String()]

    def execute(self, ctx) -> tuple:
        return (torch.tensor(json.loads(self.data), dtype=torch.float32),)


MODULES = (latent, latent_ops, latent_operations, latent_composite, latent_batch, latent_files, primitives, mask)


def lat(samples: torch.Tensor, noise_mask: torch.Tensor | None = None, batch_index: list | None = None) -> dict:
    """A prompt entry producing this LATENT."""
    inputs = {"data": json.dumps(samples.tolist())}
    if noise_mask is not None:
        inputs["noise_mask"] = json.dumps(noise_mask.tolist())
    if batch_index is not None:
        inputs["batch_index"] = json.dumps(batch_index)
    return {"class_type": "LatentJson", "inputs": inputs}


def msk(values: torch.Tensor) -> dict:
    return {"class_type": "MaskJson", "inputs": {"data": json.dumps(values.tolist())}}


def ramp(*shape: int) -> torch.Tensor:
    """Distinct small values of the given shape (exact in float32)."""
    count = 1
    for size in shape:
        count *= size
    return torch.arange(count, dtype=torch.float32).reshape(shape) / 4 - 3


@pytest.fixture
def registry(config) -> NodeRegistry:
    reg = NodeRegistry(Services(config=config))
    reg.register_all([cls for module in MODULES for cls in module.NODE_CLASSES])
    reg.register_all([Capture, LatentJson, MaskJson], python_module="tests")
    return reg


@pytest.fixture
def executor(registry) -> Executor:
    return Executor(registry)


@pytest.fixture
def run(executor):
    """Run node "n" of `class_type` with `inputs` (and extra prompt nodes); return its output `slot`."""

    def go(class_type: str, inputs: dict, slot: int = 0, **extra: dict) -> Any:
        prompt = {**extra, "n": {"class_type": class_type, "inputs": inputs},
                  "out": {"class_type": "Capture", "inputs": {"value": ["n", slot]}}}
        result = executor.execute(prompt)
        assert result.ok, result.error
        values = result.outputs["out"]["value"]
        return values[0] if len(values) == 1 else values

    return go


@pytest.fixture
def failure(executor):
    """The validation errors (node_errors of "n") or the run-time message of a prompt expected to fail."""

    def go(class_type: str, inputs: dict, **extra: dict) -> Any:
        prompt = {**extra, "n": {"class_type": class_type, "inputs": inputs},
                  "out": {"class_type": "Capture", "inputs": {"value": ["n", 0]}}}
        try:
            result = executor.execute(prompt)
        except PromptValidationError as exc:
            return exc.node_errors["n"]["errors"]
        assert not result.ok, "the prompt ran"
        return result.error["exception_message"]

    return go
