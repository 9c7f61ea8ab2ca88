"""The normalized patch record: one adapter of one module, whatever file format it came from."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from .deltas import diff_delta, fit, lokr_delta, loha_delta, lora_delta

# Factor names each kind may carry (``diff_b``, a bias difference, may come with any kind).
KIND_PARTS: dict[str, tuple[str, ...]] = {
    "lora": ("up", "down", "mid"),
    "loha": ("w1a", "w1b", "w2a", "w2b", "t1", "t2"),
    "lokr": ("w1", "w1a", "w1b", "w2", "w2a", "w2b", "t2"),
    "diff": ("diff",),
    "set": ("set",),
}
_REQUIRED: dict[str, tuple[tuple[str, ...], ...]] = {
    "lora": (("up",), ("down",)),
    "loha": (("w1a",), ("w1b",), ("w2a",), ("w2b",)),
    "lokr": (("w1", "w1a"), ("w2", "w2a")),
    "diff": (),
    "set": (("set",),),
}
_PAIRS = {"w1a": "w1b", "w2a": "w2b"}


@dataclass(frozen=True)
class LoraPatch:
    """``kind`` in KIND_PARTS; ``tensors`` its factors by part name (as stored, any dtype) plus an optional
    ``diff_b``; ``alpha`` from the file (None: scale 1); ``keys``: the file's keys it was built from."""

    kind: str
    tensors: Mapping[str, torch.Tensor] = field(repr=False)
    alpha: float | None = None
    keys: tuple[str, ...] = ()

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}={list(v.shape)}" for k, v in self.tensors.items())
        return f"LoraPatch({self.kind}, alpha={self.alpha}, {shapes})"

    def missing_parts(self) -> list[str]:
        """Required factors that are absent (an incomplete adapter)."""
        missing = [" or ".join(options) for options in _REQUIRED[self.kind]
                   if not any(o in self.tensors for o in options)]
        missing += [b for a, b in _PAIRS.items() if a in self.tensors and b not in self.tensors]
        if self.kind == "diff" and not self.tensors:
            missing.append("diff or diff_b")
        return missing

    @property
    def patches_weight(self) -> bool:
        return self.kind != "diff" or "diff" in self.tensors

    def weight_delta(self, weight: torch.Tensor) -> torch.Tensor:
        """ΔW (float32) for this weight, on the weight's device (``meta`` weights give shapes only)."""
        parts = {k: v.to(weight.device) for k, v in self.tensors.items() if k != "diff_b"}
        shape = weight.shape
        if self.kind == "lora":
            return lora_delta(parts["up"], parts["down"], self.alpha, parts.get("mid"), shape)
        if self.kind == "loha":
            return loha_delta(parts["w1a"], parts["w1b"], parts["w2a"], parts["w2b"], self.alpha,
                              parts.get("t1"), parts.get("t2"), shape)
        if self.kind == "lokr":
            return lokr_delta(shape, self.alpha, **parts)
        if self.kind == "diff":
            return diff_delta(parts["diff"], shape)
        return fit(parts["set"].to(torch.float32), shape) - weight.to(torch.float32)

    def bias_delta(self, bias: torch.Tensor) -> torch.Tensor:
        return diff_delta(self.tensors["diff_b"].to(bias.device), bias.shape)
