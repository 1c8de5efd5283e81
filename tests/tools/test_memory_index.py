"""The memory index catches up with a changed store by re-reading only the changed documents."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from pagelens.tools.corpus.ingest import index_paths
from pagelens.tools.retrieval import memory_index
from pagelens.tools.retrieval.memory_index import MemoryIndex
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


@pytest.fixture
def small_ivf(monkeypatch):
    """The IVF threshold lowered, so that a few thousand rows take the approximate path."""
    monkeypatch.setattr(memory_index, "IVF_MIN_ROWS", 1000)


def centroids(index: MemoryIndex, level: str = "passage") -> np.ndarray:
    ivf = index.ivf[level]
    return ivf.quantizer.reconstruct_n(0, ivf.nlist)


def recall_at_10(index: MemoryIndex, docs: dict[str, list[VectorRow]], queries: list[np.ndarray]) -> float:
    rows = [r for batch in docs.values() for r in batch if not r.pk.startswith("page:")]
    matrix, pks = np.vstack([r.dense for r in rows]), np.asarray([r.pk for r in rows])
    found = []
    for query in queries:
        truth = set(pks[np.argsort(-(matrix @ query))[:10]])
        found.append(len(truth & {h.pk for h in index.search_dense(query, 10, None)}) / 10)
    return float(np.mean(found))


def test_ivf_above_the_threshold_keeps_recall_and_levels_apart(small_ivf):
    rng = np.random.default_rng(2)
    centers = rng.standard_normal((64, DIM))
    docs = {f"d{i}": synthetic_rows(f"d{i}", 100, rng, centers) for i in range(20)}
    pages = synthetic_rows("pages", 300, rng, centers)
    docs["pages"] = [VectorRow(f"page:{r.pk}", r.page_id, r.document_id, r.dense, r.sparse) for r in pages]

    index = MemoryIndex.build(1, list(docs.values()), DIM)

    assert set(index.ivf) == {"passage"}  # 2,000 passage rows: IVF; 300 page rows: exact
    queries = [r.dense for r in synthetic_rows("q", 100, rng, centers)]
    assert recall_at_10(index, docs, queries) >= 0.95
    assert not any(h.pk.startswith("page:") for q in queries[:10] for h in index.search_dense(q, 50, None))
    assert all(h.pk.startswith("page:") for q in queries[:10] for h in index.search_dense(q, 50, None, "page"))
    # A document filter scans that document's rows exactly.
    d5 = np.vstack([r.dense for r in docs["d5"]])
    for q in queries[:10]:
        assert [h.pk for h in index.search_dense(q, 10, ["d5"])] == [docs["d5"][i].pk for i in np.argsort(-(d5 @ q))[:10]]


def test_a_saved_ivf_loads_and_catches_up_keeping_its_lists(small_ivf, tmp_path):
    rng = np.random.default_rng(3)
    centers = rng.standard_normal((64, DIM))
    docs = {f"d{i}": synthetic_rows(f"d{i}", 100, rng, centers) for i in range(20)}
    built = MemoryIndex.build(1, list(docs.values()), DIM)
    built.save(tmp_path / "cache")
    loaded = MemoryIndex.load(tmp_path / "cache")  # its vectors and IVF lists memory-mapped
    queries = [r.dense for r in synthetic_rows("q", 20, rng, centers)]
    for query in queries:
        assert [h.pk for h in loaded.search_dense(query, 10, None)] == \
            [h.pk for h in built.search_dense(query, 10, None)]
    docs["d3"] = synthetic_rows("d3", 100, rng, centers)

    updated = loaded.update(2, {"d3"}, [docs["d3"]])

    np.testing.assert_array_equal(centroids(updated), centroids(built))
    same_rows(updated, MemoryIndex.build(2, list(docs.values()), DIM))
    assert recall_at_10(updated, docs, [r.dense for r in docs["d3"][:50]]) >= 0.95
    updated.save(tmp_path / "cache")  # over the memory-mapped copy it was made from
    assert MemoryIndex.load(tmp_path / "cache").generation == 2
    # Shrinking below the IVF threshold drops the lists; the rows left are scanned exactly.
    shrunk = updated.update(3, {f"d{i}" for i in range(12)}, [])
    assert shrunk.ivf == {}
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
