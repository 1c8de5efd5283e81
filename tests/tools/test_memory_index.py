"""The memory index catches up with a changed store by re-reading only the changed documents."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from pagelens.tools.corpus.ingest import index_paths
from pagelens.tools.retrieval.memory_index import IVF_MIN_ROWS, MemoryIndex
from pagelens.tools.retrieval.vectors import VectorRow

DIM = 32


def synthetic_rows(document: str, n: int, rng: np.random.Generator, centers: np.ndarray) -> list[VectorRow]:
    dense = centers[rng.integers(0, len(centers), n)] + 0.3 * rng.standard_normal((n, DIM))
    dense /= np.linalg.norm(dense, axis=1, keepdims=True)
    return [VectorRow(f"{document}-{i}:0", f"{document}-{i}", document, dense[i].astype(np.float32),
                      {int(t): 1.0 for t in rng.integers(0, 500, 6)}) for i in range(n)]


def same_rows(a: MemoryIndex, b: MemoryIndex) -> None:
    """Two indexes hold the same rows (in any order) with the same vectors and lexical weights."""
    assert sorted(a.pks) == sorted(b.pks)
    order_a, order_b = np.argsort(a.pks), np.argsort(b.pks)
    np.testing.assert_array_equal(np.asarray(a.dense)[order_a], np.asarray(b.dense)[order_b])
    np.testing.assert_array_equal(a.documents[a.document_codes[order_a]], b.documents[b.document_codes[order_b]])
    for terms in ({7: 1.0}, {3: 2.0, 250: 0.5}, {499: 1.0, 0: 1.0}):
        hits_a = {h.pk: h.score for h in a.search_sparse(terms, 10_000, None)}
        hits_b = {h.pk: h.score for h in b.search_sparse(terms, 10_000, None)}
        assert hits_a == pytest.approx(hits_b)


def test_update_equals_a_rebuild_below_the_ivf_threshold():
    rng = np.random.default_rng(1)
    centers = rng.standard_normal((8, DIM))
    docs = {d: synthetic_rows(d, 50, rng, centers) for d in ("a", "b", "c")}
    old = MemoryIndex.build(1, [docs["a"], docs["b"], docs["c"]], DIM)
    docs["b"] = synthetic_rows("b", 30, rng, centers)  # re-indexed with other content
    docs["d"] = synthetic_rows("d", 40, rng, centers)  # added
    del docs["c"]  # removed

    updated = old.update(2, {"b", "c", "d"}, [docs["b"], docs["d"]])

    rebuilt = MemoryIndex.build(2, list(docs.values()), DIM)
    assert updated.generation == 2
    same_rows(updated, rebuilt)
    query = docs["d"][5].dense
    assert [h.pk for h in updated.search_dense(query, 10, None)] == [h.pk for h in rebuilt.search_dense(query, 10, None)]
    assert {h.page_id.split("-")[0] for h in updated.search_dense(query, 100, ["b"])} == {"b"}


@pytest.mark.slow
def test_update_keeps_the_ivf_lists_and_their_recall():
    rng = np.random.default_rng(2)
    centers = rng.standard_normal((64, DIM))
    per_doc = IVF_MIN_ROWS // 20 + 50
    docs = {f"d{i}": synthetic_rows(f"d{i}", per_doc, rng, centers) for i in range(20)}
    old = MemoryIndex.build(1, list(docs.values()), DIM)
    assert len(old.centroids) > 0
    docs["d3"] = synthetic_rows("d3", per_doc, rng, centers)

    updated = old.update(2, {"d3"}, [docs["d3"]])

    np.testing.assert_array_equal(updated.centroids, old.centroids)
    same_rows(updated, MemoryIndex.build(2, list(docs.values()), DIM))
    matrix = np.vstack([r.dense for rows in docs.values() for r in rows])
    pks = np.asarray([r.pk for rows in docs.values() for r in rows])
    recall = []
    for row in docs["d3"][:50]:
        truth = set(pks[np.argsort(-(matrix @ row.dense))[:10]])
        recall.append(len(truth & {h.pk for h in updated.search_dense(row.dense, 10, None)}) / 10)
    assert np.mean(recall) >= 0.99
    # Shrinking below the IVF threshold drops the lists; the rows left are scanned exactly.
    shrunk = updated.update(3, {f"d{i}" for i in range(12)}, [])
    assert len(shrunk.centroids) == 0
    same_rows(shrunk, MemoryIndex.build(3, [docs[f"d{i}"] for i in range(12, 20)], DIM))


def test_store_catches_up_from_the_change_log(sample_home, realworld, open_store, embedder, tmp_path, monkeypatch):
    home = tmp_path / "store"
    shutil.copytree(sample_home, home)
    store = open_store(home)
    before = store.memory_index()
    read: list[list[str] | None] = []
    rows = store.vectors.rows
    monkeypatch.setattr(store.vectors, "rows", lambda document_ids=None: read.append(document_ids) or rows(document_ids))
    removed = store.match_documents("memo*")[0]
    store.delete_document(removed.document_id)
    report = index_paths(store, [realworld / "004-pdflatex-4-pages_pdflatex-4-pages.pdf"], progress=False,
                         embedder=embedder, log=lambda line: None)
    assert report.pages_indexed == 4
    added = store.match_documents("004-*")[0]

    after = store.memory_index()

    assert read == [[added.document_id]]  # only the added document is read back from Milvus
    assert after.generation == store.catalog.generation() == before.generation + 2
    same_rows(after, MemoryIndex.build(after.generation, rows(), store.vectors.dim))
    assert removed.document_id not in set(after.documents) and added.document_id in set(after.documents)
    assert store.catalog.changed_since(before.generation) is None  # the log is trimmed once caught up
    # A reopened store loads the saved copy as it is: nothing is read from Milvus.
    store.close()
    read.clear()
    reopened = open_store(home)
    monkeypatch.setattr(reopened.vectors, "rows", lambda document_ids=None: read.append(document_ids) or rows(document_ids))
    same_rows(reopened.memory_index(), after)
    assert read == []


def test_a_store_without_a_change_log_rebuilds(sample_home, open_store, tmp_path):
    home = tmp_path / "store"
    shutil.copytree(sample_home, home)
    store = open_store(home)
    before = store.memory_index()
    store.delete_document(store.match_documents("memo*")[0].document_id)
    store.catalog.forget_changes(store.catalog.generation())  # as a store made before the log existed

    after = store.memory_index()

    assert after.generation == before.generation + 1
    same_rows(after, MemoryIndex.build(after.generation, store.vectors.rows(), store.vectors.dim))
