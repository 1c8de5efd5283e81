"""An in-memory copy of the passage vectors, for fast searches on Milvus Lite.

Milvus Lite answers one query in 100+ ms at 100k vectors whatever its index (per-call overhead). So this copy
answers dense searches itself, with one index per level (passage rows, page rows):
  - below `IVF_MIN_ROWS` rows a level is searched exactly, by a numpy scan (X @ q): on one query that beats
    faiss's flat index here (0.11 against 0.26 ms at 10k rows, 0.55 against 0.90 ms at 20k);
  - from `IVF_MIN_ROWS` rows up a level is searched approximately, by a faiss IVF index (IndexIVFFlat, inner
    product): spherical k-means cuts the rows into `LISTS_PER_SQRT_ROWS` x sqrt(rows) lists and a query scans
    the rows of the `PROBE_FRACTION` of lists whose centroids are nearest it, so it can miss true neighbours.
    Recall@10 against exact: 1.000 on 100k synthetic clustered vectors, 0.994 on 100k real man-page passages
    with held-out queries (benchmarks/search.py --real), where our own k-means IVF before it (sqrt(rows)
    lists, an eighth probed) reached 0.961, and 0.998 probing 3/8 at 1.2x this one's latency. The lists hold
    their own copy of the vectors, beside `dense`, which filtered scans and updates read.
A search with a document filter scans every row of the filtered documents exactly. Lexical (BM25) scores are
always exact: a sparse column sum over the query's terms.

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

import faiss
import numpy as np
from faiss.contrib.ivf_tools import add_preassigned
from scipy import sparse as sp

from pagelens.tools.retrieval.vectors import PAGE_ROW_PREFIX, Level, VectorHit, VectorRow

IVF_MIN_ROWS = 20_000
LISTS_PER_SQRT_ROWS = 4
PROBE_FRACTION = 1 / 4
KMEANS_POINTS_PER_LIST = 16
ADD_CHUNK = 8192
LEVELS: tuple[Level, ...] = ("passage", "page")


class MemoryIndex:
    def __init__(self, generation: int, pks: np.ndarray, page_ids: np.ndarray, documents: np.ndarray,
                 document_codes: np.ndarray, dense: np.ndarray, lexical: sp.csc_matrix, term_columns: np.ndarray,
                 ivf: dict[Level, faiss.IndexIVFFlat]):
        self.generation = generation
        self.pks = pks                    # (N,) str
        self.page_ids = page_ids          # (N,) str
        self.documents = documents        # (D,) str, the distinct document ids, sorted
        self.document_codes = document_codes  # (N,) int, row i belongs to documents[document_codes[i]]
        self.dense = dense                # (N, dim) float32, rows L2-normalised
        self.lexical = lexical            # (N, T) BM25 passage weights, one column per distinct term
        self.term_columns = term_columns  # (T,) sorted term ids; column j holds term_columns[j]
        self.ivf = ivf                    # level -> IVF index over its rows (ids: row numbers); absent: exact scan
        self.page_rows = np.char.startswith(pks.astype(str), PAGE_ROW_PREFIX) if len(pks) else np.zeros(0, bool)
        self.level_rows = {level: np.flatnonzero(self.page_rows == (level == "page")) for level in LEVELS}

    @classmethod
    def build(cls, generation: int, batches: Iterable[list[VectorRow]], dim: int) -> MemoryIndex:
        rows = _Rows.read(batches, dim)
        return cls._assemble(generation, rows, {}, np.full(len(rows.pks), -1))

    def update(self, generation: int, changed: set[str], batches: Iterable[list[VectorRow]]) -> MemoryIndex:
        """This index with the rows of the `changed` documents replaced by `batches` (their rows now, if any).

        A level's IVF lists keep their centroids while its row count stays within half to twice what they were
        trained on, and the rows kept stay in their lists, so an update costs a copy of the arrays and assigning
        the new rows to lists, not a k-means.
        """
        kept = np.flatnonzero(~np.isin(self.document_codes, np.flatnonzero(np.isin(self.documents, list(changed)))))
        lexical = self.lexical.tocsr()[kept].tocoo()
        rows = _Rows(self.pks[kept], self.page_ids[kept], self.documents[self.document_codes[kept]],
                     np.asarray(self.dense[kept]), lexical.row, self.term_columns[lexical.col], lexical.data)
        rows = rows.concat(_Rows.read(batches, self.dense.shape[1]))
        centroids = {level: index.quantizer.reconstruct_n(0, index.nlist) for level, index in self.ivf.items()}
        known = np.full(len(self.pks), -1)  # the list each row is in, in its level's IVF index
        for index in self.ivf.values():
            for j in range(index.nlist):
                known[faiss.rev_swig_ptr(index.invlists.get_ids(j), index.invlists.list_size(j))] = j
        lists = np.concatenate([known[kept], np.full(len(rows.pks) - len(kept), -1)])
        return self._assemble(generation, rows, centroids, lists)

    @classmethod
    def _assemble(cls, generation: int, rows: _Rows, centroids: dict[Level, np.ndarray],
                  lists: np.ndarray) -> MemoryIndex:
        """The index over `rows`; a level with `centroids` keeps them (see _ivf) and `lists` says which list each
        row is in already (-1: none yet)."""
        term_columns, cols = np.unique(rows.terms, return_inverse=True)
        lexical = sp.csc_matrix((rows.weights, (rows.lexical_rows, cols)), shape=(len(rows.pks), len(term_columns)))
        documents, codes = np.unique(rows.documents, return_inverse=True)
        index = cls(generation, rows.pks, rows.page_ids, documents, codes, rows.dense, lexical, term_columns, {})
        for level, members in index.level_rows.items():
            if len(members) >= IVF_MIN_ROWS:
                index.ivf[level] = _ivf(rows.dense, members, centroids.get(level), lists)
        return index

    def save(self, folder: Path) -> None:
        def write(tmp: Path) -> None:
            np.save(tmp / "dense.npy", self.dense)
            np.savez(tmp / "rows.npz", pks=self.pks, page_ids=self.page_ids, documents=self.documents,
                     document_codes=self.document_codes, term_columns=self.term_columns)
            sp.save_npz(tmp / "lexical.npz", self.lexical, compressed=False)
            for level, index in self.ivf.items():
                faiss.write_index(index, str(tmp / f"{level}.ivf"))

        save_atomically(folder, self.generation, write)

    @classmethod
    def load(cls, folder: Path) -> MemoryIndex | None:
        """The saved copy, whatever its generation, if it is complete; else None."""
        generation = saved_generation(folder)
        if generation is None:
            return None
        try:
            rows = np.load(folder / "rows.npz")
            # IO_FLAG_MMAP_IFC maps the lists' vectors from the file as they are, read-only; IO_FLAG_MMAP would
            # read them through faiss's on-disk lists, 5x slower a search here.
            ivf = {level: faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC)
                   for level in LEVELS if (path := folder / f"{level}.ivf").exists()}
            index = cls(generation, rows["pks"], rows["page_ids"], rows["documents"], rows["document_codes"],
                        np.load(folder / "dense.npy", mmap_mode="r"), sp.load_npz(folder / "lexical.npz").tocsc(),
                        rows["term_columns"], ivf)
        except (OSError, KeyError, ValueError, RuntimeError):
            return None
        # A level big enough for an IVF index but saved without one (an older format): rebuilt, not scanned in full.
        missing = any(len(rows) >= IVF_MIN_ROWS and level not in ivf for level, rows in index.level_rows.items())
        return None if missing else index

    def search_dense(self, query: np.ndarray, limit: int, document_ids: list[str] | None,
                     level: Level = "passage") -> list[VectorHit]:
        query = query.astype(np.float32)
        if document_ids is not None:
            rows = self._rows_of(document_ids, level)
            return self._top(rows, self.dense[rows] @ query, limit)
        index = self.ivf.get(level)
        if index is None:
            rows = self.level_rows[level]
            # A product over every row, then the level's: a contiguous scan, where gathering rows first copies them.
            return self._top(rows, (self.dense @ query)[rows], limit)
        scores, rows = index.search(query[None], min(limit, index.ntotal))
        found = rows[0] >= 0  # -1: fewer than `limit` rows in the lists probed
        return [VectorHit(str(self.pks[r]), str(self.page_ids[r]), float(s))
                for r, s in zip(rows[0][found], scores[0][found])]

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
        rows = self._rows_of(document_ids, level) if document_ids is not None else self.level_rows[level]
        return [h for h in self._top(rows, scores[rows], limit) if h.score > 0]

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


def _ivf(dense: np.ndarray, members: np.ndarray, centroids: np.ndarray | None,
         lists: np.ndarray) -> faiss.IndexIVFFlat:
    """An IVF index over dense[members] (ids: the row numbers). With `centroids` trained on a row count within half
    to twice this one, a row keeps the list `lists` gives it (-1: none yet, its nearest centroid's); else k-means
    finds new lists."""
    dim = dense.shape[1]
    quantizer = faiss.IndexFlatIP(dim)
    if centroids is not None and _trained_rows(len(centroids)) / 2 <= len(members) <= 2 * _trained_rows(len(centroids)):
        quantizer.add(centroids)  # before the index is made, which then counts itself trained
        assign = lists[members]
    else:
        centroids, assign = None, np.full(len(members), -1)
    n_lists = int(LISTS_PER_SQRT_ROWS * np.sqrt(len(members))) if centroids is None else len(centroids)
    index = faiss.IndexIVFFlat(quantizer, dim, n_lists, faiss.METRIC_INNER_PRODUCT)
    if centroids is None:
        # Spherical k-means (faiss's default for inner product), 10 iterations, fixed seed: the same rows give the
        # same lists. On a sample of KMEANS_POINTS_PER_LIST rows a list: on 53k real passages 16 found lists as
        # good as 32 did (recall@10 0.996 either way) in 60% of the time; faiss's default is 256.
        index.cp.max_points_per_centroid = index.cp.min_points_per_centroid = KMEANS_POINTS_PER_LIST
        index.train(dense[members])
    index.nprobe = max(1, int(np.ceil(n_lists * PROBE_FRACTION)))
    for part in np.array_split(np.arange(len(members)), -(-len(members) // ADD_CHUNK)):  # not every vector at once
        vectors, todo = dense[members[part]], assign[part] < 0
        if todo.any():
            assign[part[todo]] = quantizer.search(vectors[todo], 1)[1][:, 0]
        ids = members[part].astype(np.int64)  # named: add_preassigned keeps only a raw pointer to it
        add_preassigned(index, vectors, assign[part], ids)
    return index


def _trained_rows(n_lists: int) -> float:
    return (n_lists / LISTS_PER_SQRT_ROWS) ** 2
