"""SPEC §5 answer metrics against the reference's evaluation, and retrieval metrics against trec_eval."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from pagelens.training.metrics import (
    INSUFFICIENCY_GOLDS,
    answer_metrics,
    answer_text,
    mrr_at,
    ndcg_at,
    normalize_answer,
    recall_at,
    retrieval_metrics,
)

VECTORS = Path(__file__).resolve().parents[1] / "data" / "vectors"
EVISRAG = json.loads((VECTORS / "evisrag_rewards_and_metrics.json").read_text())


@pytest.mark.parametrize("case", EVISRAG, ids=[f"eval-{i}" for i in range(len(EVISRAG))])
def test_answer_metrics_match_the_reference(case):
    scores = answer_metrics(case["response"], case["gold_answers"], case["is_sufficient"])
    assert set(scores) == {"em", "acc", "f1"}
    for key, expected in case["reference"]["eval"].items():
        assert scores[key] == pytest.approx(expected, abs=1e-6), key


def test_normalisation_and_answer_extraction():
    assert normalize_answer("  The  Answer: an Apple, a day! ") == "answer apple day"
    assert answer_text("<think>x</think><answer> 4.2 </answer> trailing") == " 4.2 "
    assert answer_text("just text") == "just text"


def test_unanswerable_items_take_the_insufficiency_golds():
    answer = "<answer>insufficient to answer</answer>"
    assert answer_metrics(answer, ["4.2"], is_sufficient=False)["em"] == 1
    assert answer_metrics(answer, ["4.2"], is_sufficient=True) == {"em": 0, "acc": 0, "f1": 0.0}
    assert len(INSUFFICIENCY_GOLDS) == 3


def test_a_perfect_answer_scores_the_reference_f1_with_its_epsilon():
    assert answer_metrics("Margaret Okafor", ["margaret okafor."])["f1"] == pytest.approx(0.99999995, abs=1e-9)


def test_retrieval_metrics_by_hand():
    ranked = ["d", "a", "c", "b"]
    assert mrr_at(ranked, ["a", "b"]) == 0.5
    assert mrr_at(ranked, ["b"], k=3) == 0.0
    assert recall_at(ranked, ["a", "b"], 2) == 0.5
    assert ndcg_at(ranked, ["d"], 1) == 1.0
    assert ndcg_at(ranked, [], 5) == 0.0
    assert set(retrieval_metrics(ranked, ["a"])) == {"mrr@10", "ndcg@1", "recall@1", "ndcg@5", "recall@5",
                                                     "ndcg@10", "recall@10"}


def test_retrieval_metrics_agree_with_trec_eval_on_random_runs():
    import pytrec_eval  # the dev extra's trec_eval bindings (pytrec-eval-terrier)
    rng = random.Random(1234)
    qrels, run, ranked, relevant = {}, {}, {}, {}
    for q in range(200):
        qid = f"q{q}"
        docs = [f"d{i}" for i in range(rng.randint(1, 30))]
        pool = [f"d{i}" for i in range(40)]
        gold = rng.sample(pool, rng.randint(1, 6))
        scores = rng.sample(range(10_000), len(docs))  # distinct: trec_eval breaks ties by document id
        order = [doc for _, doc in sorted(zip(scores, docs), reverse=True)]
        qrels[qid] = {doc: 1 for doc in gold}
        # trec_eval's reciprocal rank has no cut-off: give it the top 10 for MRR@10.
        run[qid] = {doc: float(score) for score, doc in zip(scores, docs) if doc in order[:10]}
        ranked[qid], relevant[qid] = order, gold
    cut = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(run)
    full_run = {qid: {doc: float(len(order) - i) for i, doc in enumerate(order)} for qid, order in ranked.items()}
    full = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.1,5,10", "recall.1,5,10"}).evaluate(full_run)
    for qid in qrels:
        ours = retrieval_metrics(ranked[qid], relevant[qid])
        assert ours["mrr@10"] == pytest.approx(cut[qid]["recip_rank"], abs=1e-9)
        for k in (1, 5, 10):
            assert ours[f"ndcg@{k}"] == pytest.approx(full[qid][f"ndcg_cut_{k}"], abs=1e-9), (qid, k)
            assert ours[f"recall@{k}"] == pytest.approx(full[qid][f"recall_{k}"], abs=1e-9), (qid, k)
