"""A persistent prompt queue and history in SQLite (WAL), with ComfyUI's item and history shapes.

Queue items are ComfyUI's 5-element lists `[number, prompt_id, prompt, extra_data, outputs_to_execute]`; the lowest
`number` runs first (ties: oldest first). A prompt is `pending` or `running` in the queue table; finishing it writes
its history entry and removes it from the queue in one transaction, so it is never in neither place. After a crash
the prompt that was running is pending again and runs first among equals, with one more `attempts` counted (a
prompt that keeps killing the process can then be failed instead of run again); a clean stop (`requeue`) counts
nothing."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS queue (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    prompt_id TEXT UNIQUE NOT NULL,
    number REAL NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'running')),
    item TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS queue_order ON queue (state, number, seq);
CREATE TABLE IF NOT EXISTS history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    prompt_id TEXT UNIQUE NOT NULL,
    entry TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""

DEFAULT_MAX_HISTORY = 10000


class DuplicatePromptError(ValueError):
    """A prompt with this id is already pending or running."""


@dataclass(frozen=True)
class QueueItem:
    number: int | float
    prompt_id: str
    prompt: dict[str, Any]
    extra_data: dict[str, Any]
    outputs: list[str]
    attempts: int = 0  # starts that ended with the process dying while this prompt ran (not part of the wire shape)

    def as_list(self) -> list[Any]:
        """ComfyUI's wire shape."""
        return [self.number, self.prompt_id, self.prompt, self.extra_data, list(self.outputs)]

    @classmethod
    def from_list(cls, value: list[Any], attempts: int = 0) -> QueueItem:
        number, prompt_id, prompt, extra_data, outputs = value[:5]
        return cls(number, prompt_id, prompt, extra_data, list(outputs), attempts)

    @property
    def client_id(self) -> str | None:
        client_id = self.extra_data.get("client_id")
        return client_id if isinstance(client_id, str) and client_id else None


def _dumps(value: Any) -> str:
    # UI outputs come from arbitrary node code: anything not JSON-native is stored as its string form.
    return json.dumps(value, default=str)


