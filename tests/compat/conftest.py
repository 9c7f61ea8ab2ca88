"""A registry of the SD node pack over the bundled demo model (files written to a temporary base folder) with the
ComfyUI compatibility modules installed, plus `PackCall`: a node that runs a test's function the way a custom node
pack's code runs (inside a node, reaching the engine only through the compatibility modules)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import pytest
import torch

from graphengine import Executor, Node, NodeOutput, NodeRegistry, RuntimeConfig, Socket, String

ROOT = Path(__file__).resolve().parents[2]
DEMO = "graphengine-demo.safetensors"
MODELS_DIR = ROOT / "models"


@dataclass
class Env:
    registry: NodeRegistry
    executor: Executor
    base: Path
    functions: dict[str, Callable] = field(default_factory=dict)
    events: list = field(default_factory=list)

    def call(self, fn: Callable, graph: dict | None = None, **links: list) -> Any:
        """Run `fn(*inputs)` inside a PackCall node fed by `links` into `graph`; returns what fn returned."""
        key = f"{fn.__name__}-{len(self.functions)}"
        self.functions[key] = fn
        prompt = {**(graph or {}), "call": node("PackCall", key=key, **links)}
        result = self.executor.execute(prompt)
        assert result.ok, "".join((result.error or {}).get("traceback") or []) or result.error
        return result.outputs["call"]["value"][0]


def node(class_type: str, **inputs: Any) -> dict:
    return {"class_type": class_type, "inputs": inputs}


def demo_graph(steps: int = 3, cfg: float = 5.0, seed: int = 7) -> dict:
    """The demo checkpoint, a prompt pair, a 64×64 latent and a KSampler over them ("sample")."""
    return {
        "ckpt": node("CheckpointLoaderSimple", ckpt_name=DEMO),
        "pos": node("CLIPTextEncode", clip=["ckpt", 1], text="a small red circle on the left on a blue background"),
        "neg": node("CLIPTextEncode", clip=["ckpt", 1], text="green"),
        "empty": node("EmptyLatentImage", width=64, height=64, batch_size=1),
        "sample": node("KSampler", model=["ckpt", 0], seed=seed, steps=steps, cfg=cfg, sampler_name="euler",
                       scheduler="normal", positive=["pos", 0], negative=["neg", 0], latent_image=["empty", 0],
                       denoise=1.0),
    }


def make_pack_call(functions: dict[str, Callable]) -> type[Node]:
    class PackCall(Node):
        """Runs a test function with its linked inputs; shows what it returned."""

        OUTPUT_NODE = True
        key: Annotated[str, String()]
        a: Annotated[Any, Socket("*", optional=True)] = None
        b: Annotated[Any, Socket("*", optional=True)] = None
        c: Annotated[Any, Socket("*", optional=True)] = None
        d: Annotated[Any, Socket("*", optional=True)] = None

        def execute(self, ctx) -> NodeOutput:
            inputs = [v for v in (self.a, self.b, self.c, self.d) if v is not None]
            return NodeOutput((), ui={"value": [functions[self.key](*inputs)]})

    return PackCall


@pytest.fixture(scope="package")
def env(tmp_path_factory) -> Env:
    if not (MODELS_DIR / "checkpoints" / DEMO).is_file():
        pytest.skip(f"the demo model {DEMO} is absent")
    from nodes import register

    base = tmp_path_factory.mktemp("compat")
    registry = NodeRegistry()
    register(registry, RuntimeConfig(base_dir=base, models_dir=MODELS_DIR))
    functions: dict[str, Callable] = {}
    registry.register(make_pack_call(functions), python_module="custom_nodes.compat_test")
    # Another registry in this process may have installed its shims already: these tests use their own.
    earlier = {name: sys.modules.pop(name) for name in registry.import_shims() if name in sys.modules}
    installed = registry.install_import_shims()
    environment = Env(registry, Executor(registry), base, functions)
    environment.executor.events.subscribe(environment.events.append)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield environment
    torch.set_num_threads(before)
    for name in installed:
        sys.modules.pop(name, None)
    sys.modules.update(earlier)
