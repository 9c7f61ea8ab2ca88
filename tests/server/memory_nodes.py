"""Test nodes that run out of memory: one raises MemoryError, one allocates in steps (checking cancellation)."""

from __future__ import annotations

import time
from typing import Annotated

from graphengine import Int, Node, Output, Socket


class Hungry(Node):
    """Raises MemoryError, as an allocation that does not fit would."""

    CATEGORY = "test"
    RETURNS = (Output("INT"),)
    value: Annotated[int, Socket("INT")]

    def execute(self, ctx) -> tuple:
        raise MemoryError()


class Allocate(Node):
    """Holds `steps` blocks of `block_mb` MiB, written so they are resident, checking cancellation after each."""

    CATEGORY = "test"
    RETURNS = (Output("INT"),)
    value: Annotated[int, Socket("INT")]
    block_mb: Annotated[int, Int(min=1, max=1024)] = 32
    steps: Annotated[int, Int(min=1, max=1000)] = 10

    def execute(self, ctx) -> tuple:
        blocks = []
        for _ in range(self.steps):
            blocks.append(b"\x01" * (self.block_mb * 1024 * 1024))
            time.sleep(0.02)  # lets the memory guard sample between allocations
            ctx.check_cancelled()
        return (self.value + len(blocks),)


MEMORY_NODES = [Hungry, Allocate]