class PromptQueue:
    """Thread-safe; `get` blocks the worker thread while HTTP handlers `put` from the event loop thread."""

    def __init__(self, path: str | Path = ":memory:", max_history: int = DEFAULT_MAX_HISTORY) -> None:
        self.path = str(path)
        self.max_history = max_history
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._closed = False
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL survives a killed process
            self._db.executescript(_SCHEMA)
            self._migrate()
            # Still 'running' at open: the process died during it. Count the attempt, then queue it again.
            self._db.execute("UPDATE queue SET state = 'pending', attempts = attempts + 1 WHERE state = 'running'")

    def _migrate(self) -> None:
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(queue)")}
        if "attempts" not in columns:  # databases written before attempts were counted
            self._db.execute("ALTER TABLE queue ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0")

    # -- numbering -------------------------------------------------------------------------------------------------

    def next_number(self, front: bool = False) -> int:
        """ComfyUI's priority counter: increments on every submission; `front` items get its negative."""
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            row = self._db.execute("SELECT value FROM counters WHERE name = 'number'").fetchone()
            value = row[0] if row else 0
            self._db.execute("INSERT OR REPLACE INTO counters (name, value) VALUES ('number', ?)", (value + 1,))
        return -value if front else value

    # -- queue -----------------------------------------------------------------------------------------------------

    def put(self, item: QueueItem) -> None:
        with self._lock:
            try:
                self._db.execute("INSERT INTO queue (prompt_id, number, state, item) VALUES (?, ?, 'pending', ?)",
                                 (item.prompt_id, float(item.number), _dumps(item.as_list())))
            except sqlite3.IntegrityError:
                raise DuplicatePromptError(item.prompt_id) from None
            self._changed.notify_all()

    def get(self, timeout: float | None = None) -> QueueItem | None:
        """Take the next pending prompt and mark it running; None on timeout or when closed."""
        with self._lock:
            row = self._next_pending()
            if row is None and not self._closed:
                self._changed.wait(timeout)
                row = self._next_pending()
            if row is None:
                return None
            self._db.execute("UPDATE queue SET state = 'running' WHERE seq = ?", (row[0],))
            self._changed.notify_all()
            return QueueItem.from_list(json.loads(row[1]), row[2])

    def _next_pending(self) -> tuple[int, str, int] | None:
        if self._closed:
            return None
        return self._db.execute("SELECT seq, item, attempts FROM queue WHERE state = 'pending' "
                                "ORDER BY number, seq LIMIT 1").fetchone()

    def _items(self, state: str) -> list[QueueItem]:
        with self._lock:
            rows = self._db.execute("SELECT item, attempts FROM queue WHERE state = ? ORDER BY number, seq",
                                    (state,))
            return [QueueItem.from_list(json.loads(r[0]), r[1]) for r in rows.fetchall()]

    def pending(self) -> list[QueueItem]:
        return self._items("pending")

    def running(self) -> list[QueueItem]:
        return self._items("running")

    def item(self, prompt_id: str) -> tuple[str, QueueItem] | None:
        """(state, item) of a queued prompt."""
        with self._lock:
            row = self._db.execute("SELECT state, item, attempts FROM queue WHERE prompt_id = ?",
                                   (prompt_id,)).fetchone()
        return (row[0], QueueItem.from_list(json.loads(row[1]), row[2])) if row else None

    def remaining(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM queue").fetchone()[0]

    def delete_pending(self, prompt_ids: Iterable[str]) -> list[str]:
        """Remove pending prompts (running ones are left alone, as in ComfyUI); returns the ids removed."""
        removed = []
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            for prompt_id in prompt_ids:
                cur = self._db.execute("DELETE FROM queue WHERE prompt_id = ? AND state = 'pending'",
                                       (str(prompt_id),))
                if cur.rowcount:
                    removed.append(str(prompt_id))
            self._changed.notify_all()
        return removed

    def clear_pending(self) -> None:
        with self._lock:
            self._db.execute("DELETE FROM queue WHERE state = 'pending'")
            self._changed.notify_all()

    def requeue(self, prompt_id: str) -> None:
        """Put a running prompt back in front of its peers (a clean stop mid-run: no attempt is counted)."""
        with self._lock:
            self._db.execute("UPDATE queue SET state = 'pending' WHERE prompt_id = ?", (prompt_id,))
            self._changed.notify_all()

    def finish(self, prompt_id: str, outputs: dict[str, Any], status: dict[str, Any],
               meta: dict[str, Any] | None = None) -> dict[str, Any]:
        """Write the history entry and drop the prompt from the queue atomically; returns the entry."""
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            row = self._db.execute("SELECT item FROM queue WHERE prompt_id = ?", (prompt_id,)).fetchone()
            if row is None:
                raise KeyError(prompt_id)
            entry = {"prompt": json.loads(row[0]), "outputs": outputs, "status": status, "meta": meta or {}}
            self._db.execute("DELETE FROM history WHERE prompt_id = ?", (prompt_id,))
            self._db.execute("INSERT INTO history (prompt_id, entry) VALUES (?, ?)", (prompt_id, _dumps(entry)))
            self._db.execute("DELETE FROM queue WHERE prompt_id = ?", (prompt_id,))
            self._db.execute("DELETE FROM history WHERE seq NOT IN "
                             "(SELECT seq FROM history ORDER BY seq DESC LIMIT ?)", (self.max_history,))
            self._changed.notify_all()
        return json.loads(_dumps(entry))

    # -- history ---------------------------------------------------------------------------------------------------

    def history(self, max_items: int | None = None, offset: int | None = None) -> dict[str, Any]:
        """ComfyUI's /history: oldest first; `max_items` alone gives the newest N; `offset` skips from the start."""
        with self._lock:
            total = self._db.execute("SELECT COUNT(*) FROM history").fetchone()[0]
            start = max(offset, 0) if offset is not None else \
                (max(total - max_items, 0) if max_items is not None else 0)
            limit = max_items if max_items is not None else -1
            rows = self._db.execute("SELECT prompt_id, entry FROM history ORDER BY seq LIMIT ? OFFSET ?",
                                    (limit, start)).fetchall()
        return {pid: json.loads(entry) for pid, entry in rows}

    def history_entry(self, prompt_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT entry FROM history WHERE prompt_id = ?", (prompt_id,)).fetchone()
        return json.loads(row[0]) if row else None

    def delete_history(self, prompt_ids: Iterable[str]) -> None:
        with self._lock, self._db:
            self._db.executemany("DELETE FROM history WHERE prompt_id = ?", [(str(p),) for p in prompt_ids])

    def clear_history(self) -> None:
        with self._lock:
            self._db.execute("DELETE FROM history")

    def contains(self, prompt_id: str) -> bool:
        with self._lock:
            return (self._db.execute("SELECT 1 FROM queue WHERE prompt_id = ?", (prompt_id,)).fetchone() is not None
                    or self._db.execute("SELECT 1 FROM history WHERE prompt_id = ?", (prompt_id,)).fetchone()
                    is not None)

    # -- lifetime --------------------------------------------------------------------------------------------------

    def wake(self) -> None:
        with self._lock:
            self._changed.notify_all()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._changed.notify_all()
            self._db.close()
