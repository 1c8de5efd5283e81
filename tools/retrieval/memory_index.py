"""An in-memory copy of the passage vectors, for fast searches on Milvus Lite.

Milvus Lite answers one query in 100+ ms at 100k vectors whatever its index (per-call overhead), and an exact
scan of 100k x 384 float32 reads 150 MB a query (10-25 ms here, memory-bound). So this copy scans exactly up to
`IVF_MIN_ROWS` rows and, above that, partitions the rows into k-means lists (an IVF index: rows stored sorted by
list, so probing a list is a contiguous matrix slice) and scans the `nprobe` lists nearest the query. A search
with a document filter scans every row of the filtered documents exactly. Lexical (BM25) scores are always
exact: a sparse column sum over the query's terms.

Milvus stays the store of record: this copy is derived from it, saved beside it (`cache/`, memory-mapped on
open) and stamped with the catalogue's generation. A stale copy catches up by re-reading from Milvus only the
documents the catalogue's change log names since its generation; a missing one, or one older than the log
reaches, is rebuilt from every row.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import sparse as sp

from pagelens.tools.retrieval.vectors import PAGE_ROW_PREFIX, Level, VectorHit, VectorRow

IVF_MIN_ROWS = 20_000
KMEANS_SAMPLE = 40_000
KMEANS_ITERATIONS = 10
PROBE_FRACTION = 1 / 8


class MemoryIndex:
    def __init__(self, generation: int, pks: np.ndarray, page_ids: np.ndarray, documents: np.ndarray,
                 document_codes: np.ndarray, dense: np.ndarray, lexical: sp.csc_matrix, term_columns: np.ndarray,
                 centroids: np.ndarray, offsets: np.ndarray):
        self.generation = generation
        self.pks = pks                    # (N,) str, rows sorted by IVF list
        self.page_ids = page_ids          # (N,) str
        self.documents = documents        # (D,) str, the distinct document ids, sorted
        self.document_codes = document_codes  # (N,) int, row i belongs to documents[document_codes[i]]
        self.dense = dense                # (N, dim) float32, rows L2-normalised
        self.lexical = lexical            # (N, T) BM25 passage weights, one column per distinct term
        self.term_columns = term_columns  # (T,) sorted term ids; column j holds term_columns[j]
        self.centroids = centroids        # (L, dim) list centroids; L = 0 below IVF_MIN_ROWS
        self.offsets = offsets            # (L + 1,) list j holds rows offsets[j]:offsets[j + 1]
        self.page_rows = np.char.startswith(pks.astype(str), PAGE_ROW_PREFIX) if len(pks) else np.zeros(0, bool)

    @classmethod
    def build(cls, generation: int, batches: Iterable[list[VectorRow]], dim: int) -> MemoryIndex:
        return cls._assemble(generation, _Rows.read(batches, dim), None)

    def update(self, generation: int, changed: set[str], batches: Iterable[list[VectorRow]]) -> MemoryIndex:
        """This index with the rows of the `changed` documents replaced by `batches` (their rows now, if any).

        The IVF lists keep their centroids while the row count stays within half to twice what they were
        trained on (lists are about sqrt(rows) long), so an update costs a copy of the arrays, not a k-means.
        """
        kept = np.flatnonzero(~np.isin(self.document_codes, np.flatnonzero(np.isin(self.documents, list(changed)))))
        lexical = self.lexical.tocsr()[kept].tocoo()
        rows = _Rows(self.pks[kept], self.page_ids[kept], self.documents[self.document_codes[kept]],
                     np.asarray(self.dense[kept]), lexical.row, self.term_columns[lexical.col], lexical.data)
        rows = rows.concat(_Rows.read(batches, self.dense.shape[1]))
        trained = len(self.centroids) ** 2
        centroids = self.centroids if trained and trained / 2 <= len(rows.pks) <= 2 * trained else None
        return self._assemble(generation, rows, centroids)

    @classmethod
    def _assemble(cls, generation: int, rows: _Rows, centroids: np.ndarray | None) -> MemoryIndex:
        term_columns, cols = np.unique(rows.terms, return_inverse=True)
        lexical = sp.csr_matrix((rows.weights, (rows.lexical_rows, cols)), shape=(len(rows.pks), len(term_columns)))
        centroids, order, offsets = _partition(rows.dense, centroids)
        documents, codes = np.unique(rows.documents, return_inverse=True)
        return cls(generation, rows.pks[order], rows.page_ids[order], documents, codes[order],
                   np.ascontiguousarray(rows.dense[order]), lexical[order].tocsc(), term_columns, centroids, offsets)

    def save(self, folder: Path) -> None:
        def write(tmp: Path) -> None:
            np.save(tmp / "dense.npy", self.dense)
            np.savez(tmp / "rows.npz", pks=self.pks, page_ids=self.page_ids, documents=self.documents,
                     document_codes=self.document_codes,
                     term_columns=self.term_columns, centroids=self.centroids, offsets=self.offsets)
            sp.save_npz(tmp / "lexical.npz", self.lexical, compressed=False)

        save_atomically(folder, self.generation, write)

    @classmethod
    def load(cls, folder: Path) -> MemoryIndex | None:
        """The saved copy, whatever its generation, if it is complete; else None."""
        generation = saved_generation(folder)
        if generation is None:
            return None
        try:
            rows = np.load(folder / "rows.npz")
            return cls(generation, rows["pks"], rows["page_ids"], rows["documents"], rows["document_codes"],
                       np.load(folder / "dense.npy", mmap_mode="r"), sp.load_npz(folder / "lexical.npz").tocsc(),
                       rows["term_columns"], rows["centroids"], rows["offsets"])
        except (OSError, KeyError, ValueError):
            return None

    def search_dense(self, query: np.ndarray, limit: int, document_ids: list[str] | None,
                     level: Level = "passage") -> list[VectorHit]:
        query = query.astype(np.float32)
        if document_ids is not None:
            rows = self._rows_of(document_ids, level)
            return self._top(rows, self.dense[rows] @ query, limit)
        if len(self.centroids) == 0:
            rows = self._level_rows(level)
            # A product over every row, then the level's: a contiguous scan, where gathering rows first copies them.
            return self._top(rows, (self.dense @ query)[rows], limit)
        nprobe = max(1, int(np.ceil(len(self.centroids) * PROBE_FRACTION)))
        lists = np.argpartition(-(self.centroids @ query), nprobe - 1)[:nprobe]
        rows = np.concatenate([np.arange(self.offsets[j], self.offsets[j + 1]) for j in lists])
        scores = np.concatenate([self.dense[self.offsets[j] : self.offsets[j + 1]] @ query for j in lists])
        wanted = self.page_rows[rows] == (level == "page")
        return self._top(rows[wanted], scores[wanted], limit)

    def search_sparse(self, query: dict[int, float], limit: int, document_ids: list[str] | None,
                      level: Level = "passage") -> list[VectorHit]:
        terms = np.asarray(sorted(query), dtype=np.int64)
        cols = np.searchsorted(self.term_columns, terms)
        known = cols < len(self.term_columns)
        known[known] = self.term_columns[cols[known]] == terms[known]
        if not known.any():
            return []
        weights = np.asarray([query[int(t)] for t in terms[known]], np.float32)
        scores = np.asarray(self.lexical[:, cols[known]] @ weights).ravel()  # (N,)
        rows = self._rows_of(document_ids, level) if document_ids is not None else self._level_rows(level)
        return [h for h in self._top(rows, scores[rows], limit) if h.score > 0]

    def _level_rows(self, level: Level) -> np.ndarray:
        return np.flatnonzero(self.page_rows == (level == "page"))

    def _rows_of(self, document_ids: list[str], level: Level) -> np.ndarray:
        """The rows of these documents at this level; matching integer codes, not strings, keeps this cheap at
        100k rows."""
        codes = np.flatnonzero(np.isin(self.documents, np.asarray(document_ids, dtype=str)))
        return np.flatnonzero(np.isin(self.document_codes, codes) & (self.page_rows == (level == "page")))

    def _top(self, rows: np.ndarray | None, scores: np.ndarray, limit: int) -> list[VectorHit]:
        """The best `limit` of `scores`, where scores[i] belongs to row rows[i] (or row i when rows is None)."""
        limit = min(limit, len(scores))
        if limit == 0:
            return []
        top = np.argpartition(-scores, limit - 1)[:limit]
        top = top[np.argsort(-scores[top], kind="stable")]
        index = top if rows is None else rows[top]
        return [VectorHit(str(self.pks[r]), str(self.page_ids[r]), float(s)) for r, s in zip(index, scores[top])]


def save_atomically(folder: Path, generation: int, write: Callable[[Path], None]) -> None:
    """Write a derived copy's files (`write` fills a folder) and its generation as a new folder beside the old one,
    swapped in by rename: a reader finds the old copy or the new one, never half of one."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    (tmp / "generation.json").write_text(json.dumps({"generation": generation}))
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def saved_generation(folder: Path) -> int | None:
    """The generation a saved copy was stamped with; None when there is none (no copy, or one cut short)."""
    try:
        return int(json.loads((folder / "generation.json").read_text())["generation"])
    except (OSError, KeyError, ValueError, TypeError):
        return None


