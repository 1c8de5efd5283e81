"""Stores lose nothing and keep no secrets: one store shared by processes through `pagelens serve milvus`, an
index in progress surviving another process's open, passwords nowhere on disk, odd file names on one line."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from pagelens.tools.corpus.store import PageStore, StoreSettings

DOCS = ["004-pdflatex-4-pages_pdflatex-4-pages.pdf", "001-trivial_minimal-document.pdf",
        "026-latex-multicolumn_multicolumn.pdf", "011-google-doc-document_google-doc-document.pdf",
        "006-pdflatex-outline_pdflatex-outline.pdf"]
PROTECTED = "005-libreoffice-writer-password_libreoffice-writer-password.pdf"
PASSWORD = "openpassword"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def _serve_milvus(home: Path, cwd: Path, *, clean_log: bool = True) -> Iterator[str]:
    """`pagelens serve milvus` for the store `home` on a free loopback port; yields the URI it prints. With
    `clean_log`, the server's log must show no traceback (Milvus Lite logs one for each request it fails)."""
    port = _free_port()
    log = cwd / f"milvus-{port}.log"
    with open(log, "w") as out:  # a file, not a pipe nobody drains
        proc = subprocess.Popen([sys.executable, "-m", "pagelens", "serve", "milvus", "--port", str(port)],
                                cwd=cwd, stdout=out, stderr=out, env={**os.environ, "PAGELENS_HOME": str(home)})
    try:
        deadline = time.monotonic() + 60
        while "export PAGELENS_MILVUS_URI=" not in log.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"serve milvus did not start:\n{log.read_text()}")
            time.sleep(0.1)
        uri = log.read_text().split("export PAGELENS_MILVUS_URI=")[1].split()[0]
        assert uri == f"http://127.0.0.1:{port}"
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"serve milvus does not listen:\n{log.read_text()}")
            time.sleep(0.1)
        yield uri
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()
    assert not clean_log or "Traceback" not in log.read_text(), log.read_text()


def _copy(realworld: Path, folder: Path, names: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(realworld / name, folder / name)
    return folder


def _index(home: Path, cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pagelens", "--quiet", "index", *args], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PAGELENS_HOME": str(home), **(env or {})})


def _pending(home: Path) -> list[tuple[str, str]]:
    """(version, document_id) pending, read as another process would, without opening the store."""
    with contextlib.closing(sqlite3.connect(home / "catalog.sqlite", timeout=30)) as db:
        try:
            return db.execute("SELECT version, document_id FROM pending").fetchall()
        except sqlite3.OperationalError:  # the first opener has not created the tables yet
            return []


def _committed(home: Path) -> set[str]:
    with contextlib.closing(sqlite3.connect(home / "catalog.sqlite", timeout=30)) as db:
        return {row[0] for row in db.execute("SELECT version FROM documents")}


def _check_whole(store: PageStore) -> None:
    assert store.catalog.pending() == []
    assert store.vectors.count() == store.catalog.passage_count() > 0
    assert all(p.image_path.is_file() and p.thumbnail_path.is_file() for p in store.pages())
    folders = {f.name for f in (store.home / "pages").iterdir()}
    assert folders == {p.image_path.parent.name for p in store.pages()}


def test_serve_milvus_lets_one_process_index_while_another_searches(cli, realworld, tmp_path):
    docs = _copy(realworld, tmp_path / "docs", DOCS[:2])
    home = tmp_path / "home"
    with _serve_milvus(home, tmp_path) as uri:
        shared = {"PAGELENS_MILVUS_URI": uri}
        indexing = _index(home, tmp_path, str(docs), env=shared)
        searches = 0
        while indexing.poll() is None or searches == 0:  # search from another process while the index runs
            cli("search", "lorem ipsum", "--json", env=shared)
            searches += 1
        assert indexing.returncode == 0, indexing.stderr.read()
        hits = json.loads(cli("search", "lorem ipsum", "--json", env=shared).stdout)["hits"]
        assert {h["document"] for h in hits} <= set(DOCS[:2]) and hits
        refused = cli("pages", check=False)  # Milvus Lite would open the folder the server holds
        assert refused.returncode == 2 and "pagelens serve milvus" in refused.stderr
    # Stopped, the server leaves the store as a Milvus Lite store with everything in it.
    # (Both hold 5 pages, all returned; ranks may differ, as the server searches HNSW and Lite an exact copy.)
    lite = json.loads(cli("search", "lorem ipsum", "--json").stdout)["hits"]
    assert {h["page_id"] for h in lite} == {h["page_id"] for h in hits} and len(hits) == 5
    with PageStore(StoreSettings(home=home)) as store:
        _check_whole(store)


def _at_once(rounds: int, reset, open_one) -> list[BaseException]:
    """`rounds` times: `reset()`, then `open_one()` in two threads released together; the errors raised."""
    import threading

    errors: list[BaseException] = []
    for _ in range(rounds):
        reset()
        start = threading.Barrier(2)

        def run():
            start.wait()
            try:
                open_one()
            except BaseException as error:  # noqa: BLE001 - reported by the caller with the others
                errors.append(error)

        openers = [threading.Thread(target=run) for _ in range(2)]
        for opener in openers:
            opener.start()
        for opener in openers:
            opener.join()
    return errors


def _drop_collection(uri: str) -> None:
    from pymilvus import MilvusClient

    from pagelens.tools.retrieval.vectors import COLLECTION

    admin = MilvusClient(uri)
    if admin.has_collection(COLLECTION):
        admin.drop_collection(COLLECTION)
    admin.close()


