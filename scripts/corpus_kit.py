"""What the corpus generators share: the document record, aged scans, answer checks and the command line.

make_sample_corpus.py and make_field_corpus.py import this sibling module (scripts/ is on sys.path when either
runs as a script); each keeps only its own documents, questions and README.
"""

from __future__ import annotations

import argparse
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pypdfium2 as pdfium
import reportlab
from PIL import Image, ImageDraw, ImageFilter, ImageFont

# Scans: 150 dpi US Letter, the resolution of a typical office scanner.
SCAN_DPI = 150
SCAN_SIZE = (int(8.5 * SCAN_DPI), int(11 * SCAN_DPI))
SCAN_MARGIN = 120
SCAN_INK = 25
SCAN_JPEG_QUALITY = 60
VERA_DIR = Path(reportlab.__file__).parent / "fonts"

# A scanned page has at most this much text layer (none, in practice).
MAX_SCAN_TEXT_CHARS = 20
NBSP = "\u00a0"


@dataclass(frozen=True)
class Document:
    name: str
    description: str
    scanned: bool
    pages: list[str]  # text per page: the text layer, or the strings drawn on a scan
    lines: list[list[str]]  # scans only: the drawn strings per page, one entry per line


@dataclass(frozen=True)
class Question:
    question: str
    answer: str  # a short span printed verbatim on the page
    document: str
    page: int  # 1-based
    kind: str  # what the page shows, e.g. "table", "chart", "prose", "scan"


def text_layer(path: Path) -> list[str]:
    pdf = pdfium.PdfDocument(str(path))
    try:
        return [pdf[i].get_textpage().get_text_range() for i in range(len(pdf))]
    finally:
        pdf.close()


# --------------------------------------------------------------------------
# Scanned PDFs (Pillow)
# --------------------------------------------------------------------------


@lru_cache(maxsize=None)
def _font(size: int, bold: bool = False) -> ImageFont.FreeTypeFont:
    # Bitstream Vera ships with reportlab, so the scans look the same on every machine; its word
    # spacing is wide enough for RapidOCR to keep most spaces (Pillow's default font is not).
    return ImageFont.truetype(str(VERA_DIR / ("VeraBd.ttf" if bold else "Vera.ttf")), size)


def _wrap(text: str, font: ImageFont.FreeTypeFont, width: int) -> list[str]:
    """Greedy word wrap; a no-break space keeps an answer span on one line, where OCR reads it whole."""
    lines: list[str] = []
    for word in text.split(" "):
        word = word.replace(NBSP, " ")
        if lines and font.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] += f" {word}"
        else:
            lines.append(word)
    return lines


class ScanPage:
    """A blank sheet at SCAN_DPI that remembers every string drawn on it."""

    def __init__(self) -> None:
        self.image = Image.new("L", SCAN_SIZE, 255)
        self.draw = ImageDraw.Draw(self.image)
        self.lines: list[str] = []

    def text(self, x: float, y: float, text: str, size: int = 26, bold: bool = False,
             anchor: str = "la") -> None:
        self.draw.text((x, y), text, fill=SCAN_INK, font=_font(size, bold), anchor=anchor)
        self.lines.append(text)

    def paragraph(self, y: float, text: str, size: int = 26) -> float:
        """Draw wrapped text between the margins and return the y below it."""
        for line in _wrap(text, _font(size), SCAN_SIZE[0] - 2 * SCAN_MARGIN):
            self.text(SCAN_MARGIN, y, line, size)
            y += round(size * 1.5)
        return y + round(size * 0.6)

    def rule(self, y: float, width: int = 2) -> None:
        self.draw.line([(SCAN_MARGIN, y), (SCAN_SIZE[0] - SCAN_MARGIN, y)], fill=SCAN_INK, width=width)


def _age(image: Image.Image, angle: float, seed: int) -> Image.Image:
    """Make a clean render look like it went through an office scanner."""
    rng = np.random.default_rng(seed)
    image = image.rotate(angle, resample=Image.Resampling.BICUBIC, fillcolor=255)
    image = image.filter(ImageFilter.GaussianBlur(0.7))
    # Scanned paper is never pure white nor toner pure black.
    pixels = np.asarray(image, dtype=np.float32) * 0.9 + 14
    pixels += rng.normal(0.0, 5.0, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8), "L")


