"""Search: up to four routes over the store's rows, grouped by page, fused by weighted reciprocal rank fusion.

The routes (`RetrievalSettings` weighs each; weight 0 leaves one out): dense and BM25 over passages, where a page
scores as its best passage, and BM25 and dense over whole pages (BM25 of all a page's text; the mean direction of
its passages). Each route ranks pages; fusion (Cormack et al. 2009) scores a page sum over routes of
weight / (rrf_k + rank). Passage routes find the one paragraph that answers; the page-level BM25 route finds a
page whose words answer together though no one passage holds them all, as in a manual's option lists.
The document filter is resolved to document ids first and applied inside the search (Milvus's filter expression,
or the memory index's row selection), never to the top-k afterwards, so a filtered search still returns k pages
when k exist.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import numpy as np

from pagelens.errors import BadInputError, NotFoundError
from pagelens.tools.corpus.store import PageStore
from pagelens.tools.pages import Page
from pagelens.tools.retrieval.embedders import TextEmbedder, make_embedder
from pagelens.tools.retrieval.lexical import query_terms, query_vector, term_id, tokenize
from pagelens.tools.retrieval.relevance import PageEvidence, coverage, keep_relevant, query_weights, route_features
from pagelens.tools.retrieval.vectors import VectorHit

MAX_K = 100
FILTER_CANDIDATES = 20  # pages the relevance filter judges (MIRAGE filters its retriever's candidate list)
SNIPPET_CHARS = 240


@dataclass(frozen=True)
class Hit:
    """A page found by a search: its score (higher is better; the fused rank score), the passage that matched, and
    its similarity: the cosine between the query's and its best passage's embeddings (0 when the dense route did
    not find it), a retrieval score on the embedder's own scale."""

    page: Page
    score: float
    snippet: str
    similarity: float = 0.0
    relevance: float | None = None
    """The probability that the page supports an answer (tools/retrieval/relevance.py); None when not judged."""
    routes: dict[str, dict] = field(default_factory=dict)
    """Where each retrieval route that found the page ranked it: {route: {"rank", "score"}}."""
    supported: bool | None = None
    """Whether `relevance` reaches the relevance model's threshold: the page supports an answer (the relevance
    filter keeps it); None when not judged."""
    evidence: dict[str, float] = field(default_factory=dict)
    """The normalised scores the relevance was computed from, by name (tools/retrieval/relevance.py)."""

    def to_dict(self) -> dict:
        return {
            "page_id": self.page.page_id,
            "document": self.page.document,
            "page_number": self.page.page_number,
            "score": round(self.score, 6),
            "relevance": None if self.relevance is None else round(self.relevance, 4),
            "supported": self.supported,
            "evidence": {name: round(value, 4) for name, value in self.evidence.items()},
            "routes": self.routes,
            "snippet": self.snippet,
            "image_path": str(self.page.image_path),
        }



