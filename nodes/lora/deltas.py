"""Weight deltas of the LoRA family of adapters, as pure functions of their factor tensors.

Each returns ΔW with the layout of the weight it patches, computed in float32 (the caller casts). ``alpha`` scales
by ``alpha / rank`` (no alpha: scale 1). Conv kernels: down/up factors may be 2-D or 4-D; the product is reshaped
to the weight's shape, so a factor pair trained on a linear view of a 1×1 conv (or the reverse) fits too.

- LoRA / LoCon: ΔW = s · up @ down; with a Tucker core ``mid`` [r, r, kh, kw] (LoCon conv):
  ΔW[o, c, k, l] = s · Σ up[o, i] · mid[i, j, k, l] · down[j, c].
- LoHa: ΔW = s · (w1a @ w1b) ⊙ (w2a @ w2b) (Hadamard product); with Tucker cores t1/t2 each factor is
  rebuilt as core ×₀ w_a ×₁ w_b, where w_a is [r, out] and w_b is [r, in].
- LoKr: ΔW = s · w1 ⊗ w2 (Kronecker product); w1 = w1a @ w1b and w2 = w2a @ w2b when decomposed (the
  rank, hence the alpha scale, comes from the decomposed factor; two full factors ignore alpha); w2 may be Tucker.
- diff: ΔW is stored as is.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

Shape = Sequence[int]


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.float32)


def alpha_scale(alpha: float | None, rank: int | None) -> float:
    return float(alpha) / rank if alpha is not None and rank else 1.0


def tucker(core: torch.Tensor, w_in: torch.Tensor, w_out: torch.Tensor) -> torch.Tensor:
    """core [r_o, r_i, kh, kw], w_in [r_i, in], w_out [r_o, out] -> [out, in, kh, kw]."""
    return torch.einsum("ijkl,jc,io->ockl", _f32(core), _f32(w_in).flatten(1), _f32(w_out).flatten(1))


def fit(delta: torch.Tensor, shape: Shape) -> torch.Tensor:
    """Reshape a delta to the weight shape (raises ValueError when the element counts differ)."""
    shape = tuple(shape)
    if delta.shape[0] != shape[0] or delta.numel() != torch.Size(shape).numel():
        raise ValueError(f"delta of shape {list(delta.shape)} does not fit a weight of shape {list(shape)}")
    return delta.reshape(shape)


def lora_delta(up: torch.Tensor, down: torch.Tensor, alpha: float | None = None, mid: torch.Tensor | None = None,
               shape: Shape | None = None) -> torch.Tensor:
    """(alpha / rank) · up @ down; ``mid``: LoCon's Tucker core for k×k convs."""
    rank = down.shape[0]
    if mid is not None:
        delta = tucker(mid, down, _f32(up).flatten(1).T)
    else:
        delta = _f32(up).flatten(1) @ _f32(down).flatten(1)
        if shape is None and down.ndim == 4:
            delta = delta.reshape(up.shape[0], *down.shape[1:])
    delta = delta * alpha_scale(alpha, rank)
    return fit(delta, shape) if shape is not None else delta


def loha_delta(w1a: torch.Tensor, w1b: torch.Tensor, w2a: torch.Tensor, w2b: torch.Tensor, alpha: float | None = None,
               t1: torch.Tensor | None = None, t2: torch.Tensor | None = None,
               shape: Shape | None = None) -> torch.Tensor:
    """(alpha / rank) · (w1a @ w1b) ⊙ (w2a @ w2b), with optional Tucker cores."""
    rank = w1b.shape[0]
    m1 = tucker(t1, w1b, w1a) if t1 is not None else _f32(w1a) @ _f32(w1b).flatten(1)
    m2 = tucker(t2, w2b, w2a) if t2 is not None else _f32(w2a) @ _f32(w2b).flatten(1)
    delta = m1 * m2 * alpha_scale(alpha, rank)
    return fit(delta, shape) if shape is not None else delta


def lokr_delta(shape: Shape, alpha: float | None = None, w1: torch.Tensor | None = None,
               w1a: torch.Tensor | None = None, w1b: torch.Tensor | None = None, w2: torch.Tensor | None = None,
               w2a: torch.Tensor | None = None, w2b: torch.Tensor | None = None,
               t2: torch.Tensor | None = None) -> torch.Tensor:
    """(alpha / rank) · w1 ⊗ w2 for a weight of ``shape`` (each factor full or decomposed)."""
    shape = tuple(shape)
    rank = None
    if w1 is None:
        rank = w1b.shape[0]
        w1 = _f32(w1a) @ _f32(w1b)
    if w2 is None:
        rank = w2b.shape[0]
        w2 = tucker(t2, w2b, w2a) if t2 is not None else _f32(w2a) @ _f32(w2b).flatten(1)
    w1, w2 = _f32(w1), _f32(w2)
    if len(shape) == 4:
        if w2.ndim == 2:  # decomposed without Tucker: columns are in·kh·kw
            w2 = w2.reshape(w2.shape[0], -1, *shape[2:])
        w1 = w1.reshape(*w1.shape[:2], 1, 1)
    delta = torch.kron(w1.contiguous(), w2.contiguous()) * alpha_scale(alpha, rank)
    return fit(delta, shape)


def diff_delta(diff: torch.Tensor, shape: Shape) -> torch.Tensor:
    """A stored full difference, fitted to the weight."""
    return fit(_f32(diff), shape)
