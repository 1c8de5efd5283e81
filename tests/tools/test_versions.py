"""Re-indexing writes the new version beside the committed one: a re-index that fails loses nothing, and only
what a dead owner left is recovered."""

from __future__ import annotations

import shutil
import socket

import pytest
from PIL import Image

from pagelens.tools.corpus.ingest import index_paths
from pagelens.tools.corpus.owners import LEASE_SECONDS, Owner, is_alive, this_process
from pagelens.tools.search import Retriever

PDF = "004-pdflatex-4-pages_pdflatex-4-pages.pdf"
PROTECTED = "005-libreoffice-writer-password_libreoffice-writer-password.pdf"


def _snapshot(store, embedder) -> dict:
    pages = store.pages()
    query = store.lines(pages[0].page_id)[0].text
    return {
        "pages": [(p.page_id, p.dpi, p.width, p.image_path, p.thumbnail_path) for p in pages],
        "images": all(p.image_path.is_file() and p.thumbnail_path.is_file() for p in pages),
        "vectors": store.vectors.count(),
        "passages": store.catalog.passage_count(),
        "top": [h.page.page_id for h in Retriever(store, embedder).search(query, k=3)],
        "folders": sorted(f.name for f in (store.home / "pages").iterdir()),
    }


def test_a_reindex_at_a_dpi_over_the_pixel_cap_keeps_the_old_version_whole(open_store, realworld, embedder,
                                                                           monkeypatch):
    store = open_store()
    index_paths(store, [realworld / PDF], progress=False, embedder=embedder)
    before = _snapshot(store, embedder)
    assert before["images"] and before["vectors"] == before["passages"] > 0 and len(before["top"]) == 3

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4_000_000)  # a page at 144 dpi is 1.9M pixels, at 300 dpi 8.4M
    report = index_paths(store, [realworld / PDF], dpi=300, progress=False, embedder=embedder, log=lambda line: None)
    assert "cap" in report.failures[0][1]
    assert _snapshot(store, embedder) == before
    assert store.catalog.pending() == []


def test_a_changed_file_that_fails_to_render_keeps_the_old_version_whole(open_store, realworld, tmp_path, embedder):
    path = tmp_path / "docs" / "report.pdf"
    path.parent.mkdir()
    shutil.copy(realworld / PDF, path)
    store = open_store()
    index_paths(store, [path.parent], progress=False, embedder=embedder)
    before = _snapshot(store, embedder)
    shutil.copy(realworld / PROTECTED, path)  # now needs a password that is not given
    report = index_paths(store, [path.parent], progress=False, embedder=embedder, log=lambda line: None)
    assert "--password" in report.failures[0][1]
    assert _snapshot(store, embedder) == before


def test_a_reindex_that_fails_midway_discards_the_pages_it_wrote(open_store, tmp_path, embedder, monkeypatch):
    """The third frame is refused after two were stored: those go, the committed version stays."""
    scan = tmp_path / "scan.tiff"
    frames = [Image.new("RGB", (40, 30), "white"), Image.new("RGB", (40, 30), "gray"), Image.new("RGB", (60, 60))]
    frames[0].save(scan, save_all=True, append_images=frames[1:])
    store = open_store()
    index_paths(store, [scan], progress=False, embedder=embedder)
    before = [(p.page_id, p.image_path) for p in store.pages()]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)
    report = index_paths(store, [scan], dpi=72, progress=False, embedder=embedder, log=lambda line: None)
    assert "frame 3" in report.failures[0][1]
    assert [(p.page_id, p.image_path) for p in store.pages()] == before
    assert sorted(f.name for f in (store.home / "pages").iterdir()) == [before[0][1].parent.name]
    assert store.catalog.pending() == []


def test_a_reindex_at_a_new_dpi_swaps_versions(open_store, realworld, embedder):
    store = open_store()
    index_paths(store, [realworld / PDF], progress=False, embedder=embedder)
    old = _snapshot(store, embedder)
    index_paths(store, [realworld / PDF], dpi=72, progress=False, embedder=embedder)
    new = _snapshot(store, embedder)
    assert [p[0] for p in new["pages"]] == [p[0] for p in old["pages"]]  # page ids survive re-rendering
    assert {p[1] for p in new["pages"]} == {72} and new["images"]
    assert new["vectors"] == new["passages"] == old["passages"]
    assert len(new["folders"]) == 1 and new["folders"] != old["folders"]
    assert not any(p[3].exists() for p in old["pages"])


def test_recovery_spares_live_owners_and_undoes_dead_ones(open_store, realworld, embedder):
    store = open_store()
    index_paths(store, [realworld / PDF], progress=False, embedder=embedder)
    [document] = store.documents()
    me = this_process()
    dead = Owner(me.host, me.pid, me.started + "-earlier")  # this pid, reused: its first holder is gone
    remote = Owner("another-host", 1, "")
    for owner, heartbeat in ((dead, 0.0), (remote, 1e12)):  # the remote one's lease runs far into the future
        store.catalog.record_owner(owner, heartbeat)
    store.catalog.begin_version(document.document_id, "deadbeef", dead.key)
    store.catalog.begin_version(document.document_id, "0badcafe", remote.key)
    for version in ("deadbeef", "0badcafe"):
        store.image_path(document.document_id, version, 1).parent.mkdir(parents=True)
    store.recover()
    assert [v for v, *_ in store.catalog.pending()] == ["0badcafe"]
    assert not store.image_path(document.document_id, "deadbeef", 1).parent.exists()
    assert store.image_path(document.document_id, "0badcafe", 1).parent.exists()
    assert set(store.catalog.owners()) == {remote.key, me.key}  # this process owns what it writes
    assert store.vectors.count() == store.catalog.passage_count()


@pytest.mark.parametrize(("host", "age", "alive"), [("here", 0, True), ("elsewhere", 10, True),
                                                    ("elsewhere", LEASE_SECONDS + 1, False)])
def test_owner_liveness(host, age, alive):
    me = this_process()
    owner = Owner(socket.gethostname() if host == "here" else "no-such-host.invalid", me.pid, me.started)
    assert is_alive(owner, 1000.0, now=1000.0 + age) is alive
