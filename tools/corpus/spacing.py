"""Putting back the spaces OCR drops between English words.

RapidOCR's PP-OCRv4 recogniser, trained mostly on Chinese, often reads an English line without some of its
spaces ("DanaWhitfieldatextension2314beforeMarch8."), which hides those words from the lexical search and
garbles quoted answers. `respace` restores them in three steps, each cautious about what it cannot know:

1. Punctuation and case boundaries: a space after , ; : and after a full stop before a capitalised word, between
   letters and digits ("May2" → "May 2", but "2nd" stays), and where a lowercase letter meets a capitalised word
   ("theElm"). Thousands separators and decimals ("$3,623.40") stay whole.
2. A lowercase run that is not an English word is split into words when it can be split entirely into them
   ("willmovefrom" → "will move from"); the words are the whole-word entries of the embedder's WordPiece
   vocabulary, which lists them by frequency, and the split with the most frequent words wins. Words of one or
   two letters count only when common ("a", "of", "to", …), so a plural or a name the vocabulary lacks is kept
   ("movers", "okafor").
3. A capitalised run is split only when that is unambiguous: into three words or more ("Pleasepackyourdesk"), or
   into a word and a following article or preposition ("Branchat" → "Branch at"). A two-word split would
   otherwise break names ("Bellmore" is not "Bell more"). A run that no words cover may still end in words
   after a preposition: the unknown head is kept ("Whitfieldatextension" → "Whitfield at extension").

All-capitals runs are left as they are.
"""

from __future__ import annotations

import functools
import math
import re

# Articles, prepositions and pronouns that OCR commonly runs onto the word before them.
# Not "a", "an", "in", "on", "as": too many names end in them ("Raman", "Martin", "Kenton").
_TRAILING = frozenset({"the", "of", "at", "to", "for", "from", "with", "by", "and", "you", "your"})
_LONGEST_WORD = 20
_PER_WORD = 3.0  # each extra word costs this much on top of log(rank): fewer, commoner words win


@functools.cache
def _ranks() -> dict[str, int]:
    """English words by frequency rank, from the WordPiece vocabulary shipped with the default embedder."""
    from pagelens.tools.retrieval.embedders import bundled_minilm

    entries = (bundled_minilm() / "vocab.txt").read_text(encoding="utf-8").split("\n")
    ranks: dict[str, int] = {}
    # The vocabulary lists special tokens and single characters first, then words from "the" on by frequency.
    for rank, word in enumerate(entries[entries.index("the"):], 1):
        if word.isascii() and word.isalpha() and word not in ranks:
            if len(word) > 2 or (len(word) == 2 and rank <= 300):
                ranks[word] = rank
    ranks.update(a=6, i=20)  # single letters sit with the characters, before "the"; these two are words
    return ranks


def _split(run: str) -> list[str] | None:
    """The cheapest cover of a lowercase run by known words, or None when there is none."""
    ranks = _ranks()
    best = [0.0] + [math.inf] * len(run)
    start = [0] * (len(run) + 1)
    for end in range(1, len(run) + 1):
        for begin in range(max(0, end - _LONGEST_WORD), end):
            rank = ranks.get(run[begin:end])
            if rank is not None and (cost := best[begin] + math.log(rank) + _PER_WORD) < best[end]:
                best[end], start[end] = cost, begin
    if math.isinf(best[-1]):
        return None
    words, end = [], len(run)
    while end:
        words.append(run[start[end]:end])
        end = start[end]
    return words[::-1]


def _words(match: re.Match[str]) -> str:
    run = match.group(0)
    lower = run.lower()
    if len(run) < 5 or lower in _ranks():
        return run
    words = _split(lower)
    if words is None:
        # A word the vocabulary lacks (often a name) run onto a preposition and more: "Whitfieldatextension".
        words = next(([run[:k], *rest] for k in range(3, len(run) - 1)
                      if (rest := _split(lower[k:])) and len(rest) > 1 and rest[0] in _TRAILING), None)
        return run if words is None else " ".join(words)
    if run[0].isupper():
        if len(words) == 2 and words[1] not in _TRAILING:
            return run
        words[0] = words[0].capitalize()
    return " ".join(words)


def space_marks(text: str) -> str:
    """Step 1 alone: spaces after punctuation and at letter/digit and case boundaries, no word splitting."""
    text = re.sub(r"([,;:])(?=[^\s\d])", r"\1 ", text)
    text = re.sub(r"(?<=\d),(?=\d{1,2}\b|\d{4,}\b)", ", ", text)
    text = re.sub(r"\.(?=[A-Z][a-z])", ". ", text)
    text = re.sub(r"(?<=[A-Za-z]{2})(?=\d)|(?<=\d)(?=[A-Za-z]{2})(?!(?:st|nd|rd|th)\b)", " ", text)
    return re.sub(r"(?<=[a-z]{2})(?=[A-Z][a-z])", " ", text)


def respace(text: str) -> str:
    """The text with the spaces OCR dropped put back (see the module docstring)."""
    return re.sub(r"(?<![A-Za-z])[A-Za-z][a-z]+(?![A-Za-z])", _words, space_marks(text))
