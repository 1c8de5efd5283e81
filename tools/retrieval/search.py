"""Search: dense and lexical routes over passages, grouped by page, fused by reciprocal rank fusion.

A page scores, in each route, as its best passage; the routes' page rankings are fused with RRF
(Cormack et al. 2009): score(page) = sum over routes of 1 / (rrf_k + rank). The document filter is resolved
to document ids first and applied inside the search (Milvus's filter expression, or the memory index's row
selection), never to the top-k afterwards, so a filtered search still returns k pages when k exist.
"""

from __future__ import annotations

import re

from pagelens.errors import BadInputError, NotFoundError
from pagelens.tools.corpus.store import PageStore
from pagelens.tools.pages import Hit
from pagelens.tools.retrieval.embedders import TextEmbedder, make_embedder
from pagelens.tools.retrieval.lexical import query_terms, query_vector, tokenize
from pagelens.tools.retrieval.vectors import VectorHit

MAX_K = 100
SNIPPET_CHARS = 240


class Retriever:
    def __init__(self, store: PageStore, embedder: TextEmbedder | None = None):
        self.store = store
        self.embedder = embedder or make_embedder(store.retrieval.embedder)

    def search(self, query: str, k: int = 5, document: str | None = None) -> list[Hit]:
        """The k best pages for the query, optionally only in documents whose name matches a glob."""
        if not query.strip():
            raise BadInputError("the query is empty; give some words to search for.")
        if not 1 <= k <= MAX_K:
            raise BadInputError(f"k={k} is out of range; ask for 1 to {MAX_K} pages.")
        document_ids = None
        if document is not None:
            matched = self.store.match_documents(document)
            if not matched:
                raise NotFoundError(
                    f"no indexed document matches {document!r}; `pagelens pages` lists the document names."
                )
            document_ids = [d.document_id for d in matched]
        settings = self.store.retrieval
        backend = self.store.memory_index() if self.store.use_memory_index() else self.store.vectors
        terms = query_terms(query)
        sparse = query_vector(terms, self.store.catalog.document_frequencies(terms), self.store.catalog.passage_count())
        dense_hits = backend.search_dense(self.embedder.embed_query(query), settings.candidates, document_ids)
        lexical_hits = backend.search_sparse(sparse, settings.candidates, document_ids) if sparse else []
        fused: dict[str, float] = {}
        relative: dict[str, float] = {}
        best: dict[str, str] = {}
        for hits in (dense_hits, lexical_hits):
            top = hits[0].score if hits and hits[0].score > 0 else 1.0
            for rank, (page_id, hit) in enumerate(_best_per_page(hits), start=1):
                fused[page_id] = fused.get(page_id, 0.0) + 1.0 / (settings.rrf_k + rank)
                relative[page_id] = relative.get(page_id, 0.0) + hit.score / top
                best.setdefault(page_id, hit.pk)
        # Two routes tie often under RRF (1st + 2nd vs 2nd + 1st); the scores relative to each route's best
        # then decide, so a page that is a close second in one route beats a distant second.
        ranked = sorted(fused, key=lambda p: (-fused[p], -relative[p], p))[:k]
        pages = {p.page_id: p for p in self.store.pages(ranked)}
        passages = self.store.catalog.passages(best[p] for p in ranked)
        similarity = {page_id: hit.score for page_id, hit in _best_per_page(dense_hits)}
        return [
            Hit(pages[p], fused[p], snippet(passages[best[p]].text if best[p] in passages else "", query),
                similarity.get(p, 0.0))
            for p in ranked
            if p in pages
        ]


def _best_per_page(hits: list[VectorHit]) -> list[tuple[str, VectorHit]]:
    """(page_id, its best passage's hit) in rank order; hits arrive best first."""
    seen: dict[str, VectorHit] = {}
    for hit in hits:
        seen.setdefault(hit.page_id, hit)
    return list(seen.items())


def snippet(text: str, query: str, width: int = SNIPPET_CHARS) -> str:
    """A window of the passage around the first query term it contains, on one line."""
    flat = " ".join(text.split())
    if len(flat) <= width:
        return flat
    start = 0
    for term in sorted(set(tokenize(query)), key=len, reverse=True):
        match = re.search(re.escape(term), flat, re.IGNORECASE)
        if match:
            start = max(0, match.start() - width // 3)
            break
    window = flat[start : start + width]
    return ("…" if start > 0 else "") + window + ("…" if start + width < len(flat) else "")
