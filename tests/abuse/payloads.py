"""Hostile inputs for the abuse suite: deeply nested JSON and decompression-bomb PNGs (tiny on disk)."""

from __future__ import annotations

import struct
import zlib


def deep_json(depth: int, inner: str = "1") -> str:
    """`[[[…inner…]]]` nested `depth` arrays deep, as text (json.dumps itself would recurse)."""
    return "[" * depth + inner + "]" * depth


def deep_prompt_body(depth: int) -> str:
    return '{"prompt": ' + deep_json(depth) + "}"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(width: int, height: int) -> bytes:
    """A valid 1-bit greyscale PNG of width×height black pixels: a few KB that decode to width×height pixels.

    The rows are compressed from one repeated zero row, so building it allocates one row, never the image."""
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(1)
    block_rows = max(1, min(height, (1 << 22) // len(row)))
    full, rest = divmod(height, block_rows)
    block = row * block_rows
    parts = [compressor.compress(block) for _ in range(full)]
    parts += [compressor.compress(row * rest), compressor.flush()]
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", b"".join(parts))
            + _chunk(b"IEND", b""))
