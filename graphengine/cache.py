"""Result cache keyed by input signature, bounded by a memory budget, evicting least-recently-used entries."""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .validation import Link, NodeCall

SizeOf = Callable[[Any], int]
MAX_DEFAULT_BYTES = 8 * 1024**3
# Node results kept at most (ComfyUI's --cache-lru N); bounds the bookkeeping of many tiny results, which a byte
# budget of gigabytes would let grow for millions of prompts.
DEFAULT_MAX_ENTRIES = 10_000
# What one entry costs beyond its outputs: the key, the entry and its lists, the LRU's link (measured ~0.5 KB).
ENTRY_OVERHEAD = 512


def default_max_bytes() -> int:
    """A quarter of physical RAM, at most 8 GiB (the model manager's default takes another half)."""
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return MAX_DEFAULT_BYTES
    return min(MAX_DEFAULT_BYTES, ram // 4)


def default_sizeof(value: Any, _depth: int = 0) -> int:
    """Bytes held by a value: `nbytes` of arrays/tensors (and of any object that reports what it keeps alive),
    summed through lists, tuples and dicts."""
    nbytes = getattr(value, "nbytes", None)
    if isinstance(nbytes, int):
        return nbytes
    if _depth < 6 and isinstance(value, (list, tuple)):
        return sum(default_sizeof(v, _depth + 1) for v in value)
    if _depth < 6 and isinstance(value, dict):
        return sum(default_sizeof(v, _depth + 1) for v in value.values())
    return sys.getsizeof(value)


@dataclass
class CacheEntry:
    outputs: list[list[Any]]  # one list of values per output slot (ComfyUI list semantics)
    ui: dict[str, Any] | None
    size: int = 0


class ResultCache:
    """An LRU of node results within `max_bytes` and `max_entries`; entries used by the running prompt are never
    evicted.

    Entries of other workflows stay while there is room, so switching back to a graph reuses its results.
    `max_bytes` defaults to `default_max_bytes()`; `sizeof` measures one entry's outputs (each entry also counts
    ENTRY_OVERHEAD bytes)."""

    def __init__(self, max_bytes: int | None = None, sizeof: SizeOf = default_sizeof,
                 max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        self.max_bytes = default_max_bytes() if max_bytes is None else max_bytes
        self.max_entries = max_entries
        self.sizeof = sizeof
        self._entries: OrderedDict[str, CacheEntry] = OrderedDict()
        self._total = 0
        self._lock = threading.RLock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    @property
    def total_bytes(self) -> int:
        return self._total

    def get(self, key: str) -> CacheEntry | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry

    def touch(self, keys: Iterable[str]) -> None:
        """Mark entries as recently used (every cached node of a running prompt belongs to the active workflow)."""
        with self._lock:
            for key in keys:
                if key in self._entries:
                    self._entries.move_to_end(key)

    def put(self, key: str, entry: CacheEntry, protected: Iterable[str] = ()) -> None:
        with self._lock:
            entry.size = self.sizeof(entry.outputs) + ENTRY_OVERHEAD
            old = self._entries.pop(key, None)
            if old is not None:
                self._total -= old.size
            self._entries[key] = entry
            self._total += entry.size
            if self._over():
                self.evict(protected={key, *protected})

    def _over(self) -> bool:
        return self._total > self.max_bytes or len(self._entries) > self.max_entries

    def evict(self, protected: Iterable[str] = ()) -> None:
        keep = set(protected)
        with self._lock:
            for key in list(self._entries):
                if not self._over():
                    break
                if key in keep:
                    continue
                self._total -= self._entries.pop(key).size

    def clear_except(self, keep: Iterable[str]) -> None:
        """Drop every entry whose key is not in `keep` (e.g. after an out-of-memory failure)."""
        keep = set(keep)
        with self._lock:
            for key in [k for k in self._entries if k not in keep]:
                self._total -= self._entries.pop(key).size

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._total = 0


class _Uncacheable(Exception):
    pass


def _reject(value: Any) -> Any:
    raise _Uncacheable(type(value).__name__)


_PRIMITIVES = (int, float, str, bool)


def _fingerprint_text(value: Any) -> str:
    if isinstance(value, float) and math.isnan(value):
        raise _Uncacheable("NaN fingerprint")
    return json.dumps(value, sort_keys=True, default=repr)


def compute_signatures(nodes: dict[str, NodeCall], order: list[str], services: Any = None,
                       known: dict[str, str] | None = None) -> dict[str, str]:
    """Input signature of every node: class, constants, fingerprint and the ancestors' signatures — never node ids
    (except for NOT_IDEMPOTENT nodes), so identical sub-graphs share results. `order` is a topological order;
    `known` holds signatures already computed for nodes outside `order` that these nodes may link to."""
    signatures: dict[str, str] = dict(known or {})
    for node_id in order:
        call = nodes[node_id]
        schema = call.schema
        parts: list[str] = [call.class_type]
        try:
            if schema.has_fingerprint:
                constants = {k: v for k, v in call.inputs.items() if not isinstance(v, Link)}
                try:
                    parts.append(_fingerprint_text(schema.cls.fingerprint(constants, services)))
                except _Uncacheable:
                    raise
                except Exception as exc:  # noqa: BLE001 - a failing hook means "always re-run", as in ComfyUI
                    raise _Uncacheable(str(exc)) from exc
            if schema.not_idempotent:
                parts.append(f"node={node_id!r}")
            for name in sorted(call.inputs):
                value = call.inputs[name]
                if isinstance(value, Link):
                    parts.append(f"{name}=@{signatures[value.node_id]}:{value.slot}")
                elif value is None or type(value) in _PRIMITIVES:
                    parts.append(f"{name}={value!r}")  # repr keeps 1, 1.0, True and '1' apart
                else:
                    parts.append(f"{name}=" + json.dumps(value, sort_keys=True, default=_reject))
            text = "\x1f".join(parts)
        except _Uncacheable:
            text = f"uncacheable:{uuid.uuid4().hex}"
        signatures[node_id] = hashlib.blake2b(text.encode(), digest_size=16).hexdigest()
    return signatures
