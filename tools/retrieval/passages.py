"""Cutting page text into passages that fit the embedder, and the text each is indexed by."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import PurePath


def name_words(document: str) -> str:
    """A document's file name as words ("kx40_maintenance-manual.pdf" -> "kx40 maintenance manual")."""
    return " ".join(re.split(r"[\W_]+", PurePath(document).stem)).strip()


def in_view(document: str, text: str) -> str:
    """The text a passage or page is indexed by: its own, headed by its document's name, so that a search naming
    the document finds it even where only the cover or the page header says which document a page is from."""
    return f"{name_words(document)}\n{text}"


def split_passages(lines: list[str], count_tokens: Callable[[list[str]], list[int]], max_tokens: int) -> list[str]:
    """Pack consecutive lines into passages of at most `max_tokens`; split a longer line at word boundaries."""
    pieces: list[tuple[str, int]] = []
    for line, n in zip(lines, count_tokens(lines)):
        if not line.strip():
            continue
        if n <= max_tokens:
            pieces.append((line, n))
            continue
        words = line.split()
        # Token counts grow about linearly with words, so cut by the line's own tokens-per-word rate.
        step = max(1, int(len(words) * max_tokens / n * 0.9))
        for start in range(0, len(words), step):
            chunk = " ".join(words[start : start + step])
            pieces.append((chunk, max(1, n * len(chunk) // max(len(line), 1))))
    passages: list[str] = []
    current: list[str] = []
    size = 0
    for text, n in pieces:
        if current and size + n > max_tokens:
            passages.append("\n".join(current))
            current, size = [], 0
        current.append(text)
        size += n
    if current:
        passages.append("\n".join(current))
    return passages
