"""Server-side BM25 (lexical="server": Milvus's BM25 function over each row's text) on Milvus Lite and on a Milvus
server (`milvus-lite server`): it finds the sample corpus's gold pages about as well as our client BM25, a store
built one way is refused the other way, and Milvus's own fusion (`hybrid_search`) agrees where the routes do."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from pagelens.errors import BadInputError, StoreError
from pagelens.tools.corpus.ingest import index_paths
from pagelens.tools.corpus.store import PageStore, StoreSettings
from pagelens.tools.retrieval.settings import RetrievalSettings
from pagelens.tools.search import Retriever
from pagelens.training.evaluate import gold_page_ids, read_questions
from pagelens.training.metrics import recall_at

LEXICAL_ROUTES = ("bm25", "page-bm25")


@pytest.fixture(scope="module", params=["lite", "server"])
def server_store(request, tmp_path_factory, sample, embedder):
    """The sample corpus indexed with lexical="server", on Milvus Lite or on the served Milvus."""
    uri = request.getfixturevalue("served") if request.param == "server" else None
    home = tmp_path_factory.mktemp(f"server-bm25-{request.param}") / "store"
    store = PageStore(StoreSettings(home=home, milvus_uri=uri), RetrievalSettings(lexical="server"))
    report = index_paths(store, sorted(sample.glob("*.pdf")), progress=False, embedder=embedder)
    assert not report.failures
    yield store
    store.close()


@pytest.fixture(scope="module")
def client_store(sample_home):
    store = PageStore(StoreSettings(home=sample_home))
    yield store
    store.close()


def _recall_at_5(store: PageStore, embedder, sample: Path) -> dict[str, float]:
    """recall@5 of the fusion and of each lexical route, over the sample's answerable questions."""
    questions_file = sample / "questions.jsonl"
    questions = [q for q in read_questions(questions_file) if q.is_sufficient and q.pages]
    gold = gold_page_ids(questions, store, questions_file)
    retriever = Retriever(store, embedder)
    found: dict[str, float] = {route: 0.0 for route in ("fused", *LEXICAL_ROUTES)}
    for q in questions:
        rankings = retriever.route_rankings(q.question, routes=LEXICAL_ROUTES)
        ranked = {"fused": [hit.page.page_id for hit in retriever.search(q.question, k=5)],
                  **{route: [page_id for page_id, _ in rankings[route]] for route in LEXICAL_ROUTES}}
        for route, pages in ranked.items():
            found[route] += recall_at(pages, gold[q.question], 5) / len(questions)
    return found


def test_server_bm25_finds_the_gold_pages_about_as_well_as_the_client(server_store, client_store, embedder, sample):
    assert not server_store.use_memory_index()  # lexical="server" searches Milvus, even Milvus Lite
    server = _recall_at_5(server_store, embedder, sample)
    client = _recall_at_5(client_store, embedder, sample)
    figures = f"recall@5 server {server}, client {client}"
    assert server["fused"] > 0.5, figures
    for route in server:
        assert server[route] >= client[route] - 0.1, figures


def test_a_store_built_with_one_lexical_setting_is_refused_with_the_other(open_store, tmp_path):
    open_store(tmp_path / "server", lexical="server").close()
    with pytest.raises(StoreError, match="milvus-bm25-v1.*--rebuild"):
        open_store(tmp_path / "server")
    open_store(tmp_path / "client").close()
    with pytest.raises(StoreError, match="bm25-blake2-v2.*--rebuild"):
        open_store(tmp_path / "client", lexical="server")
    with pytest.raises(BadInputError, match="memory_index=on cannot serve lexical=server"):
        RetrievalSettings(lexical="server", memory_index="on")


def test_milvus_fusion_agrees_with_ours_where_the_routes_agree(server_store, client_store, embedder):
    retriever = Retriever(server_store, embedder)
    client = Retriever(client_store, embedder)
    agreed = 0
    for query in ("KX-40 maintenance intervals", "Northwind revenue 2023", "invoice total amount due",
                  "warranty period of the pump"):
        rankings = retriever.route_rankings(query)
        tops = {ranking[0][0] for ranking in rankings.values() if ranking}
        if len(tops) != 1:
            continue  # the routes disagree: Milvus's row-level fusion may then pick another page (vectors.py)
        agreed += 1
        top = tops.pop()
        assert retriever.fused_in_milvus(query, k=5)[0][0] == top, query
        assert retriever.search(query, k=1)[0].page.page_id == top, query
        assert client.search(query, k=1)[0].page.page_id == top, query
    assert agreed >= 2


def test_milvus_fusion_is_refused_for_unequal_weights_or_the_memory_index(server_store, client_store, embedder):
    weighted = Retriever(server_store, embedder)
    weighted.store.retrieval = replace(server_store.retrieval, bm25_weight=2.0)
    try:
        with pytest.raises(BadInputError, match="equally weighted"):
            weighted.fused_in_milvus("KX-40 maintenance intervals")
    finally:
        weighted.store.retrieval = replace(server_store.retrieval, bm25_weight=1.0)
    with pytest.raises(BadInputError, match="memory index"):
        Retriever(client_store, embedder).fused_in_milvus("KX-40 maintenance intervals")