class Retriever:
    def __init__(self, store: PageStore, embedder: TextEmbedder | None = None):
        self.store = store
        self.embedder = embedder or make_embedder(store.retrieval.embedder)

    def rarity(self, words: list[str]) -> dict[str, float]:
        """Each word's BM25 inverse document frequency over the store's passages (0 for a word no passage holds):
        how much finding it says about a passage, on the same scale the lexical route weighs it."""
        ids = {word: term_id(word) for word in words}
        weights = query_vector(list(set(ids.values())),
                               self.store.catalog.document_frequencies(ids.values()), self.store.catalog.passage_count())
        return {word: weights.get(i, 0.0) for word, i in ids.items()}

    def search(self, query: str, k: int = 5, document: str | None = None) -> list[Hit]:
        """The k best pages for the query, optionally only in documents whose name matches a glob."""
        if not 1 <= k <= MAX_K:
            raise BadInputError(f"k={k} is out of range; ask for 1 to {MAX_K} pages.")
        rankings = self.route_rankings(query, document)
        weights = self.store.retrieval.route_weights
        fused: dict[str, float] = {}
        relative: dict[str, float] = {}
        for route, ranking in rankings.items():
            top = ranking[0][1].score if ranking and ranking[0][1].score > 0 else 1.0
            for rank, (page_id, hit) in enumerate(ranking, start=1):
                fused[page_id] = fused.get(page_id, 0.0) + weights[route] / (self.store.retrieval.rrf_k + rank)
                relative[page_id] = relative.get(page_id, 0.0) + weights[route] * hit.score / top
        # Two routes tie often under RRF (1st + 2nd vs 2nd + 1st); the scores relative to each route's best
        # then decide, so a page that is a close second in one route beats a distant second.
        ranked = sorted(fused, key=lambda p: (-fused[p], -relative[p], p))[:k]
        pages = {p.page_id: p for p in self.store.pages(ranked)}
        # The snippet is a page's best passage in the passage routes (a page-level row has no passage of its own).
        best: dict[str, str] = {}
        for route in ("bm25", "dense"):
            for page_id, hit in rankings.get(route, []):
                best.setdefault(page_id, hit.pk)
        passages = self.store.catalog.passages(best[p] for p in ranked if p in best)
        similarity = {page_id: hit.score for page_id, hit in rankings.get("dense", [])}
        evidence = self.page_evidence(query, ranked, rankings)
        model = self.store.retrieval.relevance
        placed = {route: {page_id: {"rank": rank, "score": round(hit.score, 6)}
                          for rank, (page_id, hit) in enumerate(ranking, start=1)}
                  for route, ranking in rankings.items()}
        hits = []
        for p in ranked:
            if p not in pages:
                continue
            relevance = model.probability(evidence[p])
            hits.append(Hit(pages[p], fused[p],
                            snippet(passages[best[p]].text if best.get(p) in passages else "", query),
                            similarity.get(p, 0.0), relevance,
                            {route: found[p] for route, found in placed.items() if p in found},
                            relevance >= model.threshold, asdict(evidence[p])))
        return hits

    def filtered(self, query: str, k: int = 5, document: str | None = None) -> tuple[list[Hit], list[Hit]]:
        """MIRAGE's relevance filter (SPEC §6): of the best FILTER_CANDIDATES pages (or k, if more), those the
        relevance model says support an answer, at most k in rank order; when none does, the most probable one.
        Returns (kept, candidates): every candidate's decision shows in its `relevance` and `supported`."""
        candidates = self.search(query, max(k, FILTER_CANDIDATES), document)
        kept = keep_relevant([hit.relevance for hit in candidates], self.store.retrieval.relevance.threshold, k)
        return [candidates[i] for i in kept], candidates

    def page_evidence(self, query: str, page_ids: list[str],
                      rankings: dict[str, list[tuple[str, VectorHit]]]) -> dict[str, PageEvidence]:
        """The normalised scores the relevance model reads (tools/retrieval/relevance.py), per page, from the
        routes' rankings of this query (`route_rankings`)."""
        terms = query_terms(query)
        catalog = self.store.catalog
        weights = query_weights(terms, catalog.document_frequencies(terms), catalog.passage_count())
        passages = catalog.page_terms(page_ids)
        similarity = {page_id: hit.score for page_id, hit in rankings.get("dense", [])}
        # MIRAGE's scores come from the retriever's own route: the page image's for a vision retriever.
        own = rankings.get("vision" if self.store.retrieval.vision else "dense", [])
        scores = {page_id: hit.score for page_id, hit in own}
        # A page the route did not list scores as its last candidate: at most that, by the route's own ranking.
        floor = min(scores.values(), default=0.0)
        mirage = dict(zip(page_ids, route_features(list(scores.values()), [scores.get(p, floor) for p in page_ids])))
        return {
            p: PageEvidence(coverage(weights, frozenset().union(*passages[p])),
                            max((coverage(weights, t) for t in passages[p]), default=0.0),
                            min(1.0, max(0.0, similarity.get(p, 0.0))), *mirage[p])
            for p in page_ids
        }

    def route_rankings(self, query: str, document: str | None = None,
                       routes: Iterable[str] | None = None) -> dict[str, list[tuple[str, VectorHit]]]:
        """Each route's pages, best first, as (page_id, the hit that ranks it): the routes of positive weight, or
        the named ones (`benchmarks/retrieval.py` measures each alone)."""
        document_ids = self._document_ids(query, document)
        settings = self.store.retrieval
        wanted = [r for r, w in settings.route_weights.items() if w > 0] if routes is None else list(routes)
        backend = self.store.memory_index() if self.store.use_memory_index() else self.store.vectors
        lexical = self._lexical_query(query)
        dense = self.embedder.embed_query(query) if {"dense", "page-dense"} & set(wanted) else None
        search = {
            "dense": lambda: backend.search_dense(dense, settings.candidates, document_ids),
            "bm25": lambda: backend.search_sparse(lexical, settings.candidates, document_ids) if lexical else [],
            "page-bm25": lambda: (backend.search_sparse(lexical, settings.candidates, document_ids, level="page")
                                  if lexical else []),
            "page-dense": lambda: backend.search_dense(dense, settings.candidates, document_ids, level="page"),
            "vision": lambda: self._vision(query, document_ids),
        }
        unknown = set(wanted) - set(search)
        if unknown:
            raise BadInputError(f"unknown retrieval route(s) {', '.join(sorted(unknown))}; "
                                f"the routes are {', '.join(search)}.")
        return {route: _best_per_page(search[route]()) for route in wanted}

    def fused_in_milvus(self, query: str, k: int = 5, document: str | None = None) -> list[tuple[str, VectorHit]]:
        """The k best pages by Milvus's own fusion: one `hybrid_search` call, a request per active route, fused by
        unweighted RRF (rrf_k) and grouped by page (each page's best row, with its fused score).

        Only where every active route runs in Milvus (not from the memory index, no vision route) and their weights
        are equal (RRFRanker weighs none); else BadInputError. `search` does not use it: Milvus Lite fuses rows before
        it groups them by page (vectors.VectorStore.fused_pages), which is not `search`'s fusion of ranked pages, and
        `search` needs each route's own ranking for snippets and relevance evidence anyway."""
        settings = self.store.retrieval
        weights = {route: w for route, w in settings.route_weights.items() if w > 0}
        if self.store.use_memory_index() or "vision" in weights or len(set(weights.values())) > 1:
            raise BadInputError(f"Milvus fuses only equally weighted routes it searches itself; these are "
                                f"{weights} on {'the memory index' if self.store.use_memory_index() else 'Milvus'}. "
                                f"Use `search`, or equal weights without vision and memory_index off.")
        document_ids = self._document_ids(query, document)
        lexical = self._lexical_query(query)
        dense = self.embedder.embed_query(query) if {"dense", "page-dense"} & set(weights) else None
        query_of = {"dense": (dense, "passage"), "bm25": (lexical, "passage"), "page-bm25": (lexical, "page"),
                    "page-dense": (dense, "page")}
        vectors = self.store.vectors
        requests = [vectors.request(q, settings.candidates, document_ids, level)
                    for q, level in (query_of[route] for route in weights)
                    if isinstance(q, np.ndarray) or q]  # a query of no known terms has no lexical request
        return [(hit.page_id, hit) for hit in vectors.fused_pages(requests, settings.rrf_k, k)]

    def _document_ids(self, query: str, document: str | None) -> list[str] | None:
        """The documents a search is restricted to (None: all); refuses an empty query or an unmatched glob."""
        if not query.strip():
            raise BadInputError("the query is empty; give some words to search for.")
        if document is None:
            return None
        matched = self.store.match_documents(document)
        if not matched:
            raise NotFoundError(
                f"no indexed document matches {document!r}; `pagelens pages` lists the document names."
            )
        return [d.document_id for d in matched]

    def _lexical_query(self, query: str) -> dict[int, float] | str:
        """The BM25 query: the query's text for Milvus to analyse (lexical "server"), or our IDF weights of its
        terms from the catalogue's counts ({} when no passage holds any)."""
        if self.store.retrieval.lexical == "server":
            return query
        terms = query_terms(query)
        return query_vector(terms, self.store.catalog.document_frequencies(terms), self.store.catalog.passage_count())

    def _vision(self, query: str, document_ids: list[str] | None) -> list[VectorHit]:
        """The vision route: pages by normalised MaxSim (one vector a page: the dot product) of the query's and the
        page image's vectors, committed versions only (a page being re-indexed has two)."""
        store = self.store
        if store.page_vectors is None:
            return []
        query_vectors = store.page_embedder().embed_query(query)
        settings = store.retrieval
        if store.use_memory_index():
            scores = store.vision_index().search(query_vectors, settings.candidates, document_ids)
        else:
            scores = store.page_vectors.search(query_vectors, settings.candidates, document_ids,
                                               candidates=settings.vision_candidates)
        committed = {row.page_id: row.version for row in store.catalog.pages([s.page_id for s in scores])}
        return [VectorHit(f"{s.page_id}:{s.version}", s.page_id, s.score) for s in scores
                if committed.get(s.page_id) == s.version]


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