@dataclass
class _Rows:
    """Rows as column arrays, with their lexical weights as (row, term id, weight) triplets."""

    pks: np.ndarray
    page_ids: np.ndarray
    documents: np.ndarray
    dense: np.ndarray
    lexical_rows: np.ndarray
    terms: np.ndarray
    weights: np.ndarray

    @classmethod
    def read(cls, batches: Iterable[list[VectorRow]], dim: int) -> _Rows:
        pks, page_ids, doc_ids, dense = [], [], [], []
        rows, terms, weights = [], [], []
        for batch in batches:
            for row in batch:
                rows.extend([len(pks)] * len(row.sparse))
                pks.append(row.pk)
                page_ids.append(row.page_id)
                doc_ids.append(row.document_id)
                dense.append(row.dense)
                terms.extend(row.sparse.keys())
                weights.extend(row.sparse.values())
        matrix = np.vstack(dense).astype(np.float32) if dense else np.zeros((0, dim), np.float32)
        return cls(np.asarray(pks, dtype=str), np.asarray(page_ids, dtype=str), np.asarray(doc_ids, dtype=str),
                   matrix, np.asarray(rows, np.int64), np.asarray(terms, np.int64), np.asarray(weights, np.float32))

    def concat(self, other: _Rows) -> _Rows:
        return _Rows(np.concatenate([self.pks, other.pks]), np.concatenate([self.page_ids, other.page_ids]),
                     np.concatenate([self.documents, other.documents]), np.vstack([self.dense, other.dense]),
                     np.concatenate([self.lexical_rows, other.lexical_rows + len(self.pks)]),
                     np.concatenate([self.terms, other.terms]), np.concatenate([self.weights, other.weights]))


