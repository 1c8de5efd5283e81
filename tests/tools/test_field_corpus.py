"""The field corpus in tests/data/field/ is what scripts/make_field_corpus.py writes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pypdfium2 as pdfium

ROOT = Path(__file__).resolve().parents[2]
FIELD = ROOT / "tests" / "data" / "field"
SCRIPT = ROOT / "scripts" / "make_field_corpus.py"


def _text_layers(path: Path) -> list[str]:
    pdf = pdfium.PdfDocument(str(path))
    try:
        return [" ".join(pdf[i].get_textpage().get_text_range().split()) for i in range(len(pdf))]
    finally:
        pdf.close()


def test_generator_reproduces_committed_files(tmp_path: Path) -> None:
    # PDFs are compared by their pages' text, not their bytes: a newer reportlab or Pillow may encode the same
    # pages differently. The questions and the README must be identical.
    subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path)], check=True, capture_output=True)
    fresh = sorted(p.name for p in tmp_path.iterdir())
    assert fresh == sorted(p.name for p in FIELD.iterdir())
    for name in fresh:
        if name.endswith(".pdf"):
            same = _text_layers(tmp_path / name) == _text_layers(FIELD / name)
        else:
            same = (tmp_path / name).read_bytes() == (FIELD / name).read_bytes()
        assert same, f"{name} differs from a fresh run; re-run scripts/make_field_corpus.py and commit the output"
