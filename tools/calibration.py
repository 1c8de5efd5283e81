"""Fit a store's relevance model on questions with known gold pages (`pagelens calibrate`, SPEC §6's MIRAGE).

Each question's candidate pages (the store's own search, top k) are labelled: a gold page supports an answer, any
other candidate does not, and an unanswerable question's candidates support nothing. The model is fitted over the
scores the store's retriever has (`relevance.features_for`), so a vision retriever's model reads its MaxSim.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from tqdm import tqdm

from pagelens.errors import BadInputError
from pagelens.tools.corpus.store import PageStore
from pagelens.tools.retrieval.relevance import PageEvidence, RelevanceModel, features_for, keep_relevant
from pagelens.tools.search import Retriever


@dataclass(frozen=True)
class Calibration:
    model: RelevanceModel
    positives: int
    """Candidate pages labelled as supporting an answer (gold pages the search found)."""
    negatives: int
    answerable_kept: float
    """Share of answerable questions whose relevance filter keeps a gold page (on the fitted questions)."""
    unanswerable_refused: float
    """Share of unanswerable questions none of whose candidates the model says supports an answer."""

    def to_dict(self) -> dict:
        return {**asdict(self), "model": self.model.to_manifest()}


def calibrate(store: PageStore, questions: Sequence[tuple[str, list[str]]], *, k: int = 10, threshold: float = 0.5,
              progress: bool = True) -> Calibration:
    """Fit on (question, gold page ids) pairs; an empty gold list marks an unanswerable question."""
    if not 1 <= k <= 100:
        raise BadInputError(f"k={k} is out of range; judge 1 to 100 candidate pages a question.")
    retriever = Retriever(store)
    features = features_for(store.retrieval.retriever)
    judged: list[tuple[list[PageEvidence], list[bool]]] = []
    for question, gold in tqdm(questions, desc="calibrating", unit="question", disable=not progress):
        hits = retriever.search(question, k)
        judged.append(([PageEvidence(**hit.evidence) for hit in hits], [hit.page.page_id in gold for hit in hits]))
    evidence = [e for pages, _ in judged for e in pages]
    labels = [label for _, page_labels in judged for label in page_labels]
    model = RelevanceModel.fit(evidence, labels, threshold, features)
    kept, refused = [], []
    for (pages, page_labels), (_, gold) in zip(judged, questions):
        probabilities = [model.probability(e) for e in pages]
        if gold:
            kept.append(any(page_labels[i] for i in keep_relevant(probabilities, threshold, k)))
        else:
            refused.append(all(p < threshold for p in probabilities))
    return Calibration(model, sum(labels), len(labels) - sum(labels), sum(kept) / max(len(kept), 1),
                       sum(refused) / max(len(refused), 1))
