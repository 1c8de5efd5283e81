"""Multi-vector page vectors (ColPali / ColQwen2 style) in Milvus, searched by MaxSim (SPEC §6).

A page is an (n, d) array of unit vectors (one per image patch, about 700-1030; a third of that after token
pooling). Milvus Lite has no multi-vector field (an Array-of-Structs field is silently dropped), so this store keeps
one row per page vector in its own collection and searches in two steps:

1. candidates: an ANN search (HNSW, inner product) per query vector, all in one call, grouped by page: each query
   vector's best pages by their best row, plus any pages the caller adds (from the text routes, say);
2. exact MaxSim over ALL of each candidate page's vectors: read a few pages a query, and when a query fills
   Milvus's result window, again with a query iterator, which has no row limit (the Milvus tutorial reads a
   page's vectors with limit 1000 and silently drops the patches of 1030-vector pages).

Scores are normalised (divided by the number of query vectors), so a threshold means the same for any query.
A page's vectors are scored per document version: during a re-index two versions of a page are two results,
never one mixed page; the caller keeps the committed one.

Milvus Lite (a folder ending in .db) and a Milvus server (an http:// URI) take the same calls.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from pagelens.errors import BadInputError
from pagelens.tools.retrieval.collection import HNSW_BUILD, Collection, document_filter

COLLECTION = "page_vectors"
INSERT_BATCH = 4096  # rows an insert call carries (a gRPC message stays far below its 64 MB limit)
# Reading candidate pages: one query of at most QUERY_WINDOW rows (Milvus's own cap on limit + offset) for
# FETCH_PAGES pages (about 12k rows at 1030 a page); a full window may have left rows out, so those pages are
# read again with a query iterator, which has no row limit (and costs a third more time than one query).
QUERY_WINDOW = 16_384
FETCH_PAGES = 12
ITERATOR_BATCH = 4_000


@dataclass(frozen=True)
class PageScore:
    page_id: str
    version: str
    score: float  # MaxSim / number of query vectors


def maxsim(query: np.ndarray, page: np.ndarray) -> float:
    """Late-interaction score: sum over query vectors of the best dot product with the page's vectors (SPEC §6)."""
    return float((np.asarray(query, np.float32) @ np.asarray(page, np.float32).T).max(axis=1).sum())  # (m, n) → ()


def normalised_maxsim(query: np.ndarray, page: np.ndarray) -> float:
    """`maxsim` divided by the number of query vectors, so it has a fixed scale for thresholds and fusion (SPEC §6)."""
    return maxsim(query, page) / len(query)


def rank(scores: dict[tuple[str, str], float], k: int) -> list[PageScore]:
    """The k best (page_id, version) keys by score, ties by page id."""
    best = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
    return [PageScore(page_id, version, score) for (page_id, version), score in best]


def _group(batches: Iterable[list[dict]]) -> Iterator[tuple[str, str, np.ndarray]]:
    """Rows grouped into (page_id, version, vectors in patch order)."""
    rows: dict[tuple[str, str], list[tuple[int, list[float]]]] = {}
    for batch in batches:
        for r in batch:
            rows.setdefault((r["page_id"], r["version"]), []).append((int(r["pk"].rsplit(":", 1)[1]), r["vector"]))
    for (page_id, version), vectors in rows.items():
        vectors.sort(key=lambda pv: pv[0])
        yield page_id, version, np.asarray([v for _, v in vectors], np.float32)


def _quoted(values: Iterable[str]) -> str:
    # Page ids are a document digest prefix + a page number and versions are hex tokens: nothing to escape.
    return ", ".join(f'"{v}"' for v in values)


