"""Process memory: the machine's RAM, this process's resident size, out-of-memory detection and the RSS guard."""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

log = logging.getLogger("graphengine.memory")

GIB = 1024**3
# What allocators say when an allocation fails (CUDA: "out of memory"; PyTorch's CPU allocator: "not enough memory").
OUT_OF_MEMORY_TEXTS = ("out of memory", "not enough memory", "can't allocate memory")


class OutOfMemoryError(MemoryError):
    """The process went over its memory budget while a node ran (raised at the node's next cancellation check)."""


def physical_memory() -> int | None:
    """Bytes of RAM in this machine, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def process_rss() -> int | None:
    """This process's resident set size in bytes (Linux /proc; None elsewhere)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            resident = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return resident * os.sysconf("SC_PAGE_SIZE")


def is_out_of_memory(exc: BaseException) -> bool:
    """MemoryError, or a library's out-of-memory error (torch's OutOfMemoryError, CUDA's 'out of memory')."""
    if isinstance(exc, MemoryError) or "OutOfMemory" in type(exc).__name__:
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(s in text for s in OUT_OF_MEMORY_TEXTS)


def format_bytes(value: float) -> str:
    return f"{value / GIB:.2f} GiB" if value >= GIB / 10 else f"{value / 1024**2:.1f} MiB"


class MemoryGuard:
    """While active, samples the process RSS every `interval` seconds and, over `budget` bytes, cancels `cancel`
    (a CancelToken) with an OutOfMemoryError, so the running node fails at its next cancellation check."""

    def __init__(self, budget: int | None, cancel: Any, interval: float = 0.05) -> None:
        self.budget = budget
        self.cancel = cancel
        self.interval = interval
        self.peak = 0
        self.tripped = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> MemoryGuard:
        if self.budget and process_rss() is not None:
            self._thread = threading.Thread(target=self._watch, name="graphengine-memory-guard", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            rss = process_rss() or 0
            self.peak = max(self.peak, rss)
            if rss > self.budget and not self.tripped:
                self.tripped = True
                log.warning("memory guard: RSS %s over the budget %s; cancelling the prompt",
                            format_bytes(rss), format_bytes(self.budget))
                self.cancel.cancel(OutOfMemoryError(
                    f"Out of memory: the server process reached {format_bytes(rss)}, over its memory budget of "
                    f"{format_bytes(self.budget)} (raise it with --memory-budget)"))
