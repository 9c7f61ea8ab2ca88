"""Prompt → 77-slot CLIP windows with per-slot weights, as ComfyUI builds them.

Each weighted chunk of text is BPE-tokenized as a whole into one token group; each embedding contributes a group
of its vectors. Groups are packed into windows of `start + 75 slots + end` (padded to 77):
- a group that fits in the current window is appended;
- a group of 8 or more slots that does not fit is cut: the part that fits fills the window, the rest continues in
  the next one;
- a shorter group that does not fit closes the window (end token + padding) and moves whole to the next window.
Start/end/pad slots have weight 1.0. SD1-style encoders pad with the end token, OpenCLIP ones with id 0 ("!").
Huge prompts are tokenized in pieces cut at whitespace (BPE tokens never span whitespace, so the ids are the same),
about TEXT_UNIT_CHARS characters per unit of work, with progress(i, n) between units.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..work import Progress, run_units
from .prompt_parser import PromptChunk, parse_prompt

log = logging.getLogger(__name__)

WINDOW = 77
UNSPLIT_GROUP_LIMIT = 8  # groups shorter than this are never cut across windows
TEXT_UNIT_CHARS = 50_000
_WHITESPACE = re.compile(r"\s")

Slot = tuple[int | torch.Tensor, float]  # a token id or one embedding vector, with its weight
Window = list[Slot]
EmbeddingFinder = Callable[[str], "torch.Tensor | None"]


@dataclass(frozen=True)
class TokenizerSpec:
    """Special ids and window size of one text encoder's tokenization."""

    start_id: int
    end_id: int
    pad_id: int
    window: int = WINDOW


def text_token_ids(tokenizer, text: str) -> list[int]:
    """BPE ids of `text` without start/end tokens."""
    if not text:
        return []
    return list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


def text_pieces(text: str, size: int = TEXT_UNIT_CHARS) -> list[str]:
    """`text` cut at whitespace into consecutive pieces of at least `size` characters (the last may be shorter)."""
    pieces, start = [], 0
    while len(text) - start > size:
        found = _WHITESPACE.search(text, start + size)
        if found is None:
            break
        pieces.append(text[start:found.start()])
        start = found.start()
    pieces.append(text[start:])
    return pieces


def _embedding_groups(chunk: PromptChunk, find: EmbeddingFinder) -> tuple[list[Slot] | None, str]:
    """(vector slots or None, text to tokenize after them), with ComfyUI's trailing-comma retry."""
    name, leftover = chunk.text, chunk.leftover
    vectors = find(name) if name else None
    if vectors is None:
        bare = name.rstrip(",")
        if bare != name:
            vectors = find(bare) if bare else None
            leftover = f"{name[len(bare):]} {leftover}"
    if vectors is None:
        log.warning("warning, embedding:%s does not exist, ignoring", name)
        return None, leftover
    return [(vectors[i], chunk.weight) for i in range(vectors.shape[0])], leftover


def _units(pieces: list[tuple[int, str, float]], size: int) -> list[list[tuple[int, str, float]]]:
    """Consecutive (group, text, weight) pieces gathered into units of about `size` characters."""
    units: list[list[tuple[int, str, float]]] = [[]]
    length = 0
    for piece in pieces:
        if length >= size:
            units.append([])
            length = 0
        units[-1].append(piece)
        length += len(piece[1])
    return units


def token_groups(chunks: list[PromptChunk], tokenizer, find: EmbeddingFinder,
                 progress: Progress | None = None) -> list[list[Slot]]:
    """One group per text chunk or embedding, in prompt order."""
    groups: list[list[Slot]] = []
    texts: list[tuple[int, str, float]] = []  # (group index, text piece, weight), tokenized below
    for chunk in chunks:
        text = chunk.text
        if chunk.is_embedding:
            vector_slots, text = _embedding_groups(chunk, find)
            if vector_slots is not None:
                groups.append(vector_slots)
            if text == "":
                continue
        groups.append([])
        texts.extend((len(groups) - 1, piece, chunk.weight) for piece in text_pieces(text))

    def tokenize(unit: list[tuple[int, str, float]]) -> None:
        for index, piece, weight in unit:
            groups[index].extend((token, weight) for token in text_token_ids(tokenizer, piece))

    run_units(_units(texts, TEXT_UNIT_CHARS), tokenize, progress)
    return groups


def _close(window: Window, spec: TokenizerSpec) -> None:
    window.append((spec.end_id, 1.0))
    window.extend([(spec.pad_id, 1.0)] * (spec.window - len(window)))


def pack_windows(groups: list[list[Slot]], spec: TokenizerSpec) -> list[Window]:
    """Pack token groups into full windows (see the module docstring for the rules)."""
    body_limit = spec.window - 1  # the last slot is kept for the end token
    current: Window = [(spec.start_id, 1.0)]
    windows = [current]
    for group in groups:
        cut_allowed = len(group) >= UNSPLIT_GROUP_LIMIT
        start = 0  # an offset, not slicing off the rest: a huge group would be copied once per window
        while start < len(group):
            room = body_limit - len(current)
            if len(group) - start <= room:
                current.extend(group[start:])
                break
            if cut_allowed:
                current.extend(group[start:start + room])
                start += room
            _close(current, spec)
            current = [(spec.start_id, 1.0)]
            windows.append(current)
    _close(current, spec)
    return windows


def empty_window(spec: TokenizerSpec, length: int = WINDOW) -> list[int]:
    """Token ids of the empty prompt: start, end, then padding."""
    return [spec.start_id, spec.end_id] + [spec.pad_id] * (length - 2)


def tokenize_prompt(text: str, tokenizer, spec: TokenizerSpec, find: EmbeddingFinder,
                    progress: Progress | None = None) -> list[Window]:
    """A prompt as a list of full windows of (token id or embedding vector, weight) slots."""
    return pack_windows(token_groups(parse_prompt(text), tokenizer, find, progress), spec)
