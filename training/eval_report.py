"""What an evaluation run reports: the summary `pagelens eval --json` prints, and the same as a markdown report."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

from pagelens.training.evaluate import REPORT_KS

STATUSES = ("answered", "insufficient", "no_answer", "timeout")
_CELL_CHARS = 120


def _mean(values: Sequence[float]) -> float | None:
    return round(sum(values) / len(values), 6) if values else None


def _percentile(values: Sequence[float], share: float) -> float | None:
    """Linear interpolation between the closest ranks (numpy's default)."""
    if not values:
        return None
    ordered = sorted(values)
    position = share * (len(ordered) - 1)
    low, high = math.floor(position), math.ceil(position)
    return round(ordered[low] + (ordered[high] - ordered[low]) * (position - low), 4)


def _answers(records: Sequence[dict]) -> dict:
    return {"n": len(records),
            "em": _mean([r["metrics"]["em"] for r in records]),
            "accuracy": _mean([r["metrics"]["acc"] for r in records]),
            "f1": _mean([r["metrics"]["f1"] for r in records])}


def summarize(records: Sequence[dict], k: int) -> dict:
    """Means over the questions: answers (all, and by sufficiency), retrieval and citation over the questions with
    gold pages, turns (valid_rate: the share of policy turns the protocol parser accepted) and latency."""
    with_gold = [r for r in records if r["retrieval"] is not None]
    keys = ["mrr@10", *(f"{name}@{depth}" for depth in sorted({*REPORT_KS, k}) for name in ("ndcg", "recall"))]
    turns = sum(r["turns"] for r in records)
    answers = _answers(records)
    del answers["n"]
    return {
        "n": len(records),
        "answer": answers,
        "answer_by_sufficiency": {
            "sufficient": _answers([r for r in records if r["is_sufficient"]]),
            "insufficient": _answers([r for r in records if not r["is_sufficient"]]),
        },
        "retrieval": {"n": len(with_gold), "k": k, **{key: _mean([r["retrieval"][key] for r in with_gold])
                                                      for key in keys}},
        "citation": {"gold_page_cited": _mean([float(r["cited_gold"]) for r in with_gold])},
        "turns": {"mean": _mean([r["turns"] for r in records]),
                  "valid_rate": round(sum(r["valid_turns"] for r in records) / turns, 6) if turns else None},
        "latency_s": {"p50": _percentile([r["latency_s"] for r in records], 0.5),
                      "p90": _percentile([r["latency_s"] for r in records], 0.9)},
        "status": {status: count for status, count in Counter(r["status"] for r in records).items()},
    }


def _cell(value: object) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}"
    text = " ".join(str(value).split()).replace("|", "\\|")
    return text if len(text) <= _CELL_CHARS else text[:_CELL_CHARS - 1] + "…"


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(value) for value in row) + " |" for row in rows]
    return lines + [""]


def markdown_report(summary: dict, records: Sequence[dict], *, title: str, setup: dict, worst: int) -> str:
    """The report: the summary as tables, then the `worst` questions with the lowest F1."""
    retrieval, by_sufficiency = summary["retrieval"], summary["answer_by_sufficiency"]
    lines = [f"# pagelens eval: {title}", "",
             f"{summary['n']} questions · policy {setup['policy']} · protocol {setup['protocol']} · "
             f"retrieval depth {retrieval['k']}", "",
             "## Answers", "", "EVisRAG's metrics (SPEC §5); unanswerable questions are scored against the "
             "insufficiency answers.", ""]
    rows = [("all", summary["n"], *summary["answer"].values())]
    rows += [(name, part["n"], part["em"], part["accuracy"], part["f1"]) for name, part in by_sufficiency.items()]
    lines += _table(["questions", "n", "EM", "Accuracy", "F1"], rows)
    keys = [key for key in retrieval if "@" in key]
    lines += ["## Retrieval", "", f"Over the {retrieval['n']} questions with gold pages.", ""]
    lines += _table([key.replace("mrr", "MRR").replace("ndcg", "nDCG").replace("recall", "Recall") for key in keys],
                    [[retrieval[key] for key in keys]])
    status = summary["status"]
    lines += ["## Agent", ""]
    lines += _table(["gold page cited", "turns (mean)", "valid turns", "latency p50 (s)", "latency p90 (s)",
                     *(name.replace("_", " ") for name in STATUSES)],
                    [[summary["citation"]["gold_page_cited"], summary["turns"]["mean"], summary["turns"]["valid_rate"],
                      summary["latency_s"]["p50"], summary["latency_s"]["p90"],
                      *(status.get(name, 0) for name in STATUSES)]])
    ranked = sorted(records, key=lambda r: (r["metrics"]["f1"], r["metrics"]["acc"], r["metrics"]["em"]))[:worst]
    if ranked:
        lines += ["## Worst questions", "", "Lowest F1 first; gold rank is the first gold page's rank in the search.",
                  ""]
        lines += _table(["question", "gold", "answer", "F1", "gold rank", "status"],
                        [[r["question"], " / ".join(r["answers"]) or "(unanswerable)", r["answer"],
                          r["metrics"]["f1"], r["gold_rank"], r["status"]] for r in ranked])
    return "\n".join(lines)
