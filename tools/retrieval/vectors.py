"""Passage vectors in Milvus: one row per passage (dense + BM25 sparse), and one per page (the mean direction of
its passages + BM25 over its whole text), searched at one of the two levels with a document filter.

A page's row is told apart by its primary key (`page_row_pk`: a prefix the passage keys never have), so both
levels share one collection, one document filter and one delete.

Milvus Lite (the default, a folder under the store) and a Milvus server take the same calls. Dense vectors
use HNSW (inner product on normalised vectors): it indexes incrementally, segment by segment, and keeps
recall@10 above 0.99 at `ef` >= 64 (measured by benchmarks/search.py).

Lexical "server" (RetrievalSettings.lexical): each row keeps its text in an analysed `text` field and Milvus's BM25
function fills `sparse` from it; a query is its raw text, which Milvus analyses the same way, and Milvus keeps the
corpus statistics (IDF, average length). The analyzer is the standard tokenizer with our English stop words
(lexical.STOP_WORDS) as an explicit list: Milvus Lite knows no "english" analyzer (only "standard" and "jieba"), nor
the "_english_" stop-word set nor stemming filters, and an explicit list means the same on Lite and on Milvus.
Deviations from the client's BM25: stop words are dropped from the stored text too, not only from queries; a query
of nothing but stop words finds nothing; scripts without spaces are one token per run (no character n-grams, so a
Chinese query matches only whole runs) on Lite, per character on Milvus's standard tokenizer; Milvus Lite weighs
terms by each segment's own IDF (milvus_lite's sparse search notes it) rather than the collection's.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np

from pagelens.tools.retrieval.collection import HNSW_BUILD, Collection, document_filter
from pagelens.tools.retrieval.lexical import STOP_WORDS

COLLECTION = "passages"
# Milvus's bound on a VARCHAR; a page's text beyond it (rare: ~10k words) is left out of its server-side BM25.
MAX_TEXT_BYTES = 65_535
# "lowercase" for Milvus, whose standard tokenizer keeps case; Milvus Lite's lowercases and ignores the name.
ANALYZER = {"tokenizer": "standard", "filter": ["lowercase", {"type": "stop", "stop_words": sorted(STOP_WORDS)}]}


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
    text: str = ""
    """What a lexical="server" store's BM25 reads (the client one's reads `sparse`)."""


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
    def __init__(self, uri: str, dim: int, *, lexical: Literal["client", "server"] = "client",
                 recreate: bool = False):
        self.lexical = lexical
        super().__init__(uri, dim, COLLECTION, recreate=recreate)

    @property
    def _sparse_metric(self) -> str:
        return "BM25" if self.lexical == "server" else "IP"

    def _schema(self):
        from pymilvus import DataType, Function, FunctionType

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
        if self.lexical == "server":
            schema.add_field("text", DataType.VARCHAR, max_length=MAX_TEXT_BYTES, enable_analyzer=True,
                             analyzer_params=ANALYZER)
            schema.add_function(Function(name="bm25", function_type=FunctionType.BM25, input_field_names=["text"],
                                         output_field_names=["sparse"]))
        index.add_index("sparse", index_type="SPARSE_INVERTED_INDEX", metric_type=self._sparse_metric)
        index.add_index("document_id", index_type="INVERTED")
        return schema, index

    def insert(self, rows: list[VectorRow], version: str) -> None:
        """Write rows of one document version (their pks must be unique to that version)."""
        lexical = ((lambda r: {"text": _clip(r.text)}) if self.lexical == "server"
                   else (lambda r: {"sparse": r.sparse}))
        if rows:
            self._client.upsert(
                COLLECTION,
                [
                    {"pk": r.pk, "page_id": r.page_id, "document_id": r.document_id, "version": version,
                     "dense": r.dense.tolist(), **lexical(r)}
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

    def search_sparse(self, query: dict[int, float] | str, limit: int, document_ids: list[str] | None,
                      level: Level = "passage") -> list[VectorHit]:
        """BM25 search: `query` is the client's query weights (lexical.query_vector), or for lexical "server" the
        query's raw text."""
        if not query:
            return []
        res = self._client.search(
            COLLECTION, [query], anns_field="sparse", limit=limit,
            filter=search_filter(level, document_ids), output_fields=["page_id"],
            search_params={"metric_type": self._sparse_metric},
        )
        # Milvus gives a BM25 score as its distance, Milvus Lite its negative ("smaller is nearer"); neither is
        # ever below 0, so the magnitude is the score on both.
        return [VectorHit(h["pk"], h["entity"]["page_id"], abs(float(h["distance"]))) for h in res[0]]

    def request(self, query: np.ndarray | dict[int, float] | str, limit: int, document_ids: list[str] | None,
                level: Level):
        """One route of a `fused_pages` call: a dense query vector, or a BM25 query as `search_sparse` takes it."""
        from pymilvus import AnnSearchRequest

        if isinstance(query, np.ndarray):
            return AnnSearchRequest([query.tolist()], "dense", {"metric_type": "IP", "params": {"ef": max(64, limit)}},
                                    limit, expr=search_filter(level, document_ids))
        return AnnSearchRequest([query], "sparse", {"metric_type": self._sparse_metric}, limit,
                                expr=search_filter(level, document_ids))

    def fused_pages(self, requests: list, rrf_k: int, limit: int) -> list[VectorHit]:
        """Pages by Milvus's own RRF over these routes (`request`), in one call, one hit (its best row) a page.

        Milvus Lite (3.2: its HybridSearch servicer, and measured) fuses rows, then groups them by page: a page's
        passage rows and its page row are different rows, so a passage route and a page route never add up for one
        page, and a page's second passage takes a rank in its route. `Retriever.search` fuses ranked pages instead."""
        from pymilvus import RRFRanker

        res = self._client.hybrid_search(COLLECTION, requests, ranker=RRFRanker(rrf_k), limit=limit,
                                         output_fields=["page_id"], group_by_field="page_id")
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


def _clip(text: str) -> str:
    """The text cut to Milvus's VARCHAR bound, at a character boundary."""
    return text.encode()[:MAX_TEXT_BYTES].decode(errors="ignore")
