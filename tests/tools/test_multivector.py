"""Multi-vector pages in Milvus (Lite, and served by `milvus-lite server`) and in memory score exact MaxSim."""

from __future__ import annotations


import numpy as np
import pytest

from pagelens.tools.retrieval import multivector
from pagelens.tools.retrieval.multivector import MultiVectorStore, normalised_maxsim
from pagelens.tools.retrieval.multivector_index import MultiVectorIndex, brute_force

DIM = 32
LONG_PAGE = "a-1"  # 1100 vectors: more than the 1000 the Milvus tutorial reads back
LONG = 1100


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def corpus(seed: int = 0) -> dict[str, tuple[str, np.ndarray]]:
    """page_id -> (document_id, vectors): clustered unit vectors, documents a (one long page), b and c."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((12, DIM))
    pages = {LONG_PAGE: ("a", unit(centres[rng.integers(0, 12, LONG)] + 0.6 * rng.standard_normal((LONG, DIM))))}
    for doc in "bc":
        for i in range(12):
            n = int(rng.integers(20, 90))
            pages[f"{doc}-{i}"] = (doc, unit(centres[rng.integers(0, 12, n)] + 0.6 * rng.standard_normal((n, DIM))))
    return pages


def long_page_query(pages: dict, rng: np.random.Generator) -> np.ndarray:
    """Query vectors near the long page's LAST vectors: reading only its first 1000 rows changes its score."""
    tail = pages[LONG_PAGE][1][-10:]
    return unit(tail + 0.03 * rng.standard_normal(tail.shape))


@pytest.fixture(scope="module", params=["lite", "server"])
def uri(request, tmp_path_factory) -> str:
    if request.param == "server":
        return request.getfixturevalue("served")
    return str(tmp_path_factory.mktemp("milvus-lite") / "milvus.db")


@pytest.fixture(scope="module")
def filled(uri):
    """A store holding `corpus()` under version v1, shared by the read-only tests of one backend."""
    pages = corpus()
    store = MultiVectorStore(uri, DIM, recreate=True)
    written = store.insert_pages([(p, doc, v) for p, (doc, v) in pages.items()], "v1")
    store.flush()
    assert written == store.count() == sum(len(v) for _, v in pages.values())
    yield store, pages
    store.close()


def test_store_maxsim_equals_brute_force_over_all_of_a_long_page(filled):
    store, pages = filled
    query = long_page_query(pages, np.random.default_rng(1))
    # Candidates from every page: the ranking must then be brute-force MaxSim over all pages.
    hits = store.search(query, k=len(pages), candidates=200)
    truth = dict(zip(pages, brute_force(query, [v for _, v in pages.values()])))
    assert [h.page_id for h in hits] == sorted(truth, key=lambda p: (-truth[p], p))
    assert {h.page_id: h.score for h in hits} == pytest.approx(truth, abs=1e-5)
    long = pages[LONG_PAGE][1]
    assert hits[0].page_id == LONG_PAGE and hits[0].version == "v1"
    assert hits[0].score > normalised_maxsim(query, long[:1000]) + 0.05  # its last 100 vectors count
    (page_id, version, vectors), = store.page_vectors([LONG_PAGE])
    np.testing.assert_allclose(vectors, long, atol=1e-6)  # all 1100, in patch order


def test_a_full_query_window_falls_back_to_the_unlimited_iterator(filled, monkeypatch):
    store, pages = filled
    monkeypatch.setattr(multivector, "QUERY_WINDOW", 500)
    monkeypatch.setattr(multivector, "ITERATOR_BATCH", 300)
    fetched = {p: v for p, _, v in store.page_vectors(pages)}
    assert set(fetched) == set(pages)
    for page_id, (_, vectors) in pages.items():
        np.testing.assert_allclose(fetched[page_id], vectors, atol=1e-6)


def test_the_document_filter_applies_inside_the_search(filled):
    store, pages = filled
    query = long_page_query(pages, np.random.default_rng(2))  # matches document a best
    # Inside the ANN search: each query vector's 5 best pages are 5 of document b's, not of all documents.
    assert {p[0] for p in store.candidates(query, 5, ["b"])} == {"b"}
    assert len(store.candidates(query, 5, ["b"])) >= 5
    hits = store.search(query, k=5, document_ids=["b"], candidates=5)
    assert len(hits) == 5 and {h.page_id[0] for h in hits} == {"b"}
    # Extra candidates from outside (the text routes) are scored too, and still filtered.
    extra = store.search(query, k=30, document_ids=["b", "a"], candidates=1, extra_page_ids=["c-3", "b-7"])
    assert "b-7" in {h.page_id for h in extra} and "c-3" not in {h.page_id for h in extra}


def test_memory_index_from_the_store_scores_exactly(filled):
    store, pages = filled
    index = MultiVectorIndex.build(store.pages(), DIM)
    assert sorted(index.page_ids) == sorted(pages)
    rng = np.random.default_rng(3)
    for query in (long_page_query(pages, rng), unit(rng.standard_normal((20, DIM)))):
        truth = dict(zip(pages, brute_force(query, [v for _, v in pages.values()])))
        assert dict(zip(index.page_ids, index.exact_scores(query))) == pytest.approx(truth, abs=1e-5)
        hits = index.search(query, 10)
        assert [h.page_id for h in hits] == sorted(truth, key=lambda p: (-truth[p], p))[:10]
        milvus = store.search(query, 10, candidates=200)
        assert [h.page_id for h in milvus] == [h.page_id for h in hits]


