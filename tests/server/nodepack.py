"""A tiny pure-Python node pack for the server tests (no torch): a number source, a slow node that reports progress
and checks cancellation each step, a failing node and output nodes that return UI data."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from graphengine import Float, Int, Node, NodeOutput, NodeRegistry, Output, RuntimeConfig, Socket, String


@dataclass
class PackServices:
    """Per-registry state the test nodes report into (what the tests inspect)."""

    output_dir: Path
    preview_method: str = "none"
    steps_started: list[tuple[str, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record_step(self, tag: str, step: int) -> None:
        with self.lock:
            self.steps_started.append((tag, step))

    def steps_of(self, tag: str) -> int:
        with self.lock:
            return sum(1 for t, _ in self.steps_started if t == tag)


class Number(Node):
    """A constant integer."""

    CATEGORY = "test"
    RETURNS = (Output("INT"),)
    value: Annotated[int, Int(min=-1000, max=1000)] = 0

    def execute(self, ctx) -> tuple:
        return (self.value,)


class Slow(Node):
    """Adds `steps` to its input, sleeping `delay` seconds per step and reporting progress (and previews)."""

    CATEGORY = "test"
    RETURNS = (Output("INT"),)
    value: Annotated[int, Socket("INT")]
    steps: Annotated[int, Int(min=1, max=100000)] = 3
    delay: Annotated[float, Float(min=0.0, max=10.0)] = 0.0
    preview_size: Annotated[int, Int(min=0, max=1024)] = 0
    tag: Annotated[str, String()] = ""

    def execute(self, ctx) -> tuple:
        preview = None
        if self.preview_size:
            import os

            from PIL import Image
            side = self.preview_size
            preview = Image.frombytes("RGB", (side, side), os.urandom(side * side * 3))
        for step in range(self.steps):
            ctx.services.record_step(self.tag, step)
            time.sleep(self.delay)
            ctx.progress(step + 1, self.steps, preview=preview)
        return (self.value + self.steps,)


class Fail(Node):
    """Always raises."""

    CATEGORY = "test"
    RETURNS = (Output("INT"),)
    value: Annotated[int, Socket("INT")]
    message: Annotated[str, String()] = "boom"

    def execute(self, ctx) -> tuple:
        raise ValueError(self.message)


class Show(Node):
    """Output node: reports its input as UI text."""

    CATEGORY = "test"
    OUTPUT_NODE = True
    RETURNS = ()
    value: Annotated[int, Socket("INT")]

    def execute(self, ctx) -> NodeOutput:
        return NodeOutput(values=(), ui={"text": [str(self.value)]})


class SaveNumber(Node):
    """Output node: writes a tiny PNG into the output folder and reports it like SaveImage."""

    CATEGORY = "test"
    OUTPUT_NODE = True
    RETURNS = ()
    value: Annotated[int, Socket("INT")]
    prefix: Annotated[str, String()] = "number"

    def execute(self, ctx) -> NodeOutput:
        from PIL import Image

        name = f"{self.prefix}_{self.value}.png"
        folder = Path(ctx.services.output_dir)
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("RGBA", (4, 4), (self.value % 256, 0, 0, 128)).save(folder / name)
        return NodeOutput(values=(), ui={"images": [{"filename": name, "subfolder": "", "type": "output"}]})


NODE_CLASSES: list[Any] = [Number, Slow, Fail, Show, SaveNumber]


def register(registry: NodeRegistry, config: RuntimeConfig) -> None:
    """Entry-point style registrar (used by the subprocess tests through GRAPHENGINE_NODE_PACKS)."""
    registry.services = PackServices(output_dir=Path(config.output_dir))
    registry.register_all(NODE_CLASSES, python_module="tests.server.nodepack")


def make_registry(output_dir: Path) -> NodeRegistry:
    registry = NodeRegistry(services=PackServices(output_dir=output_dir))
    registry.register_all(NODE_CLASSES, python_module="tests.server.nodepack")
    return registry