def scan_document(out: Path, name: str, description: str, title: str, pages: list[ScanPage],
                  angles: Sequence[float], seed: int, *, creator: str, date: time.struct_time) -> Document:
    """Age the pages into an image-only PDF out/name; `creator` and `date` are stamped in its metadata (fixed, or
    Pillow would stamp the current time)."""
    path = out / name
    images = [_age(page.image, angle, seed + i) for i, (page, angle) in enumerate(zip(pages, angles))]
    images[0].save(path, "PDF", save_all=True, append_images=images[1:], resolution=SCAN_DPI,
                   quality=SCAN_JPEG_QUALITY, title=title, producer=creator, creationDate=date, modDate=date)
    layer = text_layer(path)
    if len(layer) != len(pages) or any(len(text.strip()) >= MAX_SCAN_TEXT_CHARS for text in layer):
        raise AssertionError(f"{name}: a scanned PDF must be image-only")
    return Document(name, description, True, [" ".join(p.lines) for p in pages], [p.lines for p in pages])


# --------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------


def normalize(text: str) -> str:
    """Collapse whitespace, so a span that wraps onto the next line still matches."""
    return " ".join(text.split())


STOPWORDS = frozenset(
    "a an and are as at be by did do does for from has have how in is it its much many must of on or put "
    "should show than that the to was were what when which who whom will with".split()
)


def content_terms(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower())) - STOPWORDS


def check_answer(q: Question, doc: Document) -> None:
    """Fail loudly unless the answer is on the question's page and the question does not give it away."""
    if doc.scanned != (q.kind == "scan"):
        raise AssertionError(f"{q.question!r}: kind {q.kind} does not match the document type")
    if not 1 <= q.page <= len(doc.pages):
        raise AssertionError(f"{q.question!r}: {q.document} has no page {q.page}")
    if doc.scanned:
        # OCR reads line by line, so a span split over two drawn lines would be unreadable as a span.
        if not any(q.answer in line for line in doc.lines[q.page - 1]):
            raise AssertionError(f"{q.question!r}: {q.answer!r} is not on one line of page {q.page}")
    elif normalize(q.answer) not in normalize(doc.pages[q.page - 1]):
        raise AssertionError(f"{q.question!r}: {q.answer!r} is not on page {q.page} of {q.document}")
    if q.answer.lower() in q.question.lower():
        raise AssertionError(f"{q.question!r}: the question gives the answer away")


# --------------------------------------------------------------------------
# Building and the command line
# --------------------------------------------------------------------------


def build_documents(out: Path, builders: Sequence[Callable[[Path], Document]],
                    expected_pages: dict[str, int]) -> list[Document]:
    """Run every builder into `out`; fail if a document's page count drifted from the one its questions cite."""
    out.mkdir(parents=True, exist_ok=True)
    docs = [build(out) for build in builders]
    pages = {d.name: len(d.pages) for d in docs}
    if pages != expected_pages:
        raise AssertionError(f"page layout drifted (a page or column overflowed?): {pages}")
    return docs


def document_table(docs: Sequence[Document]) -> str:
    """The README's Markdown table of the corpus files."""
    rows = "\n".join(
        f"| `{d.name}` | {len(d.pages)} | {'scan, no text layer' if d.scanned else 'text layer'} | {d.description} |"
        for d in docs
    )
    return f"| File | Pages | Kind | Contents |\n|---|---|---|---|\n{rows}"


def cli(doc: str, default_out: Path, build_corpus: Callable[[Path], list[Document]],
         argv: Sequence[str] | None = None) -> None:
    """A generator's command line: `--out DIR`, then one line per document written."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--out", type=Path, default=default_out, help=f"output folder (default: {default_out})")
    args = parser.parse_args(argv)
    for document in build_corpus(args.out):
        print(f"{document.name}: {len(document.pages)} pages, {(args.out / document.name).stat().st_size:,} bytes")
