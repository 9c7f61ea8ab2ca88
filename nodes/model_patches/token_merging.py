"""Token merging for Stable Diffusion (ToMe for SD, Bolya & Hoffman 2023): bipartite soft matching on a 2D grid.

The h×w tokens are split into destinations (one per sy×sx window, at a random place in it) and sources (the rest).
Each source is paired with its most similar destination (cosine similarity of the metric); the r sources with the
best pairings are merged into their destinations (a mean), so the merged sequence has N - r tokens: the kept
sources, then the destinations. Unmerging puts every token back at its place, a merged source taking its
destination's value. Pure functions of tensors; the random draw comes from the generator passed in."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Matching:
    """Which tokens a merge keeps, moves and where: indices into the N tokens (positions) or into the sources."""

    sources: torch.Tensor  # [S] token positions of the sources, ascending
    destinations: torch.Tensor  # [D] token positions of the destinations, ascending
    kept: torch.Tensor  # [B, S - r] indices into `sources` left as they are
    merged: torch.Tensor  # [B, r] indices into `sources` merged away
    targets: torch.Tensor  # [B, r] the destination (index into `destinations`) each merged source goes to

    @property
    def tokens(self) -> int:
        return int(self.sources.numel() + self.destinations.numel())

    @property
    def merged_tokens(self) -> int:
        """The token count after merging: N - r."""
        return self.tokens - int(self.merged.shape[1])


def destination_mask(h: int, w: int, sy: int, sx: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """[h, w] bool: one destination per full sy×sx window, at a random cell of it; cells of partial windows at the
    bottom/right edges are sources."""
    rows, cols = h // sy, w // sx
    cell = torch.randint(sy * sx, (rows, cols), generator=generator)
    mask = torch.zeros(h, w, dtype=torch.bool)
    y = torch.arange(rows).unsqueeze(1) * sy + cell // sx
    x = torch.arange(cols).unsqueeze(0) * sx + cell % sx
    mask[y, x] = True
    return mask


def rows_of(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x[b, index[b, i], :] for a per-batch [B, K] index (or a shared [K] one)."""
    if index.ndim == 1:
        return x[:, index.to(x.device)]
    return torch.gather(x, 1, index.to(x.device).unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def bipartite_matching(metric: torch.Tensor, h: int, w: int, r: int, *, sy: int = 2, sx: int = 2,
                       generator: torch.Generator | None = None) -> Matching | None:
    """The matching that merges r of the [B, h·w, C] tokens (at most all sources), or None when nothing merges
    (r <= 0, or a grid one token high or wide, or smaller than one window)."""
    batch, tokens, _ = metric.shape
    if tokens != h * w:
        raise ValueError(f"{tokens} tokens do not form a {h}x{w} grid")
    if r <= 0 or h == 1 or w == 1:
        return None
    is_destination = destination_mask(h, w, sy, sx, generator).flatten().to(metric.device)
    sources = torch.nonzero(~is_destination).squeeze(1)
    destinations = torch.nonzero(is_destination).squeeze(1)
    if destinations.numel() == 0:  # smaller than one window
        return None
    unit = metric / metric.norm(dim=-1, keepdim=True)
    scores = unit[:, sources] @ unit[:, destinations].transpose(-1, -2)  # [B, S, D]
    best, best_destination = scores.max(dim=-1)
    order = best.argsort(dim=-1, descending=True)
    r = min(r, sources.numel())
    merged = order[:, :r]
    return Matching(sources=sources, destinations=destinations, kept=order[:, r:], merged=merged,
                    targets=torch.gather(best_destination, 1, merged))


def merge(x: torch.Tensor, matching: Matching) -> torch.Tensor:
    """[B, N, C] -> [B, N - r, C]: the kept sources, then the destinations averaged with the sources merged in."""
    sources, destinations = x[:, matching.sources], x[:, matching.destinations]
    kept = rows_of(sources, matching.kept)
    moved = rows_of(sources, matching.merged)
    where = matching.targets.unsqueeze(-1).expand(-1, -1, x.shape[-1])
    destinations = destinations.scatter_reduce(1, where, moved, reduce="mean", include_self=True)
    return torch.cat([kept, destinations], dim=1)


def unmerge(y: torch.Tensor, matching: Matching) -> torch.Tensor:
    """[B, N - r, C] -> [B, N, C]: every token back at its place; a merged source takes its destination's value."""
    batch, _, channels = y.shape
    kept_count = matching.kept.shape[1]
    kept, destinations = y[:, :kept_count], y[:, kept_count:]
    out = torch.empty(batch, matching.tokens, channels, dtype=y.dtype, device=y.device)
    out[:, matching.destinations] = destinations
    positions = matching.sources.to(y.device)
    for index, values in ((matching.kept, kept), (matching.merged, rows_of(destinations, matching.targets))):
        place = positions[index.to(y.device)].unsqueeze(-1).expand(-1, -1, channels)
        out.scatter_(1, place, values)
    return out
