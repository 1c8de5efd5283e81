"""An index run killed with SIGKILL at any point, then run again, ends where an uninterrupted run ends."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pagelens.tools.corpus.store import PageStore, StoreSettings

DOCS = ["004-pdflatex-4-pages_pdflatex-4-pages.pdf", "001-trivial_minimal-document.pdf",
        "026-latex-multicolumn_multicolumn.pdf", "011-google-doc-document_google-doc-document.pdf",
        "006-pdflatex-outline_pdflatex-outline.pdf"]


def _state(home: Path) -> dict:
    with PageStore(StoreSettings(home=home)) as store:
        # Each indexing writes a new version (a random id in folder names and pks): compare with the id left out.
        files = sorted(re.sub(r"-[0-9a-f]{8}/", "-*/", str(p.relative_to(home))) for kind in ("pages", "thumbs")
                       for p in (home / kind).rglob("*") if p.is_file())
        passages = store.catalog.passages(
            f"{p.page_id}:{p.image_path.parent.name.rsplit('-', 1)[1]}:{i}" for p in store.pages() for i in range(50))
        return {
            "pages": [(p.page_id, p.width, p.height, p.text_source) for p in store.pages()],
            "lines": {p.page_id: [line.text for line in store.lines(p.page_id)] for p in store.pages()},
            "passages": sorted((re.sub(r":[0-9a-f]{8}:", ":*:", pk), row.text) for pk, row in passages.items()),
            "vectors": store.vectors.count(),
            "files": files,
            "sources": sorted(s for d in store.documents() for s in d.sources),
            "pending": store.catalog.pending(),
            "cache_rows": len(store.memory_index().pks),
        }


def _index(home: Path, docs: Path, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PAGELENS_HOME": str(home)}
    return subprocess.Popen([sys.executable, "-m", "pagelens", "--quiet", "index", str(docs)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _page_files(home: Path) -> int:
    return sum(1 for _ in (home / "pages").rglob("*.*")) if (home / "pages").is_dir() else 0


@pytest.mark.slow
def test_sigkill_then_rerun_converges(realworld, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    for name in DOCS:
        shutil.copy(realworld / name, docs / name)

    reference = tmp_path / "reference"
    proc = _index(reference, docs, tmp_path)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    expected = _state(reference)
    assert expected["pending"] == [] and expected["vectors"] > 0

    # Kill once the run has stored N page images: early, in the middle, and near the end.
    total = len(expected["pages"])
    for target in (1, total // 2, total):
        home = tmp_path / f"killed-{target}"
        proc = _index(home, docs, tmp_path)
        deadline = time.monotonic() + 300
        while _page_files(home) < target and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        rerun = _index(home, docs, tmp_path)
        out, err = rerun.communicate(timeout=600)
        assert rerun.returncode == 0, err
        assert _state(home) == expected, f"killed after {target} page image(s)"
