"""Lexical scoring: BM25 as sparse vectors over hashed terms, for any script.

Terms are lower-cased NFKC words (Unicode `\\w+`, so Arabic, Cyrillic or Greek words match as words); scripts
written without spaces (Han, Kana, Hangul, Thai) become character unigrams and bigrams, so a Chinese query
matches a Chinese page without a segmenter. A term's id is a 31-bit BLAKE2 hash, which Milvus takes as a
sparse-vector index.

BM25 (Robertson et al.): a passage's weight for term t is tf·(k1+1) / (tf + k1·(1 − b + b·dl/avgdl)), stored
with the passage; a query's weight is idf(t) = ln(1 + (N − df + 0.5)/(df + 0.5)), computed at query time from
the catalogue's counts, so adding documents never re-weights stored vectors. Deviations from textbook BM25:
avgdl is a constant (`AVG_PASSAGE_TERMS`, `AVG_PAGE_TERMS` for whole pages) rather than the corpus mean, since a
moving mean would invalidate every stored vector; and a whole page's terms are weighed by their passage-level
idf (N and df count passages), so both lexical routes share one set of counts.
English stop words are dropped from queries (not from stored vectors), as plain BM25 setups do: "the" or "what"
otherwise pulls in every passage that repeats them.
"""

from __future__ import annotations

import hashlib
import math
import re
import unicodedata
from collections import Counter

K1 = 1.2
B = 0.75
AVG_PASSAGE_TERMS = 80.0
AVG_PAGE_TERMS = 400.0
# A short English list (articles, pronouns, auxiliaries, question words, common prepositions): words that say
# nothing about which page answers.
STOP_WORDS = frozenset(
    "a an the of in on at to for by with from and or not no is are was were be been being am do does did done "
    "has have had having what which who whom whose when where why how it its this that these those as than then "
    "into onto per each any all both there their them they we you your our i me my he she his her him us "
    "can could would should will shall may might must about if so such".split()
)

_WORD = re.compile(r"\w+", re.UNICODE)
_UNSPACED = re.compile(
    r"[\u0e00-\u0e7f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]+"
)


def tokenize(text: str) -> list[str]:
    """Split text into lexical terms (see the module docstring)."""
    terms: list[str] = []
    for word in _WORD.findall(unicodedata.normalize("NFKC", text).lower()):
        start = 0
        for run in _UNSPACED.finditer(word):
            if run.start() > start:
                terms.append(word[start : run.start()])
            chars = run.group()
            terms.extend(chars)
            terms.extend(chars[i : i + 2] for i in range(len(chars) - 1))
            start = run.end()
        if start < len(word):
            terms.append(word[start:])
    return terms


def term_id(term: str) -> int:
    return int.from_bytes(hashlib.blake2b(term.encode(), digest_size=4).digest(), "little") & 0x7FFFFFFF


def passage_vector(text: str, average_terms: float = AVG_PASSAGE_TERMS) -> dict[int, float]:
    """BM25 term weights of one passage (or, with `AVG_PAGE_TERMS`, a whole page), keyed by term id."""
    counts = Counter(term_id(t) for t in tokenize(text))
    length_norm = K1 * (1 - B + B * sum(counts.values()) / average_terms)
    return {t: tf * (K1 + 1) / (tf + length_norm) for t, tf in counts.items()}


def query_terms(text: str) -> list[int]:
    """The query's term ids, stop words left out (all of them when the query is nothing but stop words)."""
    words = tokenize(text)
    kept = [w for w in words if w not in STOP_WORDS] or words
    return sorted({term_id(t) for t in kept})


def query_vector(terms: list[int], document_frequencies: dict[int, int], passage_count: int) -> dict[int, float]:
    """IDF weights of the query's terms that occur in the corpus (absent terms cannot score)."""
    n = max(passage_count, 1)
    return {
        t: math.log(1 + (n - df + 0.5) / (df + 0.5))
        for t in terms
        if (df := document_frequencies.get(t, 0)) > 0
    }
