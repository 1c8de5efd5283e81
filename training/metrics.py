"""Evaluation metrics: EVisRAG's answer EM / accuracy / F1 (SPEC §5) and ranked retrieval metrics over page ids.

Answer metrics match the reference's evaluation script, quirks included, so numbers compare with the paper's:
F1 adds 1e-7 to its denominator (a perfect match scores 0.99999995), and a gold answer sharing no token with the
prediction records nothing for that gold, not even EM or accuracy (an empty prediction scores 0 against an empty
gold). Retrieval metrics use binary relevance: a page is relevant when it is one of the gold pages.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Sequence

# SPEC §5: an unanswerable item is scored against these golds instead of its own.
INSUFFICIENCY_GOLDS = ("no relevant information", "insufficient to answer", "insufficient to answer the question")
_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
# The reference's F1 denominator guard.
_F1_EPSILON = 1e-7


def normalize_answer(text: str) -> str:
    """SPEC §3 norm(s): lowercase, strip ASCII punctuation, articles a/an/the to a space, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def answer_text(output: str) -> str:
    """SPEC §5: the text inside the first `<answer>…</answer>` when the output has an `<answer>`, else all of it."""
    if "<answer>" not in output:
        return output
    return output.split("<answer>", 1)[1].split("</answer>", 1)[0]


def answer_metrics(prediction: str, gold_answers: Sequence[str], is_sufficient: bool = True) -> dict[str, float]:
    """EVisRAG's `em`, `acc` and `f1` of `prediction` (a whole response or just the answer): the max over golds.

    An unanswerable item (`is_sufficient` false) takes the three insufficiency golds instead of `gold_answers`.

    >>> scores = answer_metrics("<answer>Margaret Okafor</answer>", ["margaret okafor"])
    >>> scores["em"], scores["acc"], round(scores["f1"], 8)
    (1, 1, 0.99999995)
    """
    golds = gold_answers if is_sufficient else INSUFFICIENCY_GOLDS
    predicted = normalize_answer(answer_text(prediction))
    predicted_tokens = predicted.split()
    best = {"em": 0, "acc": 0, "f1": 0.0}
    for gold in golds:
        expected = normalize_answer(gold)
        expected_tokens = expected.split()
        same = sum((Counter(predicted_tokens) & Counter(expected_tokens)).values())
        if same == 0:
            continue  # SPEC §5 reference quirk: no overlap records nothing for this gold
        precision, recall = same / len(predicted_tokens), same / len(expected_tokens)
        scores = {
            "em": int(predicted == expected),  # SPEC §5 EM: norm(pred) == norm(gold)
            "acc": int(set(expected_tokens) <= set(predicted_tokens)),  # SPEC §5 accuracy: gold tokens ⊆ pred tokens
            "f1": 2 * precision * recall / (precision + recall + _F1_EPSILON),  # SPEC §5 multiset F1
        }
        best = {key: max(best[key], value) for key, value in scores.items()}
    return best


def _relevances(ranked: Sequence[str], relevant: Sequence[str], k: int) -> list[int]:
    gold = set(relevant)
    return [int(page in gold) for page in ranked[:k]]


def dcg(relevances: Sequence[float]) -> float:
    """SPEC §3 DCG = Σ_i (2^rel_i − 1) / log2(i + 1), i from 1 (for binary relevance, the gain is rel_i)."""
    return sum((2 ** rel - 1) / math.log2(i + 1) for i, rel in enumerate(relevances, start=1))


def mrr_at(ranked: Sequence[str], relevant: Sequence[str], k: int = 10) -> float:
    """Reciprocal rank of the first relevant page among the top `k` (0 when none is there): MRR@k per question."""
    for rank, rel in enumerate(_relevances(ranked, relevant, k), start=1):
        if rel:
            return 1.0 / rank
    return 0.0


def ndcg_at(ranked: Sequence[str], relevant: Sequence[str], k: int) -> float:
    """nDCG@k with binary relevance; the ideal ranking puts min(k, |relevant|) relevant pages first."""
    ideal = dcg([1] * min(k, len(set(relevant))))
    return dcg(_relevances(ranked, relevant, k)) / ideal if ideal else 0.0


def recall_at(ranked: Sequence[str], relevant: Sequence[str], k: int) -> float:
    """Share of the relevant pages found among the top `k` (0 when there are none)."""
    gold = set(relevant)
    return sum(_relevances(ranked, relevant, k)) / len(gold) if gold else 0.0


def retrieval_metrics(ranked: Sequence[str], relevant: Sequence[str],
                      ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """MRR@10 (VisRAG-Ret's headline, SPEC §5), and nDCG@k and Recall@k for each k, for one question."""
    scores = {"mrr@10": mrr_at(ranked, relevant, 10)}
    for k in ks:
        scores[f"ndcg@{k}"] = ndcg_at(ranked, relevant, k)
        scores[f"recall@{k}"] = recall_at(ranked, relevant, k)
    return scores