def test_two_processes_opening_a_new_shared_store_create_it_once(tmp_path):
    """Seen in CI: a search opened the store while `pagelens index` created it, both created the collection, and
    the second creation failed (and both wrote the manifest through one temporary file). Openers of one store folder
    take turns (its opening lock): no error, and the server is asked once, so its log shows none."""
    home = tmp_path / "home"
    with _serve_milvus(home, tmp_path) as uri:
        def open_store():
            PageStore(StoreSettings(home=home, milvus_uri=uri)).close()

        assert not _at_once(6, lambda: _drop_collection(uri), open_store)


def test_a_second_creator_of_the_collection_uses_the_first_ones(tmp_path):
    """Processes with different store folders on one server (no shared lock) can both create the collection: the
    server refuses the second, which must carry on with the first one's (one round in three lost the race)."""
    from pagelens.tools.retrieval.vectors import VectorStore

    with _serve_milvus(tmp_path / "home", tmp_path, clean_log=False) as uri:
        assert not _at_once(6, lambda: _drop_collection(uri), lambda: VectorStore(uri, 8).close())


def test_an_index_in_progress_survives_another_process_opening_the_store(realworld, tmp_path):
    docs = _copy(realworld, tmp_path / "docs", DOCS)
    home = tmp_path / "home"
    with _serve_milvus(home, tmp_path) as uri:
        settings = StoreSettings(home=home, milvus_uri=uri)
        indexing = _index(home, tmp_path, str(docs), env={"PAGELENS_MILVUS_URI": uri})
        deadline = time.monotonic() + 300
        while not (pending := _pending(home)) and indexing.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pending, "the index run ended before a document was pending"
        with PageStore(settings) as store:  # opening runs recover(), which must leave the live run's work alone
            survived = {v for v, *_ in store.catalog.pending()} | {d[6] for d in store.catalog.documents()}
        assert {v for v, _ in pending} <= survived
        assert indexing.poll() is None, "the run ended before the other process opened the store; use more files"
        out, err = indexing.communicate(timeout=600)
        assert indexing.returncode == 0, err
        assert {v for v, _ in pending} <= _committed(home)
        with PageStore(settings) as store:
            assert len(store.documents()) == len(DOCS)
            _check_whole(store)

        # A run killed mid-document leaves pending work whose owner is provably dead: the next open undoes it.
        shutil.copy(realworld / "009-pdflatex-geotopo_GeoTopo-komprimiert.pdf", docs / "big.pdf")
        killed = _index(home, tmp_path, str(docs), env={"PAGELENS_MILVUS_URI": uri})
        while not _pending(home) and killed.poll() is None:
            time.sleep(0.05)
        killed.kill()
        killed.wait()
        assert _pending(home)
        with PageStore(settings) as store:
            assert len(store.documents()) == len(DOCS)
            _check_whole(store)


def test_a_password_is_never_written_anywhere(cli, realworld, tmp_path):
    docs = _copy(realworld, tmp_path / "docs", [PROTECTED, *DOCS[:3]])
    home = tmp_path / "home"
    indexing = _index(home, tmp_path, "--pass", PASSWORD, str(docs))  # a prefix argparse accepts
    deadline = time.monotonic() + 120
    while "index" not in ((home / "lock").read_text() if (home / "lock").exists() else "") and \
            time.monotonic() < deadline:
        time.sleep(0.02)
    refused = cli("pages", check=False)
    out, err = indexing.communicate(timeout=600)
    assert indexing.returncode == 0, err
    assert refused.returncode == 2 and "pagelens index" in refused.stderr and PASSWORD not in refused.stderr
    assert (home / "lock").read_text().split()[1:] == ["pagelens", "index"]
    written = [p for p in home.rglob("*") if p.is_file() and PASSWORD.encode() in p.read_bytes()]
    assert written == []
    assert "Indexed 9 page(s) from 4 document(s)" in out


def test_the_password_can_come_from_the_environment(cli, realworld):
    proc = cli("--quiet", "index", str(realworld / PROTECTED), env={"PAGELENS_PDF_PASSWORD": PASSWORD})
    assert "Indexed 1 page(s) from 1 document(s)" in proc.stdout


def test_odd_names_stay_on_one_line(cli, realworld, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    shutil.copy(realworld / DOCS[1], docs / "two\nlines.pdf")
    (docs / "gone\n.pdf").symlink_to(tmp_path / "nowhere.pdf")
    os.mkfifo(docs / "pipe.pdf")
    proc = cli("index", str(docs), check=False)
    assert proc.returncode == 1
    skipped = [line for line in proc.stderr.splitlines() if line.startswith("skipped ")]
    assert skipped == [f"skipped {docs}/gone\\n.pdf: a dangling symlink (its target {tmp_path}/nowhere.pdf does "
                       f"not exist)", f"skipped {docs}/pipe.pdf: not a regular file (a FIFO)"]
    pages = cli("pages").stdout.splitlines()
    assert len(pages) == 2 and " two\\nlines.pdf p.1 " in pages[0]
    search = cli("search", "document", "-k", "1").stdout.splitlines()
    assert len(search) == 2 and " two\\nlines.pdf p.1 " in search[0]
    assert json.loads(cli("pages", "--json").stdout)["pages"][0]["document"] == "two\nlines.pdf"


def test_max_pages_skips_a_longer_file_with_one_line(cli, tmp_path):
    frames = [Image.new("RGB", (30, 20), c) for c in ("white", "gray", "black")]
    frames[0].save(tmp_path / "three.tiff", save_all=True, append_images=frames[1:])
    proc = cli("--quiet", "index", str(tmp_path / "three.tiff"), "--max-pages", "2", check=False)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [f"skipped {tmp_path / 'three.tiff'}: it has 3 pages, over the cap of 2 pages "
                                        f"a file; raise the cap with --max-pages N (or max_pages in pagelens.toml), "
                                        f"or split the file."]
