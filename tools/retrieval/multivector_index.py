"""An in-memory MaxSim index over multi-vector pages, for fast searches on Milvus Lite (as memory_index.py serves dense
search).

All page vectors sit in one contiguous matrix, page after page, with page offsets. Two search modes:

- exact: one (m, d) x (d, rows) product per chunk of pages and a segment max per page (np.maximum.reduceat),
  summed over the query vectors: brute-force MaxSim, memory-bound (10k ColQwen2 pages are 7.5M x 128 rows).
- candidates (from PREFILTER_MIN_PAGES pages on): each page is also summarised by SUMMARIES directions, the
  centroids of a small k-means over its own vectors (a page's patches cluster: blank paper, one font, one figure;
  the same reason token pooling keeps 97.8% of quality, SPEC §6). MaxSim over the summaries (a 23rd of the rows
  at 750 vectors a page) ranks every page; the best `rerank` pages, plus any the caller adds, are then scored by
  exact MaxSim over all their vectors. A summary is per page, so adding or removing a page touches no other.
  Recall@10 against exact MaxSim is measured by benchmarks/maxsim.py.

Scores are normalised by the number of query vectors (SPEC §6), as the Milvus store's are.

As memory_index.py's copy of the passages, this copy is derived from Milvus, saved beside it (`cache-pages/`, vectors
memory-mapped on open), stamped with the catalogue's generation and caught up document by document
(`PageStore.vision_index`).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from pagelens.tools.retrieval.memory_index import save_atomically, saved_generation
from pagelens.tools.retrieval.multivector import PageScore, normalised_maxsim, rank

PREFILTER_MIN_PAGES = 1_000  # below, an exact scan costs under ~70 ms a query (71 ms at 1k ColQwen2 pages)
CHUNK_ROWS = 131_072  # rows of one product in a scan: its (m, rows) float32 scores stay ~10 MB at m = 20
SUMMARIES = 32  # k-means centroids a page is summarised by
KMEANS_ITERATIONS = 5
SUMMARY_BATCH = 64  # pages summarised together (padded to the longest)
# Pages scored exactly after the prefilter: 1 in 40, at least 64. benchmarks/maxsim.py measured recall@10 0.987 at
# 1k pages (64) and 0.957 at 10k (256), 7.8x and 11.5x faster than an exact scan.
RERANK_SHARE = 40
RERANK_MIN = 64


class MultiVectorIndex:
    def __init__(self, page_ids: np.ndarray, versions: np.ndarray, document_ids: np.ndarray, offsets: np.ndarray,
                 vectors: np.ndarray, summaries: np.ndarray, summary_offsets: np.ndarray, per_page: int = SUMMARIES,
                 generation: int = 0):
        self.generation = generation      # the catalogue generation this copy holds
        self.page_ids = page_ids          # (P,) str
        self.versions = versions          # (P,) str
        self.document_ids = document_ids  # (P,) str
        self.offsets = offsets            # (P + 1,) int64: page i holds rows offsets[i]:offsets[i + 1]
        self.vectors = vectors            # (N, d) float32 or float16, unit rows, page after page
        self.summaries = summaries        # (S, d) float32, page after page; S = 0 without a prefilter
        self.summary_offsets = summary_offsets  # (P + 1,) int64, or (0,) without a prefilter
        self.per_page = per_page          # summaries of a page with more vectors than that

    @classmethod
    def build(cls, pages: Iterable[tuple[str, str, str, np.ndarray]], dim: int, *, dtype: type = np.float32,
              prefilter: bool | None = None, summaries: int = SUMMARIES, generation: int = 0) -> MultiVectorIndex:
        """From (page_id, document_id, version, (n, dim) vectors) pages, e.g. MultiVectorStore.pages().
        `prefilter` None summarises pages from PREFILTER_MIN_PAGES pages on."""
        ids, docs, versions, arrays = [], [], [], []
        for page_id, document_id, version, vectors in pages:
            ids.append(page_id)
            docs.append(document_id)
            versions.append(version)
            arrays.append(np.asarray(vectors, dtype))
        counts = np.asarray([len(a) for a in arrays], np.int64)
        matrix = np.concatenate(arrays) if arrays else np.zeros((0, dim), dtype)
        del arrays
        return cls.from_arrays(np.asarray(ids, str), np.asarray(docs, str), np.asarray(versions, str),
                               np.concatenate([[0], np.cumsum(counts)]), matrix, prefilter=prefilter,
                               summaries=summaries, generation=generation)

    @classmethod
    def from_arrays(cls, page_ids: np.ndarray, document_ids: np.ndarray, versions: np.ndarray, offsets: np.ndarray,
                    vectors: np.ndarray, *, prefilter: bool | None = None, summaries: int = SUMMARIES,
                    generation: int = 0) -> MultiVectorIndex:
        """From page-ordered rows in one matrix (kept, not copied): page i is vectors[offsets[i]:offsets[i + 1]]."""
        offsets = np.asarray(offsets, np.int64)
        if prefilter is None:
            prefilter = len(page_ids) >= PREFILTER_MIN_PAGES
        if prefilter:
            summary, summary_offsets = summarise(vectors, offsets, summaries)
        else:
            summary, summary_offsets = np.zeros((0, vectors.shape[1]), np.float32), np.zeros(0, np.int64)
        return cls(page_ids, versions, document_ids, offsets, vectors, summary, summary_offsets, summaries, generation)

    def update(self, generation: int, changed: set[str], pages: Iterable[tuple[str, str, str, np.ndarray]]
               ) -> MultiVectorIndex:
        """This index at `generation`, with the pages of the `changed` documents replaced by `pages` (their pages
        now, if any). Kept pages keep their summaries (each is its own page's), so only the new pages are
        summarised."""
        kept = np.flatnonzero(~np.isin(self.document_ids, np.asarray(sorted(changed), str)))
        new = MultiVectorIndex.build(pages, self.vectors.shape[1], dtype=self.vectors.dtype,
                                     prefilter=len(self.summary_offsets) > 0, summaries=self.per_page)
        counts = np.concatenate([np.diff(self.offsets)[kept], np.diff(new.offsets)])
        rows = np.concatenate([np.arange(self.offsets[p], self.offsets[p + 1]) for p in kept] + [np.zeros(0, int)])
        vectors = np.concatenate([self.vectors[rows], new.vectors])
        if len(self.summary_offsets):
            summary_rows = np.concatenate([np.arange(self.summary_offsets[p], self.summary_offsets[p + 1])
                                           for p in kept] + [np.zeros(0, int)])
            summaries = np.concatenate([self.summaries[summary_rows], new.summaries])
            summary_counts = np.concatenate([np.diff(self.summary_offsets)[kept], np.diff(new.summary_offsets)])
            summary_offsets = np.concatenate([[0], np.cumsum(summary_counts)]).astype(np.int64)
        else:
            summaries, summary_offsets = self.summaries, self.summary_offsets
        return MultiVectorIndex(np.concatenate([self.page_ids[kept], new.page_ids]),
                                np.concatenate([self.versions[kept], new.versions]),
                                np.concatenate([self.document_ids[kept], new.document_ids]),
                                np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), vectors, summaries,
                                summary_offsets, self.per_page, generation)

    def save(self, folder: Path) -> None:
        def write(tmp: Path) -> None:
            np.save(tmp / "vectors.npy", self.vectors)
            np.save(tmp / "summaries.npy", self.summaries)
            np.savez(tmp / "pages.npz", page_ids=self.page_ids, versions=self.versions,
                     document_ids=self.document_ids, offsets=self.offsets, summary_offsets=self.summary_offsets,
                     per_page=np.asarray(self.per_page))

        save_atomically(folder, self.generation, write)

    @classmethod
    def load(cls, folder: Path) -> MultiVectorIndex | None:
        """The saved copy, whatever its generation, if it is complete; else None."""
        generation = saved_generation(folder)
        if generation is None:
            return None
        try:
            pages = np.load(folder / "pages.npz")
            return cls(pages["page_ids"], pages["versions"], pages["document_ids"], pages["offsets"],
                       np.load(folder / "vectors.npy", mmap_mode="r"), np.load(folder / "summaries.npy"),
                       pages["summary_offsets"], int(pages["per_page"]), generation)
        except (OSError, KeyError, ValueError):
            return None

    @property
    def n_pages(self) -> int:
        return len(self.page_ids)

    @property
    def nbytes(self) -> int:
        return int(self.vectors.nbytes + self.summaries.nbytes + self.offsets.nbytes + self.summary_offsets.nbytes)

    def search(self, query: np.ndarray, k: int, document_ids: list[str] | None = None, *, exact: bool = False,
               rerank: int | None = None, extra_page_ids: Iterable[str] = ()) -> list[PageScore]:
        """The k best pages by normalised MaxSim: exact over every page (of these documents) when asked, without
        a prefilter or when the documents have at most `rerank` pages; else exact over the prefilter's best
        `rerank` pages plus `extra_page_ids`."""
        query = np.asarray(query, np.float32)
        rerank = rerank or max(RERANK_MIN, self.n_pages // RERANK_SHARE)
        allowed = None if document_ids is None else np.isin(self.document_ids, np.asarray(document_ids, str))
        if exact or len(self.summary_offsets) == 0 or (allowed is not None and allowed.sum() <= rerank):
            if allowed is None:
                return self._top(np.arange(self.n_pages), self.exact_scores(query), k)
            pages = np.flatnonzero(allowed)
            return self._top(pages, self._scores_of(query, pages), k)
        approx = self.approximate_scores(query)
        if allowed is not None:
            approx[~allowed] = -np.inf
        n = min(rerank, int(np.isfinite(approx).sum()))
        pages = np.argpartition(-approx, n - 1)[:n] if n else np.zeros(0, np.int64)
        extra = np.flatnonzero(np.isin(self.page_ids, np.asarray(list(extra_page_ids), str)))
        if allowed is not None:
            extra = extra[allowed[extra]]
        pages = np.union1d(pages, extra)
        return self._top(pages, self._scores_of(query, pages), k)

    def exact_scores(self, query: np.ndarray) -> np.ndarray:
        """(P,) normalised MaxSim of every page over all its vectors."""
        return _segment_maxsim(np.asarray(query, np.float32), self.vectors, self.offsets)

    def approximate_scores(self, query: np.ndarray) -> np.ndarray:
        """(P,) normalised MaxSim of every page over its summaries (the prefilter)."""
        return _segment_maxsim(np.asarray(query, np.float32), self.summaries, self.summary_offsets)

    def _scores_of(self, query: np.ndarray, pages: np.ndarray) -> np.ndarray:
        """Exact normalised MaxSim of these pages, one product per page over its own contiguous rows."""
        out = np.zeros(len(pages), np.float32)
        for i, p in enumerate(pages):
            a, b = self.offsets[p], self.offsets[p + 1]
            if b > a:
                out[i] = (query @ self.vectors[a:b].astype(np.float32, copy=False).T).max(axis=1).sum()
        return out / max(len(query), 1)  # SPEC §6: normalise by query vectors

    def _top(self, pages: np.ndarray, scores: np.ndarray, k: int) -> list[PageScore]:
        n = min(k, len(pages))
        if n == 0:
            return []
        top = np.argpartition(-scores, n - 1)[:n]
        return rank({(str(self.page_ids[p]), str(self.versions[p])): float(s)
                     for p, s in zip(pages[top], scores[top])}, k)


def brute_force(query: np.ndarray, pages: list[np.ndarray]) -> np.ndarray:
    """Reference normalised MaxSim of each page, one plain product per page (what tests and benchmarks trust)."""
    return np.asarray([normalised_maxsim(query, p) if len(p) else 0.0 for p in pages])


def summarise(vectors: np.ndarray, offsets: np.ndarray, k: int = SUMMARIES) -> tuple[np.ndarray, np.ndarray]:
    """(summaries, summary offsets): min(k, n) unit directions for each page vectors[offsets[i]:offsets[i + 1]],
    by spherical k-means over its vectors seeded with rows spread evenly through the page (deterministic).
    Pages go through in batches padded with zero rows, which add nothing to any centroid."""
    counts = np.diff(offsets)
    sizes = np.minimum(counts, k)
    summary_offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    out = np.zeros((summary_offsets[-1], vectors.shape[1]), np.float32)
    small = np.flatnonzero(counts <= k)
    for p in small:  # a page of at most k vectors is its own summary
        out[summary_offsets[p] : summary_offsets[p + 1]] = vectors[offsets[p] : offsets[p + 1]]
    large = np.flatnonzero(counts > k)
    for start in range(0, len(large), SUMMARY_BATCH):
        pages = large[start : start + SUMMARY_BATCH]
        width = int(counts[pages].max())
        batch = np.zeros((len(pages), width, vectors.shape[1]), np.float32)  # (B, n, d)
        seeds = np.empty((len(pages), k), np.int64)
        for j, p in enumerate(pages):
            batch[j, : counts[p]] = vectors[offsets[p] : offsets[p + 1]]
            seeds[j] = np.linspace(0, counts[p] - 1, k).astype(np.int64)
        centroids = np.take_along_axis(batch, seeds[:, :, None], axis=1)  # (B, k, d)
        for _ in range(KMEANS_ITERATIONS):
            assign = np.argmax(batch @ centroids.transpose(0, 2, 1), axis=2)  # (B, n)
            onehot = (assign[:, :, None] == np.arange(k)).astype(np.float32)  # (B, n, k)
            sums = onehot.transpose(0, 2, 1) @ batch  # (B, k, d); zero rows add nothing
            norms = np.linalg.norm(sums, axis=2, keepdims=True)
            # A centroid that lost every vector keeps its place.
            centroids = np.where(norms > 1e-12, sums / np.maximum(norms, 1e-12), centroids)
        for j, p in enumerate(pages):
            out[summary_offsets[p] : summary_offsets[p + 1]] = centroids[j]
    return out, summary_offsets


def _segment_maxsim(query: np.ndarray, rows: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """(P,) normalised MaxSim of each segment rows[offsets[i]:offsets[i + 1]]: one (m, d) x (d, chunk) product per
    chunk of whole segments and a segment max (np.maximum.reduceat), summed over the query vectors."""
    n_pages = len(offsets) - 1
    out = np.zeros(n_pages, np.float32)
    start = 0
    while start < n_pages:
        # Whole segments up to CHUNK_ROWS rows (at least one).
        stop = min(n_pages, max(start + 1, int(np.searchsorted(offsets, offsets[start] + CHUNK_ROWS, "right")) - 1))
        a, b = offsets[start], offsets[stop]
        if b > a:
            sims = query @ rows[a:b].astype(np.float32, copy=False).T  # (m, rows)
            # reduceat gives an empty segment its neighbour's row: those score 0 instead.
            best = np.maximum.reduceat(sims, np.minimum(offsets[start:stop] - a, b - a - 1), axis=1)  # (m, pages)
            out[start:stop] = np.where(offsets[start + 1 : stop + 1] > offsets[start:stop], best.sum(axis=0), 0.0)
        start = stop
    return out / max(len(query), 1)  # SPEC §6: normalise by query vectors
