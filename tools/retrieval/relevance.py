"""Does a retrieved page support an answer? A calibrated probability from normalised retrieval scores.

EVisRAG answers "insufficient to answer" when no page supports an answer; MIRAGE keeps a candidate page when a
query-aware relevance probability passes a threshold (SPEC §6). Here the probability is a logistic (Platt) model
over three scores of a page for a query, each normalised to [0, 1] so that one model serves any corpus:
- page coverage: the share of the query's term weight (BM25 idf; a word no passage holds weighs as the rarest)
  that occurs anywhere on the page;
- passage coverage: the same share for the page's best single passage (an answer is usually stated in one place);
- similarity: the cosine between the query's and the best passage's embeddings.
A page supports an answer when its probability reaches the threshold. `RelevanceModel` is the one interface:
`fit` calibrates it on questions with known answers (answerable questions' gold pages against unanswerable
questions' best pages); the defaults in `RetrievalSettings` were fitted on the sample and field corpora
(benchmarks/relevance.py). A later relevance filter (a vision route's own scores) takes over by fitting the same
interface on its own scores.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# L2 penalty of the fit: calibration sets are small (tens of questions), so keep the weights modest.
RIDGE = 0.001


@dataclass(frozen=True)
class PageEvidence:
    """A page's normalised retrieval scores for one query (see the module docstring)."""

    page_coverage: float
    passage_coverage: float
    similarity: float

    def features(self) -> tuple[float, float, float]:
        return (self.page_coverage, self.passage_coverage, self.similarity)


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

    weights: tuple[float, float, float]
    bias: float
    threshold: float = 0.5

    def probability(self, evidence: PageEvidence) -> float:
        z = sum(w * f for w, f in zip(self.weights, evidence.features())) + self.bias
        return 1.0 / (1.0 + math.exp(-z))

    def supports(self, evidence: PageEvidence) -> bool:
        return self.probability(evidence) >= self.threshold

    @classmethod
    def fit(cls, evidence: Sequence[PageEvidence], labels: Sequence[bool], threshold: float = 0.5) -> RelevanceModel:
        """Platt scaling by L2-penalised logistic regression; both labels must occur."""
        from scipy.optimize import minimize

        if len(set(labels)) < 2:
            raise ValueError("calibration needs pages that support an answer and pages that do not.")
        x = np.asarray([e.features() for e in evidence], dtype=np.float64)  # (n, 3)
        y = np.asarray(labels, dtype=np.float64)                           # (n,)
        # Weigh the two classes equally: unanswerable questions are the few.
        sample_weight = np.where(y > 0, 0.5 / y.mean(), 0.5 / (1 - y.mean()))

        def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
            z = x @ theta[:3] + theta[3]
            p = 1 / (1 + np.exp(-z))
            nll = -np.sum(sample_weight * (y * np.log(p + 1e-12) + (1 - y) * np.log(1 - p + 1e-12))) / len(y)
            grad_z = sample_weight * (p - y) / len(y)
            grad = np.concatenate([x.T @ grad_z + 2 * RIDGE * theta[:3], [grad_z.sum()]])
            return nll + RIDGE * float(theta[:3] @ theta[:3]), grad

        theta = minimize(loss, np.zeros(4), jac=True, method="L-BFGS-B").x
        return cls(tuple(round(float(w), 4) for w in theta[:3]), round(float(theta[3]), 4), threshold)
