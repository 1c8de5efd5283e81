"""Does a retrieved page support an answer? A calibrated probability from normalised retrieval scores.

EVisRAG answers "insufficient to answer" when no page supports an answer; MIRAGE keeps a candidate page when a
query-aware relevance probability passes a threshold (SPEC §6). Here the probability is a logistic (Platt) model
over named scores of a page for a query, each normalised so that one model serves any corpus:
- `page_coverage`: the share of the query's term weight (BM25 idf; a word no passage holds weighs as the rarest)
  that occurs anywhere on the page;
- `passage_coverage`: the same share for the page's best single passage (an answer is usually stated in one place);
- `similarity`: the cosine between the query's and the best passage's embeddings;
- MIRAGE's three, from the retriever's own score (the vision route's normalised MaxSim for a vision retriever, the
  dense route's cosine for text): `score`, `gap` (the best candidate's score minus this page's) and `z` (the
  score's z-score within the candidate list).
A page supports an answer when its probability reaches the threshold. `RelevanceModel` is the one interface: the
defaults in `RetrievalSettings` (the three text scores) were fitted on the sample and field corpora
(benchmarks/relevance.py); `pagelens calibrate QUESTIONS.jsonl` fits a store's own model over the scores its
retriever has (`features_for`) and keeps it in the store's manifest, where it takes over. `keep_relevant` is
MIRAGE's filter.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pagelens.errors import BadInputError

# L2 penalty of the fit: calibration sets are small (tens of questions), so keep the weights modest.
RIDGE = 0.001


TEXT_FEATURES = ("page_coverage", "passage_coverage", "similarity")
ROUTE_FEATURES = ("score", "gap", "z")
FEATURES = TEXT_FEATURES + ROUTE_FEATURES


@dataclass(frozen=True)
class PageEvidence:
    """A page's normalised retrieval scores for one query (see the module docstring)."""

    page_coverage: float
    passage_coverage: float
    similarity: float
    score: float = 0.0
    gap: float = 0.0
    z: float = 0.0

    def features(self, names: Sequence[str] = TEXT_FEATURES) -> tuple[float, ...]:
        return tuple(getattr(self, name) for name in names)


def features_for(retriever: str) -> tuple[str, ...]:
    """The scores a calibrated model of this retriever reads: the text scores where there is text, and MIRAGE's
    three from the retriever's own score."""
    return (TEXT_FEATURES if retriever == "text" or retriever.startswith("text+") else ()) + ROUTE_FEATURES


def route_features(candidates: Sequence[float], scores: Sequence[float] | None = None
                   ) -> list[tuple[float, float, float]]:
    """MIRAGE's (score, gap to the best, z-score) of each of `scores` (default: the candidates' own) against the
    statistics of one candidate list, so a page's features do not depend on which other pages are asked about."""
    values = np.asarray(candidates, np.float64)
    if not len(values):
        return [(float(v), 0.0, 0.0) for v in (scores or [])]
    best, mean, spread = float(values.max()), float(values.mean()), float(values.std())
    return [(float(v), best - float(v), (float(v) - mean) / spread if spread > 1e-9 else 0.0)
            for v in (values if scores is None else scores)]


def coverage(weights: dict[int, float], terms: frozenset[int] | set[int]) -> float:
    """The share of the query's term weight that `terms` hold."""
    total = sum(weights.values())
    return sum(w for t, w in weights.items() if t in terms) / total if total > 0 else 0.0


def query_weights(terms: Sequence[int], document_frequencies: dict[int, int], passage_count: int) -> dict[int, float]:
    """BM25 idf of each query term; a term no passage holds weighs as a term of document frequency 0."""
    n = max(passage_count, 1)
    return {t: math.log(1 + (n - document_frequencies.get(t, 0) + 0.5) / (document_frequencies.get(t, 0) + 0.5))
            for t in terms}


