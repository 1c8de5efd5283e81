"""Indexing real files into a real store: identity, re-indexing, replacement, removal, bad files, settings."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image

from pagelens.errors import StoreError
from pagelens.tools.corpus.ingest import index_paths

TEXT_PDFS = ["004-pdflatex-4-pages_pdflatex-4-pages.pdf", "001-trivial_minimal-document.pdf"]


def _state(store) -> dict:
    """Everything a run leaves behind, comparable across stores."""
    pages = [(p.document, p.page_number, p.width, p.height, p.text_source) for p in store.pages()]
    # Each indexing writes a new version (a random id in folder names): compare with the id left out.
    files = sorted(re.sub(r"-[0-9a-f]{8}/", "-*/", str(p.relative_to(store.home))) for kind in ("pages", "thumbs")
                   for p in (store.home / kind).rglob("*") if p.is_file())
    return {"pages": pages, "passages": store.catalog.passage_count(), "vectors": store.vectors.count(),
            "files": files, "documents": [(d.name, d.page_count) for d in store.documents()]}


def _copy(realworld: Path, folder: Path, names: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(realworld / name, folder / name)
    return folder


def test_index_text_pdfs_then_reindex_is_a_no_op(open_store, realworld, tmp_path, embedder):
    docs = _copy(realworld, tmp_path / "docs", TEXT_PDFS)
    store = open_store()
    report = index_paths(store, [docs], progress=False, embedder=embedder)
    assert report.failures == []
    assert (report.documents_indexed, report.pages_indexed) == (2, 5)
    before = _state(store)
    assert before["vectors"] == before["passages"] > 0
    assert {p.text_source for p in store.pages()} == {"pdf"}
    assert [d.name for d in store.documents()] == sorted(TEXT_PDFS)

    again = index_paths(store, [docs], progress=False, embedder=embedder)
    assert (again.documents_indexed, again.unchanged) == (0, 2)
    assert _state(store) == before


def test_text_lines_have_boxes_inside_the_page(open_store, realworld, tmp_path, embedder):
    store = open_store()
    index_paths(store, [realworld / TEXT_PDFS[0]], progress=False, embedder=embedder)
    page = store.pages()[0]
    lines = store.lines(page.page_id)
    assert len(lines) > 5
    for line in lines:
        assert 0 <= line.box.x1 < line.box.x2 <= page.width + 1
        assert 0 <= line.box.y1 < line.box.y2 <= page.height + 1
    assert page.image_path.is_file() and page.thumbnail_path.is_file()
    with Image.open(page.image_path) as image:
        assert image.size == (page.width, page.height)


def test_identical_files_are_one_document_with_two_sources(open_store, realworld, tmp_path, embedder):
    a = _copy(realworld, tmp_path / "a", TEXT_PDFS[:1])
    b = _copy(realworld, tmp_path / "b", TEXT_PDFS[:1])
    store = open_store()
    index_paths(store, [a], progress=False, embedder=embedder)
    report = index_paths(store, [b], progress=False, embedder=embedder)
    assert report.unchanged == 1
    [document] = store.documents()
    assert sorted(document.sources) == sorted(str(p / TEXT_PDFS[0]) for p in (a.resolve(), b.resolve()))
    assert len(store.pages()) == 4


def test_identical_files_in_one_run_are_indexed_once(open_store, realworld, tmp_path, embedder):
    docs = tmp_path / "docs"
    for folder in ("a", "b", "c"):
        _copy(realworld, docs / folder, TEXT_PDFS[:1])
    _copy(realworld, docs / "c", TEXT_PDFS[1:])  # a/ and b/ come first: b/ waits while a/ is being indexed
    store = open_store()
    report = index_paths(store, [docs], progress=False, embedder=embedder)
    assert (report.documents_indexed, report.unchanged, report.pages_indexed) == (2, 2, 5)
    four_pages = store.match_documents("a/*")[0]
    assert len(four_pages.sources) == 3 and four_pages.page_count == 4
    assert store.vectors.count() == store.catalog.passage_count()
    assert store.catalog.pending() == []


def test_failures_between_good_files_leave_no_trace(open_store, realworld, tmp_path, embedder):
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "a_corrupt.pdf").write_bytes(b"%PDF-1.4 this is not really a pdf")
    shutil.copy(realworld / TEXT_PDFS[0], mixed / "b_good.pdf")
    (mixed / "c_empty.pdf").write_bytes(b"")
    (mixed / "d_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    shutil.copy(realworld / TEXT_PDFS[1], mixed / "e_good.pdf")
    clean = tmp_path / "clean"
    clean.mkdir()
    for name in ("b_good.pdf", "e_good.pdf"):
        shutil.copy(mixed / name, clean / name)

    with_failures = open_store(tmp_path / "one")
    report = index_paths(with_failures, [mixed], progress=False, embedder=embedder, log=lambda line: None)
    without = open_store(tmp_path / "two")
    index_paths(without, [clean], progress=False, embedder=embedder)

    assert sorted(Path(p).name for p, _ in report.failures) == ["a_corrupt.pdf", "c_empty.pdf", "d_broken.png"]
    assert (report.documents_indexed, report.pages_indexed) == (2, 5)
    assert _state(with_failures) == _state(without)
    assert with_failures.catalog.pending() == []


def test_changed_file_replaces_its_pages(open_store, realworld, tmp_path, embedder):
    path = tmp_path / "docs" / "report.pdf"
    path.parent.mkdir()
    shutil.copy(realworld / TEXT_PDFS[0], path)
    store = open_store()
    index_paths(store, [path.parent], progress=False, embedder=embedder)
    old_folders = set((store.home / "pages").iterdir())
    shutil.copy(realworld / TEXT_PDFS[1], path)
    index_paths(store, [path.parent], progress=False, embedder=embedder)
    [document] = store.documents()
    assert document.name == "report.pdf" and document.page_count == 1
    assert len(store.pages()) == 1
    assert store.vectors.count() == store.catalog.passage_count()
    assert not old_folders & set((store.home / "pages").iterdir())


def test_new_dpi_replaces_pages_and_images(open_store, realworld, embedder):
    store = open_store()
    index_paths(store, [realworld / TEXT_PDFS[1]], progress=False, embedder=embedder)
    small = store.pages()[0]
    index_paths(store, [realworld / TEXT_PDFS[1]], dpi=72, progress=False, embedder=embedder)
    [page] = store.pages()
    assert page.dpi == 72 and abs(page.width - small.width / 2) <= 1
    assert not small.image_path.exists() and page.image_path.exists()


def test_remove_deletes_pages_images_and_vectors(open_store, realworld, tmp_path, embedder):
    docs = _copy(realworld, tmp_path / "docs", TEXT_PDFS)
    store = open_store()
    index_paths(store, [docs], progress=False, embedder=embedder)
    [victim] = store.match_documents("004-*")
    store.delete_document(victim.document_id)
    assert [d.name for d in store.documents()] == [TEXT_PDFS[1]]
    assert len(store.pages()) == 1
    assert store.vectors.count() == store.catalog.passage_count()
    assert len(list((store.home / "pages").iterdir())) == 1


def test_bad_files_are_skipped_with_a_reason_each(open_store, realworld, tmp_path, embedder, monkeypatch):
    docs = _copy(realworld, tmp_path / "docs", [TEXT_PDFS[1], "005-libreoffice-writer-password_libreoffice-writer-password.pdf"])
    (docs / "empty.pdf").write_bytes(b"")
    (docs / "corrupt.pdf").write_bytes(b"%PDF-1.4 this is not really a pdf")
    (docs / "notes.xyz").write_text("what is this")
    lines: list[str] = []
    store = open_store()
    report = index_paths(store, [docs], progress=False, embedder=embedder, log=lines.append)
    reasons = dict((Path(p).name, r) for p, r in report.failures)
    assert set(reasons) == {"empty.pdf", "corrupt.pdf", "notes.xyz",
                            "005-libreoffice-writer-password_libreoffice-writer-password.pdf"}
    assert "empty" in reasons["empty.pdf"]
    assert "PDFium cannot open" in reasons["corrupt.pdf"]
    assert "password" in reasons["005-libreoffice-writer-password_libreoffice-writer-password.pdf"]
    assert "--password" in reasons["005-libreoffice-writer-password_libreoffice-writer-password.pdf"]
    assert "unknown file type" in reasons["notes.xyz"]
    assert len(lines) == 4 and all(line.startswith("skipped ") for line in lines)
    assert report.documents_indexed == 1
    assert [d.name for d in store.documents()] == [TEXT_PDFS[1]]
    assert store.catalog.pending() == []


def test_images_over_the_pixel_cap_are_refused(open_store, tmp_path, embedder, monkeypatch):
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (40, 30), "white").save(images / "warned.png")   # between the cap and twice it: Pillow warns
    Image.new("RGB", (80, 60), "white").save(images / "huge.png")     # over twice the cap: Pillow refuses
    Image.new("RGB", (30, 20), "white").save(images / "fine.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    store = open_store()
    report = index_paths(store, [images], progress=False, embedder=embedder, log=lambda line: None)
    reasons = dict((Path(p).name, r) for p, r in report.failures)
    assert set(reasons) == {"warned.png", "huge.png"}
    assert all("pixel" in r and "cap" in r for r in reasons.values())
    assert [d.name for d in store.documents()] == ["fine.png"]


def test_password_opens_the_protected_pdf(open_store, realworld, embedder):
    store = open_store()
    path = realworld / "005-libreoffice-writer-password_libreoffice-writer-password.pdf"
    wrong = index_paths(store, [path], password="nope", progress=False, embedder=embedder)
    assert "does not open" in wrong.failures[0][1]
    report = index_paths(store, [path], password="openpassword", progress=False, embedder=embedder)
    assert report.failures == [] and report.pages_indexed == 1


def test_multi_frame_tiff_and_images(open_store, tmp_path, embedder):
    frames = [Image.new("RGB", (200, 100), c) for c in ("white", "gray", "black")]
    frames[0].save(tmp_path / "scan.tiff", save_all=True, append_images=frames[1:])
    Image.new("L", (120, 80), 255).save(tmp_path / "photo.webp")
    store = open_store()
    report = index_paths(store, [tmp_path / "scan.tiff", tmp_path / "photo.webp"], progress=False, embedder=embedder)
    assert report.failures == []
    assert [(p.document, p.page_number) for p in store.pages()] == [
        ("photo.webp", 1), ("scan.tiff", 1), ("scan.tiff", 2), ("scan.tiff", 3)]


def test_store_built_with_other_settings_needs_rebuild(open_store, realworld, tmp_path, embedder):
    home = tmp_path / "store"
    store = open_store(home)
    index_paths(store, [realworld / TEXT_PDFS[1]], progress=False, embedder=embedder)
    store.close()
    with pytest.raises(StoreError, match="--rebuild") as info:
        open_store(home, passage_tokens=64)
    assert "passage_tokens" in str(info.value)
    with pytest.raises(StoreError, match="dpi"):
        open_store(home, dpi=200)
    rebuilt = open_store(home, rebuild=True, passage_tokens=64)
    assert rebuilt.pages() == [] and rebuilt.vectors.count() == 0


def test_a_second_opener_is_told_who_holds_the_store(open_store, tmp_path, cli):
    store = open_store(tmp_path / "held")
    proc = cli("pages", home=store.home, check=False)
    assert proc.returncode == 2
    message = proc.stderr.strip()
    assert message.count("\n") == 0
    assert str(store.home) in message and "another process" in message and "PAGELENS_MILVUS_URI" in message


def test_the_lock_names_the_holders_command_only(tmp_path):
    from pagelens.tools.corpus.store import PageStore, StoreSettings

    with PageStore(StoreSettings(home=tmp_path / "held"), holder="pagelens index") as store:
        holder = (store.home / "lock").read_text()
    assert holder.split() == [str(os.getpid()), "pagelens", "index"]
