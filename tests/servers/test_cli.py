"""The `pagelens` command as a user runs it: real subprocesses, a real store, real PDFs."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from PIL import Image

DOCS = ["004-pdflatex-4-pages_pdflatex-4-pages.pdf", "026-latex-multicolumn_multicolumn.pdf"]


@pytest.fixture
def indexed(cli, realworld, tmp_path):
    docs = tmp_path / "docs"
    (docs / "papers").mkdir(parents=True)
    for name in DOCS:
        shutil.copy(realworld / name, docs / "papers" / name)
    proc = cli("--quiet", "index", str(docs))
    assert "Indexed 7 page(s) from 2 document(s)" in proc.stdout
    return docs


def test_help_lists_every_command(cli):
    out = cli("--help").stdout
    for command in ("index", "search", "pages", "remove", "show", "crop", "ask", "serve", "demo"):
        assert command in out


def test_search_and_pages_json(cli, indexed):
    data = json.loads(cli("search", "two columns lorem ipsum", "-k", "3", "--json").stdout)
    assert data["query"] == "two columns lorem ipsum"
    assert len(data["hits"]) == 3
    top = data["hits"][0]
    assert set(top) == {"page_id", "document", "page_number", "score", "relevance", "supported", "evidence", "routes",
                        "snippet", "image_path"}
    assert top["document"] == "papers/026-latex-multicolumn_multicolumn.pdf" and top["page_number"] == 1
    filtered = json.loads(cli("search", "lorem ipsum", "--document", "papers/004-*", "--json").stdout)
    assert {h["document"] for h in filtered["hits"]} == {"papers/004-pdflatex-4-pages_pdflatex-4-pages.pdf"}
    assert len(filtered["hits"]) == 4

    pages = json.loads(cli("pages", "--json").stdout)["pages"]
    assert len(pages) == 7
    assert set(pages[0]) == {"page_id", "document", "page_number", "image_path"}
    assert sorted(p["page_number"] for p in pages if p["document"].startswith("papers/004")) == [1, 2, 3, 4]


def test_show_and_crop_write_images(cli, indexed, tmp_path):
    page = json.loads(cli("pages", "--json").stdout)["pages"][0]
    out = tmp_path / "page.png"
    cli("show", page["page_id"], "-o", str(out))
    with Image.open(out) as image, Image.open(page["image_path"]) as stored:
        assert image.size == stored.size
        width, height = image.size

    crop = tmp_path / "crop.png"
    proc = cli("crop", page["page_id"], "--box", "100,100,400,200", "-o", str(crop))
    with Image.open(crop) as image:
        assert image.width % 28 == 0 and image.height % 28 == 0
        assert 256 * 28 * 28 <= image.width * image.height <= 512 * 28 * 28
    assert "[100.0, 100.0, 400.0, 200.0]" in proc.stdout

    # The same region named in the pixels of a half-size view of the page.
    proc = cli("crop", page["page_id"], "--box", "50,50,200,100", "--seen", f"{width // 2}x{height // 2}",
               "--no-zoom", "-o", str(crop))
    with Image.open(crop) as image:
        assert abs(image.width - 300) <= 2 and abs(image.height - 100) <= 2


@pytest.mark.parametrize("box", ["10,10,10,50", "50,50,10,10", "-5,0,20,20", "nan,0,20,20", "99999,99999,100000,100000"])
def test_bad_boxes_are_one_clear_line(cli, indexed, tmp_path, box):
    page = json.loads(cli("pages", "--json").stdout)["pages"][0]
    proc = cli("crop", page["page_id"], f"--box={box}", "-o", str(tmp_path / "x.png"), check=False)
    assert proc.returncode == 2
    message = proc.stderr.strip()
    assert message.startswith("error: box") and "\n" not in message
    assert "x" in message.split("box", 1)[1]  # names the page size, WxH


def test_unknown_page_and_document_are_errors(cli, indexed, tmp_path):
    proc = cli("show", "nope-p1", "-o", str(tmp_path / "x.png"), check=False)
    assert proc.returncode == 2 and "'nope-p1'" in proc.stderr and "pagelens pages" in proc.stderr
    proc = cli("remove", "nothing*", check=False)
    assert proc.returncode == 2 and "'nothing*'" in proc.stderr


def test_remove_then_reindex(cli, indexed):
    assert "removed papers/004-pdflatex-4-pages_pdflatex-4-pages.pdf (4 page(s))" in cli("remove", "*004-*").stdout
    assert len(json.loads(cli("pages", "--json").stdout)["pages"]) == 3
    proc = cli("--quiet", "index", str(indexed))
    assert "Indexed 4 page(s) from 1 document(s); 1 unchanged; 0 failed." in proc.stdout


def test_index_reports_failed_files_and_exits_1(cli, realworld, tmp_path):
    docs = tmp_path / "mixed"
    docs.mkdir()
    shutil.copy(realworld / DOCS[0], docs / "good.pdf")
    (docs / "broken.pdf").write_bytes(b"%PDF-1.7 truncated")
    proc = cli("--quiet", "index", str(docs), check=False)
    assert proc.returncode == 1
    assert f"skipped {docs / 'broken.pdf'}:" in proc.stderr
    assert "Indexed 4 page(s) from 1 document(s); 0 unchanged; 1 failed. Failed:" in proc.stdout


@pytest.mark.slow
def test_realworld_corpus_indexes_every_page_pdfium_opens(cli, realworld):
    proc = cli("--quiet", "index", str(realworld), check=False)
    assert proc.returncode == 1
    assert "Indexed 164 page(s) from 29 document(s)" in proc.stdout
    failed = [line for line in proc.stderr.splitlines() if line.startswith("skipped ")]
    assert len(failed) == 4  # the protected PDF, the unreadable one, README.md and files.json
    assert any("005-libreoffice-writer-password" in line and "--password" in line for line in failed)
    proc = cli("--quiet", "index", str(realworld / "005-libreoffice-writer-password_libreoffice-writer-password.pdf"),
               "--password", "openpassword")
    assert "Indexed 1 page(s) from 1 document(s)" in proc.stdout


@pytest.mark.slow
def test_demo_finds_every_gold_page_and_answers_with_the_extractive_policy(cli, tmp_path):
    proc = cli("--quiet", "demo")
    assert "Gold page ranked first for 20/20 questions" in proc.stdout
    summary = re.search(r"answered (\d+)/20 correctly and cited the gold page for (\d+)/20", proc.stdout)
    assert summary and int(summary.group(1)) >= 14 and int(summary.group(2)) >= 18, proc.stdout[-500:]
    traces = sorted((tmp_path / "home" / "demo").glob("*-trace.html"))
    assert len(traces) == 20
    assert traces[0].read_text().count("data:image/") >= 2
