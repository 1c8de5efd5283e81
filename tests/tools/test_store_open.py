"""Opening and closing a store: nothing outlives a close, and a closed store is free for another process."""

from __future__ import annotations

import json
import threading
import time

from pagelens.tools.corpus.ingest import index_paths

PDF = "004-pdflatex-4-pages_pdflatex-4-pages.pdf"


def _settles_to(threads: int) -> bool:
    """Whether this process is back to `threads` threads within 10 s: a stopped Milvus Lite server's threads end
    over its grace period, not at once."""
    deadline = time.monotonic() + 10
    while threading.active_count() > threads and time.monotonic() < deadline:
        time.sleep(0.1)
    return threading.active_count() <= threads


def test_a_store_opens_and_closes_200_times(open_store, realworld, tmp_path, embedder):
    home = tmp_path / "store"
    with open_store(home) as store:
        index_paths(store, [realworld / PDF], progress=False, embedder=embedder)
        rows = store.vectors.count()
    assert rows > 0
    assert _settles_to(threads := threading.active_count())
    for _ in range(200):
        with open_store(home) as store:
            assert store.vectors.count() == rows
            assert len(store.pages()) == 4
    assert _settles_to(threads)


def test_closed_stores_leave_no_server_running(open_store, tmp_path):
    assert _settles_to(threads := threading.active_count())
    # Each store starts its own Milvus Lite gRPC server and channel; a close that left them running would add
    # their threads for every store opened until the process ends.
    for n in range(20):
        open_store(tmp_path / f"store-{n}").close()
    assert _settles_to(threads)


def test_a_closed_store_is_free_for_another_process(open_store, realworld, tmp_path, embedder, cli):
    home = tmp_path / "store"
    with open_store(home) as store:
        index_paths(store, [realworld / PDF], progress=False, embedder=embedder)
    # This process lives on with the store closed: the CLI in another process reads what it wrote.
    hits = json.loads(cli("search", "pages", "--json", home=home).stdout)["hits"]
    assert hits and hits[0]["document"] == PDF
    with open_store(home) as store:  # and it can open the store again afterwards
        assert len(store.pages()) == 4
