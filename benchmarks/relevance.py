"""Calibrate the relevance model ("does a page support an answer?") on some corpora, report it on all.

For each corpus (stores as benchmarks/retrieval.py builds and caches them): the normalised scores
(tools/retrieval/relevance.py) of each answerable question's gold pages are positives, those of each unanswerable
question's top 3 pages are negatives. The model is fitted on the --fit corpora only; then, per corpus, with the
fitted model and with the one in the current defaults: how often an answerable question keeps a supported page
among its top 3 (its answer is not refused) and how often an unanswerable one has none (it is refused).

    python benchmarks/relevance.py [--fit sample,field] [--corpora sample,field,manuals] [--cache DIR]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from retrieval import corpus_paths, open_store  # noqa: E402  (a sibling benchmark script)

from pagelens.tools.retrieval.relevance import PageEvidence, RelevanceModel  # noqa: E402
from pagelens.tools.search import Retriever  # noqa: E402
from pagelens.tools.retrieval.settings import RetrievalSettings  # noqa: E402
from pagelens.training.evaluate import gold_page_ids, read_questions  # noqa: E402

SHOWN = 3
KEEP = 0.9


def collect(name: str, cache: Path) -> tuple[list[PageEvidence], list[bool], list[tuple[list[PageEvidence], bool]]]:
    """(evidence, labels) for fitting, and per question (its top pages' evidence, answerable?) for reporting."""
    folder, questions_file = corpus_paths(name, cache)
    store, _ = open_store(name, folder, cache, RetrievalSettings())
    try:
        questions = read_questions(questions_file)
        gold = gold_page_ids(questions, store, questions_file)
        retriever = Retriever(store)
        evidence, labels, shown = [], [], []
        for question in questions:
            top = [PageEvidence(**hit.evidence) for hit in retriever.search(question.question, k=SHOWN)]
            shown.append((top, question.is_sufficient))
            if question.is_sufficient:
                rankings = retriever.route_rankings(question.question)
                found = retriever.page_evidence(question.question, gold[question.question], rankings)
                evidence += found.values()
                labels += [True] * len(found)
            else:
                evidence += top
                labels += [False] * len(top)
        return evidence, labels, shown
    finally:
        store.close()


def report(model: RelevanceModel, shown: list[tuple[list[PageEvidence], bool]]) -> tuple[float, float]:
    """(answerable questions not refused, unanswerable questions refused), as fractions."""
    kept = [any(model.supports(e) for e in pages) for pages, answerable in shown if answerable]
    refused = [not any(model.supports(e) for e in pages) for pages, answerable in shown if not answerable]
    return sum(kept) / max(len(kept), 1), sum(refused) / max(len(refused), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fit", default="sample,field")
    parser.add_argument("--corpora", default="sample,field,manuals")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache/pagelens/bench")
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    names = args.corpora.split(",")
    data = {name: collect(name, args.cache) for name in dict.fromkeys([*args.fit.split(","), *names])}
    evidence = [e for name in args.fit.split(",") for e in data[name][0]]
    labels = [label for name in args.fit.split(",") for label in data[name][1]]
    fitted = RelevanceModel.fit(evidence, labels)
    # The threshold: refuse as many unanswerable questions as possible while keeping 90% of the answerable ones on
    # the fitted corpora (a wrong refusal costs an answer a user could have had).
    fit_shown = [item for name in args.fit.split(",") for item in data[name][2]]
    candidates = [t / 100 for t in range(5, 96)]
    print("threshold sweep on the fitted corpora (answerable kept, unanswerable refused):")
    sweep = {}
    for t in candidates:
        sweep[t] = report(replace(fitted, threshold=t), fit_shown)
        if round(t * 100) % 5 == 0:
            print(f"  {t:.2f}: {sweep[t][0]:.3f} {sweep[t][1]:.3f}")
    best = max((t for t in candidates if sweep[t][0] >= KEEP), key=lambda t: (sweep[t][1], -t), default=0.5)
    fitted = replace(fitted, threshold=best)
    current = RetrievalSettings().relevance
    print(f"fitted on {args.fit} ({sum(labels)} supporting pages, {len(labels) - sum(labels)} not): "
          f"weights {fitted.weights}, bias {fitted.bias}, threshold {fitted.threshold}")
    print(f"current defaults: weights {current.weights}, bias {current.bias}, threshold {current.threshold}")
    print(f"\n{'corpus':<10}{'model':<10}{'answerable kept':>17}{'unanswerable refused':>22}")
    for name in names:
        for label, model in (("fitted", fitted), ("defaults", current)):
            kept, refused = report(model, data[name][2])
            print(f"{name:<10}{label:<10}{kept:>17.3f}{refused:>22.3f}")


if __name__ == "__main__":
    main()