class MultiVectorStore(Collection):
    def __init__(self, uri: str, dim: int, *, recreate: bool = False, collection: str = COLLECTION):
        super().__init__(uri, dim, collection, recreate=recreate)

    def _schema(self):
        from pymilvus import DataType

        schema = self._client.create_schema(auto_id=False)
        # "<page_id>:<version>:<i>": a page written twice overwrites its rows instead of doubling them.
        schema.add_field("pk", DataType.VARCHAR, is_primary=True, max_length=96)
        schema.add_field("page_id", DataType.VARCHAR, max_length=64)
        schema.add_field("document_id", DataType.VARCHAR, max_length=64)
        schema.add_field("version", DataType.VARCHAR, max_length=16)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self.dim)
        index = self._client.prepare_index_params()
        index.add_index("vector", index_type="HNSW", metric_type="IP", params=HNSW_BUILD)
        index.add_index("document_id", index_type="INVERTED")
        index.add_index("page_id", index_type="INVERTED")
        return schema, index

    def insert_pages(self, pages: Iterable[tuple[str, str, np.ndarray]], version: str) -> int:
        """Write (page_id, document_id, (n, dim) vectors) pages of one version; returns the rows written."""
        batch: list[dict] = []
        written = 0
        for page_id, document_id, vectors in pages:
            vectors = np.asarray(vectors, np.float32)
            if vectors.ndim != 2 or vectors.shape[1] != self.dim:
                raise BadInputError(f"page {page_id!r} has vectors of shape {vectors.shape}; pass an (n, {self.dim}) "
                                 "array, one row per patch.")
            for i, row in enumerate(vectors):
                batch.append({"pk": f"{page_id}:{version}:{i}", "page_id": page_id, "document_id": document_id,
                              "version": version, "vector": row})
                if len(batch) == INSERT_BATCH:
                    written += self._write(batch)
                    batch = []
        return written + self._write(batch)

    def _write(self, rows: list[dict]) -> int:
        if rows:
            self._client.upsert(self.collection, rows)
        return len(rows)

    def count(self, document_ids: list[str] | None = None) -> int:
        res = self._client.query(self.collection, filter=document_filter(document_ids), output_fields=["count(*)"])
        return int(res[0]["count(*)"])

    def candidates(self, query: np.ndarray, per_vector: int, document_ids: list[str] | None) -> set[str]:
        """The page_ids of each query vector's `per_vector` best pages by their best row, in one search call (grouped
        by page inside Milvus, so the rows of one page do not crowd the others out)."""
        res = self._client.search(
            self.collection, [q for q in np.asarray(query, np.float32)], anns_field="vector", limit=per_vector,
            filter=document_filter(document_ids), output_fields=["page_id"], group_by_field="page_id",
            search_params={"metric_type": "IP", "params": {"ef": max(64, per_vector)}},
        )
        return {h["entity"]["page_id"] for hits in res for h in hits}

    def page_vectors(self, page_ids: Iterable[str], document_ids: list[str] | None = None
                     ) -> Iterator[tuple[str, str, np.ndarray]]:
        """(page_id, version, (n, dim) vectors in patch order) of every version of these pages, ALL their rows."""
        page_ids = sorted(set(page_ids))
        documents = document_filter(document_ids)
        fields = ["pk", "page_id", "version", "vector"]
        for start in range(0, len(page_ids), FETCH_PAGES):
            expression = f"page_id in [{_quoted(page_ids[start : start + FETCH_PAGES])}]"
            if documents:
                expression = f"{expression} and {documents}"
            batches = [self._client.query(self.collection, filter=expression, output_fields=fields,
                                          limit=QUERY_WINDOW)]
            if len(batches[0]) >= QUERY_WINDOW:  # maybe cut off: read them all, unlimited
                batches = list(self._iterate(expression, fields))
            yield from _group(batches)

    def pages(self, document_ids: list[str] | None = None) -> Iterator[tuple[str, str, str, np.ndarray]]:
        """(page_id, document_id, version, vectors) of every page (of these documents), to build the memory index."""
        fields = ["pk", "page_id", "document_id", "version", "vector"]
        documents: dict[tuple[str, str], str] = {}
        arrays, keys, positions = [], [], []
        for batch in self._iterate(document_filter(document_ids), fields):
            arrays.append(np.asarray([r["vector"] for r in batch], np.float32))
            for r in batch:
                documents[r["page_id"], r["version"]] = r["document_id"]
                keys.append(f'{r["page_id"]}:{r["version"]}')
                positions.append(int(r["pk"].rsplit(":", 1)[1]))
        if not arrays:
            return
        matrix = np.concatenate(arrays)
        keys_arr = np.asarray(keys)
        order = np.lexsort((np.asarray(positions), keys_arr))  # by page, then patch order
        keys_arr = keys_arr[order]
        starts = np.flatnonzero(np.r_[True, keys_arr[1:] != keys_arr[:-1]])
        for a, b in zip(starts, np.r_[starts[1:], len(order)]):
            page_id, version = str(keys_arr[a]).rsplit(":", 1)
            yield page_id, documents[page_id, version], version, matrix[order[a:b]]

    def _iterate(self, expression: str, fields: list[str]) -> Iterator[list[dict]]:
        iterator = self._client.query_iterator(self.collection, batch_size=ITERATOR_BATCH, filter=expression,
                                               output_fields=fields)
        try:
            while batch := iterator.next():
                yield batch
        finally:
            iterator.close()

    def search(self, query: np.ndarray, k: int, document_ids: list[str] | None = None, *, candidates: int = 16,
               extra_page_ids: Iterable[str] = ()) -> list[PageScore]:
        """The k best pages by exact normalised MaxSim over the candidates: each query vector's `candidates` best
        pages (by their best row, from HNSW), plus `extra_page_ids` (e.g. from the text routes), within these
        documents if given."""
        query = np.asarray(query, np.float32)
        if query.ndim != 2 or query.shape[1] != self.dim:
            raise BadInputError(f"the query has shape {query.shape}; pass an (m, {self.dim}) array, one row per token.")
        pages = self.candidates(query, candidates, document_ids) | set(extra_page_ids)
        scores = {(page_id, version): normalised_maxsim(query, vectors)
                  for page_id, version, vectors in self.page_vectors(pages, document_ids)}
        return rank(scores, k)