def _partition(matrix: np.ndarray, centroids: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IVF lists by spherical k-means (or by nearest of the given centroids): (centroids, row order grouped
    by list, list offsets)."""
    n, dim = matrix.shape
    if n < IVF_MIN_ROWS:
        return np.zeros((0, dim), np.float32), np.arange(n), np.asarray([0, n])
    if centroids is None:
        centroids = _kmeans(matrix)
    assign = np.concatenate([np.argmax(matrix[s : s + 8192] @ centroids.T, axis=1) for s in range(0, n, 8192)])
    order = np.argsort(assign, kind="stable")
    offsets = np.concatenate([[0], np.cumsum(np.bincount(assign, minlength=len(centroids)))])
    return centroids, order, offsets


def _kmeans(matrix: np.ndarray) -> np.ndarray:
    n = len(matrix)
    rng = np.random.default_rng(0)  # a fixed seed: rebuilding the same rows gives the same index
    n_lists = int(np.sqrt(n))
    sample = matrix[rng.choice(n, min(n, KMEANS_SAMPLE), replace=False)]
    centroids = sample[rng.choice(len(sample), n_lists, replace=False)].copy()
    for _ in range(KMEANS_ITERATIONS):
        assign = np.argmax(sample @ centroids.T, axis=1)
        sums = np.zeros_like(centroids)
        np.add.at(sums, assign, sample)
        empty = np.bincount(assign, minlength=n_lists) == 0
        sums[empty] = centroids[empty]  # a list that lost every point keeps its centre
        centroids = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
    return centroids.astype(np.float32)
