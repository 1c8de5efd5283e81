"""Passage vectors in Milvus: one row per passage (dense + BM25 sparse), and one per page (the mean direction of
its passages + BM25 over its whole text), searched at one of the two levels with a document filter.

A page's row is told apart by its primary key (`page_row_pk`: a prefix the passage keys never have), so both
levels share one collection, one document filter and one delete.

Milvus Lite (the default, a folder under the store) and a Milvus server take the same calls. Dense vectors
use HNSW (inner product on normalised vectors): it indexes incrementally, segment by segment, and keeps
recall@10 above 0.99 at `ef` >= 64 (measured by benchmarks/search.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np

from pagelens.tools.retrieval.collection import HNSW_BUILD, Collection, document_filter

COLLECTION = "passages"


PAGE_ROW_PREFIX = "page:"
Level = Literal["passage", "page"]


def page_row_pk(page_id: str, version: str) -> str:
    return f"{PAGE_ROW_PREFIX}{page_id}:{version}"


def is_page_row(pk: str) -> bool:
    return pk.startswith(PAGE_ROW_PREFIX)


@dataclass(frozen=True)
class VectorRow:
    pk: str
    page_id: str
    document_id: str
    dense: np.ndarray
    sparse: dict[int, float]


@dataclass(frozen=True)
class VectorHit:
    pk: str
    page_id: str
    score: float


def search_filter(level: Level, document_ids: list[str] | None) -> str:
    """A Milvus boolean expression for one level's rows of these documents."""
    pages = f'pk like "{PAGE_ROW_PREFIX}%"'
    expression = pages if level == "page" else f"not ({pages})"
    documents = document_filter(document_ids)
    return f"{expression} and {documents}" if documents else expression


class VectorStore(Collection):
    def __init__(self, uri: str, dim: int, *, recreate: bool = False):
        super().__init__(uri, dim, COLLECTION, recreate=recreate)

    def _schema(self):
        from pymilvus import DataType

        schema = self._client.create_schema(auto_id=False)
        schema.add_field("pk", DataType.VARCHAR, is_primary=True, max_length=64)
        schema.add_field("page_id", DataType.VARCHAR, max_length=64)
        schema.add_field("document_id", DataType.VARCHAR, max_length=64)
        # The document version the row belongs to: a re-index writes its rows beside the committed ones.
        schema.add_field("version", DataType.VARCHAR, max_length=16)
        schema.add_field("dense", DataType.FLOAT_VECTOR, dim=self.dim)
        schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
        index = self._client.prepare_index_params()
        index.add_index("dense", index_type="HNSW", metric_type="IP", params=HNSW_BUILD)
        index.add_index("sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="IP")
        index.add_index("document_id", index_type="INVERTED")
        return schema, index

    def insert(self, rows: list[VectorRow], version: str) -> None:
        """Write rows of one document version (their pks must be unique to that version)."""
        if rows:
            self._client.upsert(
                COLLECTION,
                [
                    {"pk": r.pk, "page_id": r.page_id, "document_id": r.document_id, "version": version,
                     "dense": r.dense.tolist(), "sparse": r.sparse}
                    for r in rows
                ],
            )

    def count(self, level: Level = "passage") -> int:
        res = self._client.query(COLLECTION, filter=search_filter(level, None), output_fields=["count(*)"])
        return int(res[0]["count(*)"])

    def search_dense(self, query: np.ndarray, limit: int, document_ids: list[str] | None,
                     level: Level = "passage") -> list[VectorHit]:
        res = self._client.search(
            COLLECTION, [query.tolist()], anns_field="dense", limit=limit,
            filter=search_filter(level, document_ids), output_fields=["page_id"],
            search_params={"metric_type": "IP", "params": {"ef": max(64, limit)}},
        )
        return [VectorHit(h["pk"], h["entity"]["page_id"], float(h["distance"])) for h in res[0]]

    def search_sparse(self, query: dict[int, float], limit: int, document_ids: list[str] | None,
                      level: Level = "passage") -> list[VectorHit]:
        if not query:
            return []
        res = self._client.search(
            COLLECTION, [query], anns_field="sparse", limit=limit,
            filter=search_filter(level, document_ids), output_fields=["page_id"],
            search_params={"metric_type": "IP"},
        )
        return [VectorHit(h["pk"], h["entity"]["page_id"], float(h["distance"])) for h in res[0]]

    def rows(self, document_ids: list[str] | None = None, batch_size: int = 4000) -> Iterator[list[VectorRow]]:
        """Every row, or these documents' rows, in batches (to build or update the memory index)."""
        iterator = self._client.query_iterator(
            COLLECTION, batch_size=batch_size, filter=document_filter(document_ids),
            output_fields=["pk", "page_id", "document_id", "dense", "sparse"],
        )
        try:
            while batch := iterator.next():
                yield [
                    VectorRow(r["pk"], r["page_id"], r["document_id"], np.asarray(r["dense"], np.float32),
                              {int(k): float(v) for k, v in r["sparse"].items()})
                    for r in batch
                ]
        finally:
            iterator.close()
