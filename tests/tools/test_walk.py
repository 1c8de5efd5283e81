"""What `index` finds in a folder and what it refuses to take: links, special files, the store itself, big files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from PIL import Image

from pagelens.tools.corpus.files import discover, printable
from pagelens.tools.corpus.ingest import index_paths

PDF = "001-trivial_minimal-document.pdf"


def test_links_and_special_files_get_one_reason_each(realworld, tmp_path):
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    shutil.copy(realworld / PDF, docs / "sub" / "a.pdf")
    (docs / "sub" / "up").symlink_to("..")                     # a loop through a folder above
    (docs / "self.pdf").symlink_to("self.pdf")                 # a link to itself
    (docs / "gone.pdf").symlink_to(tmp_path / "missing.pdf")   # dangling
    os.mkfifo(docs / "pipe.pdf")                               # would block a reader forever
    (docs / "linked.pdf").symlink_to(docs / "sub" / "a.pdf")   # a link to a file is followed
    (tmp_path / "elsewhere").mkdir()
    shutil.copy(realworld / PDF, tmp_path / "elsewhere" / "b.pdf")
    (docs / "more").symlink_to(tmp_path / "elsewhere")         # a link to a folder is followed

    found, problems = discover([docs])
    assert sorted(f.name for f in found) == ["linked.pdf", "more/b.pdf", "sub/a.pdf"]
    reasons = {path.relative_to(docs).as_posix(): reason for path, reason in problems}
    assert set(reasons) == {"sub/up", "self.pdf", "gone.pdf", "pipe.pdf"}
    assert "symlink loop" in reasons["sub/up"] and "symlink loop" in reasons["self.pdf"]
    assert "dangling symlink" in reasons["gone.pdf"] and "missing.pdf" in reasons["gone.pdf"]
    assert "FIFO" in reasons["pipe.pdf"]


def test_an_unreadable_folder_is_reported(tmp_path):
    locked = tmp_path / "docs" / "locked"
    locked.mkdir(parents=True)
    locked.chmod(0)
    # Root reads any folder; as root, the walk runs in a child without the capabilities that bypass permissions
    # (util-linux's setpriv), so the folder is as unreadable to it as to any other user.
    drop = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] if os.geteuid() == 0 else []
    walk = ("import json, sys; from pagelens.tools.corpus.files import discover; "
            "found, problems = discover([__import__('pathlib').Path(sys.argv[1])]); "
            "print(json.dumps([[str(f) for f in found], [[p.name, r] for p, r in problems]]))")
    try:
        child = subprocess.run([*drop, sys.executable, "-c", walk, str(tmp_path / "docs")], capture_output=True,
                               text=True, check=True, cwd=tmp_path)
    finally:
        locked.chmod(0o755)
    found, problems = json.loads(child.stdout)
    assert found == [] and [(name, "cannot read the folder" in reason) for name, reason in problems] == [("locked", True)]


def test_the_store_inside_the_indexed_folder_is_never_indexed(open_store, realworld, tmp_path, embedder):
    docs = tmp_path / "docs"
    docs.mkdir()
    shutil.copy(realworld / PDF, docs / PDF)
    store = open_store(docs / "store")  # not hidden, so only its being the store keeps it out
    for _ in range(2):
        report = index_paths(store, [docs], progress=False, embedder=embedder)
        assert report.failures == []
        assert [d.name for d in store.documents()] == [PDF] and len(store.pages()) == 1


def test_every_tiff_frame_is_checked_against_the_pixel_cap(open_store, tmp_path, embedder, monkeypatch):
    frames = [Image.new("RGB", (30, 20), "white"), Image.new("RGB", (30, 20), "gray"), Image.new("RGB", (100, 100))]
    frames[0].save(tmp_path / "scan.tiff", save_all=True, append_images=frames[1:])
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # the first frame fits; Pillow checks only that one
    store = open_store()
    report = index_paths(store, [tmp_path / "scan.tiff"], progress=False, embedder=embedder, log=lambda line: None)
    [(_, reason)] = report.failures
    assert "frame 3" in reason and "100x100" in reason and "cap" in reason
    assert store.documents() == [] and store.catalog.pending() == []
    assert not any((store.home / "pages").rglob("*.jpg"))


def test_a_file_over_the_page_cap_is_skipped_naming_the_flag(open_store, tmp_path, embedder):
    frames = [Image.new("RGB", (30, 20), c) for c in ("white", "gray", "black")]
    frames[0].save(tmp_path / "three.tiff", save_all=True, append_images=frames[1:])
    frames[0].save(tmp_path / "two.tiff", save_all=True, append_images=frames[1:2])
    lines: list[str] = []
    store = open_store()
    index_paths(store, [tmp_path / "three.tiff", tmp_path / "two.tiff"], max_pages=2, progress=False,
                embedder=embedder, log=lines.append)
    [line] = lines
    assert line.startswith(f"skipped {tmp_path / 'three.tiff'}:") and "3 pages" in line and "--max-pages" in line
    assert [(d.name, d.page_count) for d in store.documents()] == [("two.tiff", 2)]


def test_printable_escapes_what_would_break_a_line():
    assert printable("a\nb\tc\x1bd") == "a\\nb\\tc\\x1bd"
    assert printable("报告 Ünïcode.pdf") == "报告 Ünïcode.pdf"
    assert Path(printable("x\u2028y")).name == "x\\u2028y"
