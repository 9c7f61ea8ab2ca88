"""Long tensor work cut into units, with a progress / cancellation call between units.

`Progress` callables are called as `progress(done, total)` before each unit and once after the last, and raise to
stop the work: `ExecutionContext.progress` reports ComfyUI progress and raises `Interrupted` once the prompt is
cancelled; `cancel_checks(ctx.check_cancelled)` only checks. Work that fits in one unit makes no call at all, so
small batches run exactly as one call and send no extra events.

Batches are cut into row chunks by a budget of pixels per call, larger on accelerators than on CPU, so that one
unit is a fraction of a second to a few seconds of work.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import torch

Progress = Callable[[int, int], None]
Interrupt = Callable[[], None]
Unit = TypeVar("Unit")
Result = TypeVar("Result")

# Latent pixels (rows × height × width) per network call; SD1.5 at 512 px keeps its cond + uncond rows together.
UNET_CALL_PIXELS = {"cpu": 8192, "accelerator": 32768}
VAE_CALL_PIXELS = {"cpu": 512, "accelerator": 16384}
# Tensor elements (input or output, whichever is bigger) per chunk of a plain op (resize, invert) over a batch.
BATCH_OP_ELEMENTS = 1 << 22


def cancel_checks(interrupt: Interrupt) -> Progress:
    """A Progress that only checks for cancellation (no events)."""
    return lambda done, total: interrupt()


def device_budget(budgets: dict[str, int], device: torch.device | str) -> int:
    return budgets["cpu" if torch.device(device).type == "cpu" else "accelerator"]


def rows_per_call(item_pixels: int, budget: int) -> int:
    """How many batch rows of `item_pixels` each fit in one unit of `budget` pixels (at least one)."""
    return max(1, budget // max(1, item_pixels))


def row_chunks(total: int, rows: int) -> list[slice]:
    return [slice(start, min(start + rows, total)) for start in range(0, total, max(1, rows))]


def run_units(units: Sequence[Unit], fn: Callable[[Unit], Result], progress: Progress | None) -> list[Result]:
    """`fn` over `units` in order, calling progress(i, n) before unit i and (n, n) after the last when n > 1."""
    count = len(units)
    report = progress if progress is not None and count > 1 else None
    results = []
    for index, unit in enumerate(units):
        if report is not None:
            report(index, count)
        results.append(fn(unit))
    if report is not None:
        report(count, count)
    return results


def map_batch(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, interrupt: Interrupt,
              out_elements: int = 0) -> torch.Tensor:
    """fn(x) for a per-item op, in chunks of about BATCH_OP_ELEMENTS with `interrupt()` between chunks;
    `out_elements` is the size of one output item when it is bigger than an input item."""
    item = max(x[0].numel() if x.shape[0] else 0, out_elements)
    return map_rows(fn, x, rows_per_call(item, BATCH_OP_ELEMENTS), cancel_checks(interrupt))


def map_rows(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, rows: int,
             progress: Progress | None = None) -> torch.Tensor:
    """fn(x) computed on chunks of `rows` batch rows and concatenated (one call when the batch fits)."""
    chunks = row_chunks(x.shape[0], rows)
    if len(chunks) <= 1:
        return fn(x)
    return torch.cat(run_units(chunks, lambda rows_: fn(x[rows_]), progress))
