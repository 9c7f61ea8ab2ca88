"""What a cached node result really keeps in memory (the result cache's `sizeof` for this node pack)."""

from __future__ import annotations

from typing import Any

import torch

from graphengine import default_sizeof

MAX_DEPTH = 8


def result_sizeof(value: Any) -> int:
    """Bytes held by a node result: each tensor's whole storage (a view keeps all of it), counted once per result;
    handles by their `nbytes` (0 when the model manager owns their weights); summed through lists, tuples and dicts
    (CONDITIONING's [[cond, {"pooled_output": …}]], LATENT dicts) and objects listing what they keep alive in
    `held_values()` (a conditioning's ControlNet chain: hint images and handles)."""
    seen: set[int] = set()

    def walk(item: Any, depth: int) -> int:
        if isinstance(item, torch.Tensor):
            try:
                storage = item.untyped_storage()
            except (RuntimeError, NotImplementedError):  # sparse and other storage-less layouts
                return item.element_size() * item.nelement()
            pointer = storage.data_ptr()
            if pointer in seen:
                return 0
            if pointer:
                seen.add(pointer)
            return storage.nbytes()
        if depth < MAX_DEPTH and isinstance(item, (list, tuple)):
            return sum(walk(v, depth + 1) for v in item)
        if depth < MAX_DEPTH and isinstance(item, dict):
            return sum(walk(v, depth + 1) for v in item.values())
        if depth < MAX_DEPTH and hasattr(item, "held_values"):  # e.g. a ControlNet applied to a conditioning
            return sum(walk(v, depth + 1) for v in item.held_values())
        return default_sizeof(item)

    return walk(value, 0)
