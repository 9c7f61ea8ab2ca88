"""One websocket client's pending frames, and which of them may be merged when the client falls behind.

`status`, `progress` and `progress_state` frames describe a state, so only the newest of a kind matters: a newer one
takes the place of the pending one of the same key (status; progress: same prompt and node; progress_state: same
prompt), provided no unmergeable frame was queued after the older one, so such a frame never moves past an event that
carries a result (executing, executed, execution_*: never merged, never dropped). Previews merge the same way
(same prompt and node) and are the only frames ever dropped."""

from __future__ import annotations

from collections import deque
from typing import Any

FRAME_OVERHEAD = 96  # bytes a queued frame costs beyond its payload (the entry, the deque slot)

Key = tuple[Any, ...]


def message_key(message: dict[str, Any]) -> Key | None:
    """The merge key of a JSON message, or None for one that must be delivered as it is."""
    kind = message.get("type")
    data = message.get("data")
    if not isinstance(data, dict):
        return None
    if kind == "status" and "sid" not in data:
        return ("status",)
    if kind == "progress":
        return ("progress", data.get("prompt_id"), data.get("node"))
    if kind == "progress_state":
        return ("progress_state", data.get("prompt_id"))
    return None


def preview_key(metadata: dict[str, Any]) -> Key:
    return ("preview", metadata.get("prompt_id"), metadata.get("node_id"))


class Frame:
    __slots__ = ("payload", "key", "epoch", "size")

    def __init__(self, payload: Any, key: Key | None, epoch: int, size: int) -> None:
        self.payload = payload
        self.key = key
        self.epoch = epoch
        self.size = size


class Outbox:
    """A FIFO of frames with byte accounting. `epoch` counts the unmergeable frames queued so far: a pending
    frame can absorb a newer one only while no unmergeable frame has been queued after it."""

    def __init__(self) -> None:
        self._frames: deque[Frame] = deque()
        self._latest: dict[Key, Frame] = {}
        self._epoch = 0
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._frames)

    def push(self, payload: Any, key: Key | None, size: int) -> None:
        frame = Frame(payload, key, self._epoch, size + FRAME_OVERHEAD)
        self._frames.append(frame)
        self.bytes += frame.size
        if key is None:
            self._epoch += 1
        else:
            self._latest[key] = frame

    def merge(self, payload: Any, key: Key, size: int) -> bool:
        """Put `payload` in place of the pending frame with `key` if nothing unmergeable follows that frame."""
        frame = self._latest.get(key)
        if frame is None or frame.epoch != self._epoch:
            return False
        self.bytes += size + FRAME_OVERHEAD - frame.size
        frame.payload, frame.size = payload, size + FRAME_OVERHEAD
        return True

    def pop(self) -> Any:
        frame = self._frames.popleft()
        self.bytes -= frame.size
        if frame.key is not None and self._latest.get(frame.key) is frame:
            del self._latest[frame.key]
        return frame.payload

    def discard(self, kind: type) -> int:
        """Remove every pending frame whose payload is a `kind`; returns how many."""
        kept = deque(f for f in self._frames if not isinstance(f.payload, kind))
        removed = len(self._frames) - len(kept)
        if removed:
            self._frames = kept
            self._latest = {f.key: f for f in kept if f.key is not None}
            self.bytes = sum(f.size for f in kept)
        return removed

    def clear(self) -> None:
        self._frames.clear()
        self._latest.clear()
        self.bytes = 0