def test_delete_removes_a_document_versions_vectors(uri):
    pages = corpus(seed=4)
    store = MultiVectorStore(uri, DIM, recreate=True, collection="page_vectors_delete")
    try:
        store.insert_pages([(p, doc, v) for p, (doc, v) in pages.items() if doc != "b"], "v1")
        store.insert_pages([(p, doc, v) for p, (doc, v) in pages.items() if doc == "b"], "v2")
        store.insert_pages([(p, doc, v[:5]) for p, (doc, v) in pages.items() if doc == "b"], "v3")  # a re-index
        store.flush()
        before = store.count()
        store.delete_version("b", "v2")
        b_rows = sum(len(v) for doc, v in pages.values() if doc == "b")
        assert store.count() == before - b_rows
        assert store.count(["b"]) == 5 * 12  # v3 stays
        hits = store.search(unit(pages["b-0"][1][:8]), k=40, candidates=100)
        assert {h.version for h in hits if h.page_id.startswith("b")} == {"v3"}
        store.delete_version("a", "v1")
        assert store.count(["a"]) == 0
    finally:
        store.close()


def test_memory_prefilter_keeps_recall_and_applies_filters():
    rng = np.random.default_rng(5)
    centres = rng.standard_normal((64, DIM))
    pages, docs = [], []
    for i in range(400):
        topics = rng.choice(64, 6, replace=False)  # each page mixes a few topics
        n = int(rng.integers(60, 120))
        pages.append(unit(centres[rng.choice(topics, n)] + 0.5 * rng.standard_normal((n, DIM))))
        docs.append(f"d{i % 20}")
    index = MultiVectorIndex.build([(f"p{i}", docs[i], "v1", v) for i, v in enumerate(pages)], DIM,
                                   prefilter=True, summaries=8)
    recall = []
    for target in rng.choice(400, 20, replace=False):
        rows = pages[target][rng.choice(len(pages[target]), 12, replace=False)]
        query = unit(rows + 0.3 * rng.standard_normal(rows.shape))
        truth = np.argsort(-brute_force(query, pages), kind="stable")[:10]
        hits = index.search(query, 10, rerank=60)
        recall.append(len({f"p{i}" for i in truth} & {h.page_id for h in hits}) / 10)
        best = int(hits[0].page_id[1:])
        assert hits[0].score == pytest.approx(brute_force(query, [pages[best]])[0], abs=1e-5)  # exact rerank
    assert np.mean(recall) >= 0.9
    # A filter on the prefilter path keeps only those documents; extra pages are scored exactly.
    filtered = index.search(query, 10, ["d3", "d4", "d5"], rerank=5, extra_page_ids=["p23", "p0"])
    assert {h.page_id for h in filtered} <= {f"p{i}" for i in range(400) if docs[i] in ("d3", "d4", "d5")}
    assert "p23" in {h.page_id for h in index.search(query, 400, ["d3"], rerank=1, extra_page_ids=["p23"])}


def test_memory_update_equals_a_rebuild(tmp_path):
    rng = np.random.default_rng(6)
    pages = {f"{d}-{i}": (d, unit(rng.standard_normal((int(rng.integers(10, 80)), DIM))))
             for d in "abc" for i in range(5)}
    rows = lambda selected: [(p, doc, "v1", v) for p, (doc, v) in selected.items()]  # noqa: E731
    old = MultiVectorIndex.build(rows(pages), DIM, prefilter=True, summaries=6)
    pages = {p: dv for p, dv in pages.items() if dv[0] != "c"}  # c removed
    pages.update({f"b-{i}": ("b", unit(rng.standard_normal((40, DIM)))) for i in range(3)})  # b re-indexed
    pages = {p: dv for p, dv in pages.items() if not (dv[0] == "b" and int(p[2:]) >= 3)}
    updated = old.update(7, {"b", "c"}, rows({p: dv for p, dv in pages.items() if dv[0] == "b"}))
    assert updated.generation == 7
    updated.save(tmp_path / "copy")
    updated = MultiVectorIndex.load(tmp_path / "copy")  # what a later process reads back
    assert updated.generation == 7 and isinstance(updated.vectors, np.memmap)
    rebuilt = MultiVectorIndex.build(rows(pages), DIM, prefilter=True, summaries=6)
    query = unit(rng.standard_normal((7, DIM)))
    assert sorted(updated.page_ids) == sorted(rebuilt.page_ids)
    order_u, order_r = np.argsort(updated.page_ids), np.argsort(rebuilt.page_ids)
    np.testing.assert_allclose(updated.exact_scores(query)[order_u], rebuilt.exact_scores(query)[order_r], atol=1e-6)
    np.testing.assert_allclose(updated.approximate_scores(query)[order_u], rebuilt.approximate_scores(query)[order_r],
                               atol=1e-6)
    hits = updated.search(query, 5)
    assert [(h.page_id, h.score) for h in hits] == [(h.page_id, pytest.approx(h.score, abs=1e-6))
                                                   for h in rebuilt.search(query, 5)]


def test_a_missing_or_cut_short_saved_copy_loads_as_none(tmp_path):
    assert MultiVectorIndex.load(tmp_path / "none") is None
    index = MultiVectorIndex.build([("p", "d", "v1", unit(np.ones((3, DIM))))], DIM, generation=2)
    index.save(tmp_path / "copy")
    (tmp_path / "copy" / "pages.npz").unlink()
    assert MultiVectorIndex.load(tmp_path / "copy") is None
