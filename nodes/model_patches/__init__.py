"""Behaviour patches of the live diffusion / text-encoder modules (FreeU, attention scaling, Deep Shrink, HyperTile,
ToMe, hypernetworks) and their ComfyUI nodes. A patch is data on the MODEL/CLIP handle with an `applied(module)`
context manager that changes only that module instance (hooks on its submodules) for the block and removes every
hook after."""

from typing import Any


def required(value: Any, socket: str, node: str) -> Any:
    """The input value, or a clear error when an upstream loader gave no such model."""
    if value is None:
        raise ValueError(f"{node}: the {socket} input is empty (the checkpoint has no {socket.lower()})")
    return value
