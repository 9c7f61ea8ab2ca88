"""ComfyUI's prompt weighting syntax, parsed into weighted chunks of text and textual-inversion references.

Rules (ComfyUI's, which differ from A1111's):
- `(text)` multiplies the weight by 1.1; nesting multiplies again: `((text))` = 1.21.
- `(text:1.3)` sets the weight to 1.3 outright (it does not multiply the enclosing weight). The number is whatever
  follows the last `:` inside the group; if it does not parse as a float the group keeps its ×1.1 weight and the
  `:…` stays part of the text. A `:` in first position is never a weight separator.
- `\\(` and `\\)` are literal parentheses. Square brackets have no meaning: `[word]` is plain text.
- An unmatched `(` is literal text. An unmatched `)` is literal too, and (a ComfyUI quirk kept on purpose) it
  leaves the depth counter negative, so later groups in the same run are taken literally.
- `embedding:name` starts a textual-inversion reference when it opens a weighted chunk or follows a space or
  newline. The name is the first whitespace-separated word after the prefix; the rest of the chunk is tokenized
  as ordinary text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

EMPHASIS = 1.1
EMBEDDING_PREFIX = "embedding:"

# Escaped parentheses are swapped for sentinels before grouping and restored afterwards.
_ESCAPED_CLOSE = "\x00\x01"
_ESCAPED_OPEN = "\x00\x02"
_EMBEDDING_SPLIT = re.compile(r"(?: |\n)" + re.escape(EMBEDDING_PREFIX))


@dataclass(frozen=True)
class WeightedText:
    """A run of prompt text with one weight."""

    text: str
    weight: float


@dataclass(frozen=True)
class PromptChunk:
    """What the tokenizer consumes: plain text, or an embedding name plus the text that followed it."""

    text: str
    weight: float
    is_embedding: bool = False
    leftover: str = ""  # for embeddings: trailing text of the same word run, tokenized after the vectors


def _escape(text: str) -> str:
    return text.replace("\\)", _ESCAPED_CLOSE).replace("\\(", _ESCAPED_OPEN)


def _unescape(text: str) -> str:
    return text.replace(_ESCAPED_CLOSE, ")").replace(_ESCAPED_OPEN, "(")


def split_top_level(text: str) -> list[str]:
    """Split into plain runs and top-level `( … )` groups, tracking depth exactly as ComfyUI does."""
    pieces: list[str] = []
    current: list[str] = []
    depth = 0
    for char in text:
        if char == "(":
            if depth == 0 and current:
                pieces.append("".join(current))
                current = []
            current.append(char)
            depth += 1
        elif char == ")":
            depth -= 1
            current.append(char)
            if depth == 0:
                pieces.append("".join(current))
                current = []
        else:
            current.append(char)
    if current:
        pieces.append("".join(current))
    return pieces


def _group_body_and_weight(group: str, outer_weight: float) -> tuple[str, float]:
    body = group[1:-1]
    weight = outer_weight * EMPHASIS
    colon = body.rfind(":")
    if colon > 0:
        try:
            return body[:colon], float(body[colon + 1:])
        except ValueError:
            pass
    return body, weight


def _is_group(piece: str) -> bool:
    return len(piece) >= 2 and piece[0] == "(" and piece[-1] == ")"


def parse_weights(text: str) -> list[WeightedText]:
    """Split a prompt into weighted runs (escapes resolved). Iterative, so deep nesting cannot overflow the stack."""
    done: list[WeightedText] = []
    # Work stack of (text, weight, needs_parsing); pushed in reverse so runs come out in prompt order.
    stack: list[tuple[str, float, bool]] = [(_escape(text), 1.0, True)]
    while stack:
        piece, weight, needs_parsing = stack.pop()
        if not needs_parsing:
            done.append(WeightedText(_unescape(piece), weight))
            continue
        items = []
        for part in split_top_level(piece):
            if _is_group(part):
                body, inner_weight = _group_body_and_weight(part, weight)
                items.append((body, inner_weight, True))
            else:
                items.append((part, weight, False))
        stack.extend(reversed(items))
    return done


def split_embedding_words(text: str) -> list[str]:
    """Cut a weighted run before every ` embedding:` / `\\nembedding:`; empty pieces are dropped."""
    parts = _EMBEDDING_SPLIT.split(text)
    pieces = [parts[0]] + [EMBEDDING_PREFIX + rest for rest in parts[1:]]
    return [p for p in pieces if p != ""]


def embedding_reference(word: str) -> tuple[str, str]:
    """(name, leftover text) of a word starting with `embedding:`; the name may be empty."""
    words = word[len(EMBEDDING_PREFIX):].strip("\n").split()
    if not words:
        return "", ""
    return words[0], " ".join(words[1:])


def parse_prompt(text: str) -> list[PromptChunk]:
    """The prompt as ordered chunks of text and embedding references, each with its weight."""
    chunks: list[PromptChunk] = []
    for run in parse_weights(text):
        for word in split_embedding_words(run.text):
            if word.startswith(EMBEDDING_PREFIX):
                name, leftover = embedding_reference(word)
                chunks.append(PromptChunk(name, run.weight, is_embedding=True, leftover=leftover))
            else:
                chunks.append(PromptChunk(word, run.weight))
    return chunks