@dataclass(frozen=True)
class RelevanceModel:
    """p(page supports an answer) = sigmoid(weights · features + bias); supported when p >= threshold."""

    weights: tuple[float, ...]
    bias: float
    threshold: float = 0.5
    features: tuple[str, ...] = TEXT_FEATURES

    def __post_init__(self) -> None:
        unknown = set(self.features) - set(FEATURES)
        if unknown or len(self.weights) != len(self.features):
            raise BadInputError(
                f"a relevance model with weights {tuple(self.weights)} over {tuple(self.features)} is not valid; it "
                f"needs one weight per score, the scores among {', '.join(FEATURES)} (`pagelens calibrate` fits one).")
        if not 0 < self.threshold < 1:
            raise BadInputError(f"relevance threshold {self.threshold} must lie between 0 and 1.")

    def probability(self, evidence: PageEvidence) -> float:
        z = sum(w * f for w, f in zip(self.weights, evidence.features(self.features))) + self.bias
        return 1.0 / (1.0 + math.exp(-z))

    def supports(self, evidence: PageEvidence) -> bool:
        return self.probability(evidence) >= self.threshold

    def to_manifest(self) -> dict:
        return {"features": list(self.features), "weights": list(self.weights), "bias": self.bias,
                "threshold": self.threshold}

    @classmethod
    def from_manifest(cls, found: dict) -> RelevanceModel:
        try:
            return cls(tuple(float(w) for w in found["weights"]), float(found["bias"]), float(found["threshold"]),
                       tuple(str(f) for f in found["features"]))
        except (KeyError, TypeError, ValueError):
            raise BadInputError(f"the store's relevance model {found!r} is not readable; run `pagelens calibrate "
                                f"QUESTIONS.jsonl` again to refit it.") from None

    @classmethod
    def fit(cls, evidence: Sequence[PageEvidence], labels: Sequence[bool], threshold: float = 0.5,
            features: Sequence[str] = TEXT_FEATURES) -> RelevanceModel:
        """Platt scaling by L2-penalised logistic regression; both labels must occur."""
        from scipy.optimize import minimize

        if len(set(labels)) < 2:
            raise BadInputError("calibration needs pages that support an answer and pages that do not: give "
                                "questions with gold pages the search finds, and some it does not (or unanswerable "
                                "ones).")
        n = len(features)
        x = np.asarray([e.features(features) for e in evidence], dtype=np.float64)  # (N, n)
        y = np.asarray(labels, dtype=np.float64)                                    # (N,)
        # Weigh the two classes equally: unanswerable questions are the few.
        sample_weight = np.where(y > 0, 0.5 / y.mean(), 0.5 / (1 - y.mean()))

        def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
            z = x @ theta[:n] + theta[n]
            p = 1 / (1 + np.exp(-z))
            nll = -np.sum(sample_weight * (y * np.log(p + 1e-12) + (1 - y) * np.log(1 - p + 1e-12))) / len(y)
            grad_z = sample_weight * (p - y) / len(y)
            grad = np.concatenate([x.T @ grad_z + 2 * RIDGE * theta[:n], [grad_z.sum()]])
            return nll + RIDGE * float(theta[:n] @ theta[:n]), grad

        theta = minimize(loss, np.zeros(n + 1), jac=True, method="L-BFGS-B").x
        return cls(tuple(round(float(w), 4) for w in theta[:n]), round(float(theta[n]), 4), threshold,
                   tuple(features))


def keep_relevant(probabilities: Sequence[float], threshold: float, k: int) -> list[int]:
    """MIRAGE's filter (SPEC §6) over candidates in rank order: the positions of those with p >= threshold, at most
    k in rank order; when none passes, the most probable one alone."""
    kept = [i for i, p in enumerate(probabilities) if p >= threshold][:k]
    if not kept and probabilities:
        kept = [max(range(len(probabilities)), key=lambda i: (probabilities[i], -i))]
    return kept
