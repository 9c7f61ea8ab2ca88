"""Small pure-Python nodes that show the node contract; used by the README, the tests and the benchmarks.

Register them with `NodeRegistry().register_all(EXAMPLE_NODES)` (they are not part of any default pack)."""

from __future__ import annotations

from typing import Annotated, Any

from .node import Node, NodeOutput
from .spec import Boolean, Int, Output, Socket, String


class Number(Node):
    """An integer constant."""

    CATEGORY = "examples"
    RETURNS = (Output("INT", name="value"),)
    value: Annotated[int, Int(min=-(2**31), max=2**31 - 1, tooltip="the number")] = 0

    def execute(self, ctx) -> tuple[int]:
        return (self.value,)


class Add(Node):
    """Add two integers."""

    CATEGORY = "examples"
    RETURNS = (Output("INT"),)
    a: Annotated[int, Socket("INT")]
    b: Annotated[int, Int(min=-(2**31), max=2**31 - 1)] = 1

    def execute(self, ctx) -> tuple[int]:
        return (self.a + self.b,)


class CountTo(Node):
    """Count from 1 to `steps`, reporting progress at every step (cancellable)."""

    CATEGORY = "examples"
    RETURNS = (Output("INT"),)
    steps: Annotated[int, Int(min=1, max=10_000)] = 10

    def execute(self, ctx) -> tuple[int]:
        for step in range(1, self.steps + 1):
            ctx.progress(step, self.steps)
        return (self.steps,)


class Range(Node):
    """A list of integers 0..count-1 (each becomes a separate call of downstream nodes)."""

    CATEGORY = "examples"
    RETURNS = (Output("INT", is_list=True),)
    count: Annotated[int, Int(min=0, max=10_000)] = 3

    def execute(self, ctx) -> tuple[list[int]]:
        return (list(range(self.count)),)


class Sum(Node):
    """Sum a whole list of integers in one call."""

    CATEGORY = "examples"
    INPUT_IS_LIST = True
    RETURNS = (Output("INT"),)
    values: Annotated[list[int], Socket("INT")]

    def execute(self, ctx) -> tuple[int]:
        return (sum(self.values),)


class Switch(Node):
    """Pass one of two inputs; only the chosen branch is evaluated (lazy inputs)."""

    CATEGORY = "examples"
    RETURNS = (Output("*"),)
    select: Annotated[bool, Boolean(label_on="on_true", label_off="on_false")] = True
    on_true: Annotated[Any, Socket("*", lazy=True)] = None
    on_false: Annotated[Any, Socket("*", lazy=True)] = None

    def check_lazy_status(self, ctx) -> list[str]:
        wanted = "on_true" if self.select else "on_false"
        return [wanted] if getattr(self, wanted) is None else []

    def execute(self, ctx) -> tuple[Any]:
        return (self.on_true if self.select else self.on_false,)


class Fail(Node):
    """Raise an error with the given message."""

    CATEGORY = "examples"
    RETURNS = (Output("INT"),)
    message: Annotated[str, String()] = "boom"
    value: Annotated[Any, Socket("*", optional=True)] = None

    def execute(self, ctx) -> tuple[int]:
        raise RuntimeError(self.message)


class ShowValue(Node):
    """Show a value in the UI (an output node)."""

    CATEGORY = "examples"
    OUTPUT_NODE = True
    RETURNS = ()
    value: Annotated[Any, Socket("*")]

    def execute(self, ctx) -> NodeOutput:
        return NodeOutput(ui={"text": [str(self.value)]})


EXAMPLE_NODES: list[type[Node]] = [Number, Add, CountTo, Range, Sum, Switch, Fail, ShowValue]


def register(registry: Any, config: Any = None) -> None:
    """Node-pack entry point (e.g. `GRAPHENGINE_NODE_PACKS=graphengine.examples:register`)."""
    registry.register_all(EXAMPLE_NODES, python_module="graphengine.examples")
