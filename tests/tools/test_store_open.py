"""Opening and closing a store: nothing outlives a close, and a closed store is free for another process."""

from __future__ import annotations

import json
import threading

from pagelens.tools.corpus.ingest import index_paths

PDF = "004-pdflatex-4-pages_pdflatex-4-pages.pdf"


def test_a_store_opens_and_closes_200_times(open_store, realworld, tmp_path, embedder):
    home = tmp_path / "store"
    with open_store(home) as store:
        index_paths(store, [realworld / PDF], progress=False, embedder=embedder)
        rows = store.vectors.count()
    assert rows > 0
    threads = threading.active_count()
    for _ in range(200):
        with open_store(home) as store:
            assert store.vectors.count() == rows
            assert len(store.pages()) == 4
    # Each open starts Milvus Lite's gRPC server and channel; a close that left them running would pile them up.
    assert threading.active_count() <= threads


def test_a_closed_store_is_free_for_another_process(open_store, realworld, tmp_path, embedder, cli):
    home = tmp_path / "store"
    with open_store(home) as store:
        index_paths(store, [realworld / PDF], progress=False, embedder=embedder)
    # This process lives on with the store closed: the CLI in another process reads what it wrote.
    hits = json.loads(cli("search", "pages", "--json", home=home).stdout)["hits"]
    assert hits and hits[0]["document"] == PDF
    with open_store(home) as store:  # and it can open the store again afterwards
        assert len(store.pages()) == 4
