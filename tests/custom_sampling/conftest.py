"""A registry with every node of the pack plus a capture node, over the repository's models folder (the bundled demo
model), shared by the custom-sampling tests."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from graphengine import CancelToken, Executor, Node, NodeOutput, NodeRegistry, RuntimeConfig, Socket  # noqa: E402
from nodes import register  # noqa: E402

DEMO = "graphengine-demo.safetensors"
MODELS_DIR = ROOT / "models"


class Capture(Node):
    """Test output node: exposes its input value in the UI output."""

    OUTPUT_NODE = True
    value: Annotated[Any, Socket("*")]

    def execute(self, ctx) -> NodeOutput:
        return NodeOutput((), ui={"value": [self.value]})


@dataclass
class Env:
    registry: NodeRegistry
    shared: Executor  # its result cache keeps the checkpoint, prompts and shared latents between tests

    def run(self, prompt: dict, *, cancel: CancelToken | None = None, listener=None):
        """Execute on a fresh executor (no cached results)."""
        executor = Executor(self.registry)
        if listener is not None:
            executor.events.subscribe(listener)
        return executor.execute(prompt, cancel=cancel)

    def values(self, prompt: dict, *names: str) -> list:
        """The captured values of the named capture nodes, executed on the shared executor."""
        result = self.shared.execute(prompt)
        assert result.ok, result.error
        return [result.outputs[name]["value"][0] for name in names]


@pytest.fixture(scope="session")
def env(tmp_path_factory) -> Env:
    if not (MODELS_DIR / "checkpoints" / DEMO).is_file():
        pytest.skip(f"the demo model {DEMO} is absent")
    base = tmp_path_factory.mktemp("custom_sampling")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    registry = NodeRegistry()
    register(registry, RuntimeConfig(base_dir=base, models_dir=MODELS_DIR, input_dir=base / "input",
                                     output_dir=base / "output"))
    registry.register(Capture, python_module="tests")
    yield Env(registry, Executor(registry))
    torch.set_num_threads(before)


def node(class_type: str, **inputs) -> dict:
    return {"class_type": class_type, "inputs": inputs}


def capture(link: list) -> dict:
    return node("Capture", value=link)


def base_graph(size: int = 64, batch: int = 1) -> dict:
    """The demo checkpoint, a prompt pair and an empty latent."""
    return {
        "ckpt": node("CheckpointLoaderSimple", ckpt_name=DEMO),
        "pos": node("CLIPTextEncode", clip=["ckpt", 1], text="a small red circle on the left on a blue background"),
        "neg": node("CLIPTextEncode", clip=["ckpt", 1], text="green"),
        "empty": node("EmptyLatentImage", width=size, height=size, batch_size=batch),
    }
