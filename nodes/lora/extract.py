"""Extracting a LoRA file from weight differences (ComfyUI's LoraSave layout and key names).

Each weight difference of two or more dimensions becomes ``lora_up`` (U·S) and ``lora_down`` (Vh) of its truncated
SVD (convolutions flattened over their kernel, the up factor 1x1), no ``alpha`` key (scale 1); 1-D weights become
``.diff`` and biases ``.diff_b``; ``full_diff`` writes every weight difference whole as ``.diff``. Factors are stored
in float16. Unlike ComfyUI, the rank is bounded by the flattened matrix (so a full-rank extraction reproduces a
kernel difference exactly) and factors are not clamped; all-zero differences are left out."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

LORA_TYPES = ("standard", "full_diff")
STORED_DTYPE = torch.float16


def svd_factors(diff: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(up [out, r(,1,1)], down [r, in(, kh, kw)]) with up @ down ≈ diff, r = min(rank, matrix rank bound)."""
    matrix = diff.flatten(start_dim=1).to(torch.float32)
    rank = min(rank, *matrix.shape)
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    up, down = u[:, :rank] * s[:rank], vh[:rank]
    if diff.ndim > 2:
        up = up.reshape(*up.shape, *([1] * (diff.ndim - 2)))
        down = down.reshape(rank, *diff.shape[1:])
    return up, down


def lora_state_dict(params: Iterable[tuple[str, str, torch.Tensor]], rank: int, lora_type: str, bias_diff: bool,
                    check: Callable[[], None] | None = None) -> dict[str, torch.Tensor]:
    """LoRA file entries from ``(module key, "weight" | "bias", difference)`` triples; ``check()`` runs before each
    (it may raise to stop)."""
    if lora_type not in LORA_TYPES:
        raise ValueError(f"lora_type must be one of {LORA_TYPES}, got {lora_type!r}")
    out: dict[str, torch.Tensor] = {}

    def store(key: str, value: torch.Tensor) -> None:
        out[key] = value.detach().to("cpu", STORED_DTYPE).contiguous()

    for module_key, kind, diff in params:
        if check is not None:
            check()
        if not torch.any(diff):
            continue
        if kind == "bias":
            if bias_diff:
                store(f"{module_key}.diff_b", diff)
        elif lora_type == "full_diff":
            store(f"{module_key}.diff", diff)
        elif diff.ndim < 2:
            if bias_diff:
                store(f"{module_key}.diff", diff)
        else:
            up, down = svd_factors(diff, rank)
            store(f"{module_key}.lora_up.weight", up)
            store(f"{module_key}.lora_down.weight", down)
    return out
