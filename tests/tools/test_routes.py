"""Retrieval routes on two corpora: fusion is never worse than its best route; page-level rows, stop words, the
document's name in view, and the relevance model that says when no page supports an answer."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from pagelens.errors import BadInputError
from pagelens.tools.corpus.store import PageStore, StoreSettings
from pagelens.tools.retrieval.memory_index import MemoryIndex
from pagelens.tools.retrieval.lexical import query_terms, term_id
from pagelens.tools.retrieval.passages import name_words
from pagelens.tools.retrieval.relevance import PageEvidence, RelevanceModel
from pagelens.tools.search import Retriever
from pagelens.tools.retrieval.settings import RetrievalSettings
from pagelens.tools.retrieval.vectors import VectorRow, VectorStore, page_row_pk
from pagelens.training.evaluate import gold_page_ids, read_questions
from pagelens.training.metrics import recall_at

FIELD = Path(__file__).resolve().parents[1] / "data" / "field"
ROUTES = ("dense", "bm25", "page-bm25", "page-dense")


def _recalls(home: Path, questions_file: Path, embedder) -> dict[str, tuple[float, float]]:
    """recall@1 and recall@5 of each route alone and of the fusion, over the answerable questions."""
    with PageStore(StoreSettings(home=home)) as store:
        questions = [q for q in read_questions(questions_file) if q.is_sufficient]
        gold = gold_page_ids(questions, store, questions_file)
        retriever = Retriever(store, embedder)
        runs: dict[str, list[list[str]]] = {route: [] for route in (*ROUTES, "fused")}
        for q in questions:
            rankings = retriever.route_rankings(q.question, routes=ROUTES)
            for route in ROUTES:
                runs[route].append([page_id for page_id, _ in rankings[route]])
            runs["fused"].append([hit.page.page_id for hit in retriever.search(q.question, k=5)])
    golds = [gold[q.question] for q in questions]
    return {route: (sum(recall_at(r, g, 1) for r, g in zip(ranked, golds)) / len(golds),
                    sum(recall_at(r, g, 5) for r, g in zip(ranked, golds)) / len(golds))
            for route, ranked in runs.items()}


@pytest.mark.slow
@pytest.mark.parametrize("corpus", ["sample", "field"])
def test_fusion_is_never_worse_than_its_best_route(corpus, sample_home, sample, field_home, embedder):
    home, questions = (sample_home, sample / "questions.jsonl") if corpus == "sample" else (
        field_home, FIELD / "questions.jsonl")
    recalls = _recalls(home, questions, embedder)
    fused = recalls.pop("fused")
    for at, name in ((0, "recall@1"), (1, "recall@5")):
        best = max(recalls, key=lambda route: recalls[route][at])
        assert fused[at] >= recalls[best][at], f"{corpus} {name}: fused {fused[at]:.3f} < {best} {recalls[best][at]:.3f}"


def test_the_routes_each_rank_pages_and_a_zero_weight_leaves_one_out(sample_home, embedder):
    with PageStore(StoreSettings(home=sample_home)) as store:
        all_routes = Retriever(store, embedder).route_rankings("KX-40 maintenance intervals", routes=ROUTES)
        assert set(all_routes) == set(ROUTES)
        for ranking in all_routes.values():
            page_ids = [page_id for page_id, _ in ranking]
            assert page_ids and len(page_ids) == len(set(page_ids))  # one entry per page
        store.retrieval = replace(store.retrieval, dense_weight=0.0, page_dense_weight=0.0)
        assert set(Retriever(store, embedder).route_rankings("KX-40 maintenance intervals")) == {"bm25", "page-bm25"}
    with pytest.raises(BadInputError, match="route weights"):
        RetrievalSettings(dense_weight=0, bm25_weight=0, page_bm25_weight=0, page_dense_weight=0)
    with pytest.raises(BadInputError, match="unknown retrieval route"):
        with PageStore(StoreSettings(home=sample_home)) as store:
            Retriever(store, embedder).route_rankings("turbine", routes=["colqwen"])


def test_page_rows_are_searched_apart_from_passage_rows_in_milvus_and_in_memory(tmp_path):
    store = VectorStore(str(tmp_path / "milvus.db"), 4)
    try:
        unit = np.eye(4, dtype=np.float32)
        rows = [VectorRow("p1:v:0", "p1", "d1", unit[0], {1: 1.0}), VectorRow("p1:v:1", "p1", "d1", unit[1], {2: 1.0}),
                VectorRow(page_row_pk("p1", "v"), "p1", "d1", unit[0], {1: 0.5, 2: 0.5}),
                VectorRow("p2:v:0", "p2", "d2", unit[2], {2: 2.0}),
                VectorRow(page_row_pk("p2", "v"), "p2", "d2", unit[2], {2: 0.9})]
        store.insert(rows, "v")
        store.flush()
        memory = MemoryIndex.build(1, store.rows(), 4)
        assert store.count() == 3 and store.count("page") == 2
        for backend in (store, memory):
            assert [h.pk for h in backend.search_sparse({1: 1.0, 2: 1.0}, 10, None)] == ["p2:v:0", "p1:v:0", "p1:v:1"]
            assert [h.pk for h in backend.search_sparse({1: 1.0, 2: 1.0}, 10, None, level="page")] == [
                page_row_pk("p1", "v"), page_row_pk("p2", "v")]
            assert [h.pk for h in backend.search_dense(unit[0], 10, ["d1"], level="page")] == [page_row_pk("p1", "v")]
            assert {h.pk for h in backend.search_dense(unit[0], 10, None)} == {"p1:v:0", "p1:v:1", "p2:v:0"}
        store.delete_version("d1", "v")
        store.flush()
        assert store.count() == 1 and store.count("page") == 1
    finally:
        store.close()


def test_stop_words_leave_queries_but_a_query_of_only_stop_words_keeps_them():
    assert query_terms("What is the rotor of the turbine?") == sorted({term_id("rotor"), term_id("turbine")})
    assert query_terms("what is it") == sorted({term_id("what"), term_id("is"), term_id("it")})


def test_the_document_name_is_in_view(field_home, embedder):
    assert name_words("osterlund_tools-q2.2024.pdf") == "osterlund tools q2 2024"
    with PageStore(StoreSettings(home=field_home)) as store:
        retriever = Retriever(store, embedder)
        # Both quarterly reports use the same sentences; only the name (and the page header) tells them apart.
        for company, document in (("Osterlund Tools", "osterlund_tools_q2_2024.pdf"),
                                  ("Brightwell Foods", "brightwell_foods_q2_2024.pdf")):
            hits = retriever.search(f"{company} headcount at the end of the quarter", k=2)
            assert [h.page.document for h in hits] == [document, document]


def test_the_relevance_model_is_fitted_by_logistic_regression_and_monotone():
    rng = np.random.default_rng(0)
    supporting = [PageEvidence(*rng.uniform(0.5, 1.0, 3)) for _ in range(40)]
    not_supporting = [PageEvidence(*rng.uniform(0.0, 0.45, 3)) for _ in range(20)]
    model = RelevanceModel.fit(supporting + not_supporting, [True] * 40 + [False] * 20)
    assert all(w > 0 for w in model.weights)
    assert all(model.supports(e) for e in supporting) and not any(model.supports(e) for e in not_supporting)
    low, high = PageEvidence(0.2, 0.2, 0.2), PageEvidence(0.9, 0.9, 0.9)
    assert model.probability(low) < model.probability(high)
    with pytest.raises(ValueError, match="calibration needs"):
        RelevanceModel.fit(supporting, [True] * 40)
    with pytest.raises(BadInputError, match="relevance_weights"):
        RetrievalSettings(relevance_weights=(1.0, 2.0))


def test_hits_carry_a_relevance_that_falls_for_a_question_nothing_answers(sample_home, embedder):
    with PageStore(StoreSettings(home=sample_home)) as store:
        retriever = Retriever(store, embedder)
        answered = retriever.search("Who signed the letter from the chief executive in Northwind's annual report?", k=1)
        nowhere = retriever.search("What is the boiling point of liquid helium at sea level?", k=3)
        threshold = store.retrieval.relevance_threshold
    assert answered[0].relevance >= threshold
    assert all(hit.relevance < threshold for hit in nowhere)
    assert answered[0].to_dict()["relevance"] == round(answered[0].relevance, 4)
