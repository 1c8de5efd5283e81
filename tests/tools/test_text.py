"""Text with boxes: the PDF text layer in rendered pixels (every /Rotate, a crop box offset), OCR, reading order."""

from __future__ import annotations

import difflib
from pathlib import Path

import numpy as np
import pypdfium2
import pytest
from PIL import Image, ImageDraw, ImageFont

from pagelens.tools.corpus.text import (
    MIN_TEXT_LAYER_CHARS,
    OcrEngine,
    page_text,
    pdf_text_lines,
    rapidocr,
    visible_char_count,
)
from pagelens.tools.boxes import Box
from pagelens.tools.pages import TextLine

SCALE = 100 / 72
FOUR_PAGES = "004-pdflatex-4-pages_pdflatex-4-pages.pdf"
ROTATED = "015-arabic_habibi-rotated.pdf"  # pages with /Rotate 90, 180, 270, then 0


def ink(page: pypdfium2.PdfPage) -> np.ndarray:
    """Dark pixels of the page as `render(scale=SCALE)` draws it."""
    return np.asarray(page.render(scale=SCALE).to_pil().convert("L")) < 128


def covered(lines: list[TextLine], shape: tuple[int, ...]) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    for line in lines:
        box = line.box
        mask[int(box.y1) : int(np.ceil(box.y2)) + 1, int(box.x1) : int(np.ceil(box.x2)) + 1] = True
    return mask


def assert_boxes_cover_ink(lines: list[TextLine], dark: np.ndarray, share: float = 0.99) -> None:
    height, width = dark.shape
    assert lines
    for line in lines:
        box = line.box
        assert 0 <= box.x1 < box.x2 <= width and 0 <= box.y1 < box.y2 <= height, line
        assert dark[int(box.y1) : int(np.ceil(box.y2)), int(box.x1) : int(np.ceil(box.x2))].any(), line
    assert (dark & covered(lines, dark.shape)).sum() >= share * dark.sum()


def test_text_layer_reads_the_page(realworld: Path) -> None:
    page = pypdfium2.PdfDocument(realworld / FOUR_PAGES)[0]
    lines = pdf_text_lines(page, SCALE)
    assert len(lines) > 30
    assert visible_char_count(lines) >= 3000
    assert lines[0].text == "Hello, here is some text without a meaning. This text should show what a printed text"
    text = page_text(lines)
    assert "“Huardest gefburn”? Kjift – not at all!" in text
    assert all(line.confidence == 1.0 for line in lines)


@pytest.mark.parametrize(
    ("name", "index", "rotation"),
    [(FOUR_PAGES, 0, 0), ("026-latex-multicolumn_multicolumn.pdf", 0, 0),
     (ROTATED, 0, 90), (ROTATED, 1, 180), (ROTATED, 2, 270), (ROTATED, 3, 0)],
)
def test_boxes_land_on_the_rendered_text(realworld: Path, name: str, index: int, rotation: int) -> None:
    page = pypdfium2.PdfDocument(realworld / name)[index]
    assert page.get_rotation() == rotation
    assert_boxes_cover_ink(pdf_text_lines(page, SCALE), ink(page))


def test_rotated_page_turns_its_lines(realworld: Path) -> None:
    pdf = pypdfium2.PdfDocument(realworld / ROTATED)
    lines = {rotation: pdf_text_lines(pdf[index], SCALE) for index, rotation in enumerate((90, 180, 270, 0))}
    habibi = {rotation: next(line.box for line in found if line.text == "habibi") for rotation, found in lines.items()}
    assert habibi[0].width > 3 * habibi[0].height and habibi[180].width > 3 * habibi[180].height
    assert habibi[90].height > 3 * habibi[90].width and habibi[270].height > 3 * habibi[270].width
    # Turned half a page, the word moves from the top left corner to the bottom right one.
    height, width = ink(pdf[1]).shape
    assert habibi[0].x2 < 0.25 * width and habibi[0].y2 < 0.25 * height
    assert habibi[180].x1 > 0.75 * width and habibi[180].y1 > 0.75 * height
    texts = {rotation: sorted(line.text for line in found) for rotation, found in lines.items()}
    assert texts[90] == texts[180] == texts[270] == texts[0]


@pytest.mark.parametrize("rotation", [0, 90, 180, 270])
def test_crop_box_offset_and_rotation(realworld: Path, rotation: int) -> None:
    pdf = pypdfium2.PdfDocument(realworld / FOUR_PAGES)
    pdf[0].set_cropbox(80, 300, 400, 700)
    pdf[0].set_rotation(rotation)
    page = pdf[0]  # reloaded, so PDFium picks up the new boxes
    lines = pdf_text_lines(page, SCALE)
    assert_boxes_cover_ink(lines, ink(page))
    # Glyphs outside the crop box are not drawn, so they are not read either.
    full = pdf_text_lines(pypdfium2.PdfDocument(realworld / FOUR_PAGES)[0], SCALE)
    assert visible_char_count(lines) < 0.7 * visible_char_count(full)
    assert max(len(line.text) for line in lines) < 75


def test_glyph_runs_join_into_lines_and_split_at_hyphenated_breaks(realworld: Path) -> None:
    # Google Docs places every glyph on its own; PDFium carries a hyphenated word over to the next line.
    google_doc = pypdfium2.PdfDocument(realworld / "011-google-doc-document_google-doc-document.pdf")
    google = pdf_text_lines(google_doc[0], SCALE)
    assert "Beautiful is better than ugly." in [line.text for line in google]
    columns = pdf_text_lines(pypdfium2.PdfDocument(realworld / "026-latex-multicolumn_multicolumn.pdf")[0], SCALE)
    texts = [line.text for line in columns]
    assert "Lorem ipsum dolor sit amet, consectetuer adip-" in texts
    assert all(line.text.isprintable() and line.text == line.text.strip() for line in google + columns)


@pytest.mark.parametrize(
    "name",
    ["019-grayscale-image_grayscale-image.pdf", "023-cmyk-image_cmyk-image.pdf",
     # Its only text, "Background", lies outside the 4 x 4 pt page.
     "007-imagemagick-images_imagemagick-images.pdf"],
)
def test_image_only_pages_have_no_text_layer(realworld: Path, name: str) -> None:
    for page in pypdfium2.PdfDocument(realworld / name):
        assert visible_char_count(pdf_text_lines(page, SCALE)) < MIN_TEXT_LAYER_CHARS


def test_page_text_reads_rows_top_down_then_left_to_right() -> None:
    lines = [
        TextLine("world", Box(220, 12, 300, 38)),
        TextLine("second line", Box(10, 60, 200, 80)),
        TextLine("Hello", Box(10, 10, 200, 40)),
        TextLine("third", Box(10, 100, 100, 120)),
    ]
    assert page_text(lines) == "Hello world\nsecond line\nthird"
    assert page_text([]) == ""
    assert visible_char_count(lines) == len("Helloworldsecondlinethird")


@pytest.mark.slow
def test_ocr_reads_drawn_words_where_they_were_drawn(capsys: pytest.CaptureFixture[str]) -> None:
    font = ImageFont.load_default(size=40)
    image = Image.new("RGB", (900, 320), "white")
    draw = ImageDraw.Draw(image)
    written = {"Quarterly revenue grew": (40, 40), "Lisbon office 2024": (40, 180)}
    for text, origin in written.items():
        draw.text(origin, text, fill="black", font=font)

    lines = OcrEngine().lines(image)

    assert capsys.readouterr().out == ""
    assert len(lines) == len(written)
    for line, (text, origin) in zip(sorted(lines, key=lambda line: line.box.y1), written.items()):
        assert line.text.replace(" ", "").lower() == text.replace(" ", "").lower()
        x1, y1, x2, y2 = draw.textbbox(origin, text, font=font)
        assert abs(line.box.x1 - x1) < 15 and abs(line.box.x2 - x2) < 15
        assert line.box.y1 < (y1 + y2) / 2 < line.box.y2
        assert 0.5 < line.confidence <= 1.0


@pytest.mark.slow
def test_openvino_reads_what_rapidocr_reads(sample: Path) -> None:
    pdf = pypdfium2.PdfDocument(sample / "memo_relocation_scan.pdf")
    try:
        image = pdf[0].render(scale=2).to_pil().convert("RGB")
    finally:
        pdf.close()

    ours = OcrEngine(threads=2).lines(image)
    shipped, _ = rapidocr(threads=2)(image)

    # What is stable across x86-64 CPUs: the lines found, their boxes and their characters. OpenVINO and ONNX
    # Runtime pick other kernels on other instruction sets, and the recogniser's space class sits near its
    # threshold between words ("BELLMORE COUNTYPUBLIC" on one CPU, "BELLMORECOUNTYPUBLIC" on another), so spaces
    # are not compared, and one borderline character in a line is allowed.
    assert len(ours) >= 15 and len(ours) == len(shipped)
    exact = 0
    for line, (points, text, score) in zip(ours, shipped):
        mine, theirs = "".join(line.text.split()), "".join(text.split())
        exact += mine == theirs
        assert difflib.SequenceMatcher(None, mine, theirs).ratio() >= 0.9, (line.text, text)
        assert abs(line.box.x1 - min(x for x, _ in points)) <= 2 and abs(line.box.y2 - max(y for _, y in points)) <= 2
        assert abs(line.confidence - score) < 0.05  # a mean over characters, spaces included
    assert exact >= 0.9 * len(ours)


def test_two_column_pages_read_column_by_column(realworld: Path) -> None:
    pdf = pypdfium2.PdfDocument(realworld / "026-latex-multicolumn_multicolumn.pdf")
    try:
        text = page_text(pdf_text_lines(pdf[0], SCALE))
    finally:
        pdf.close()
    lines = text.splitlines()
    # The title spans both columns and comes first; the left column's first sentence reads on unbroken.
    assert lines[0] == "Two-Column Document with Lorem Ipsum"
    first = lines.index("This is a sample document with two columns filled")
    assert lines[first + 1] == "with Lorem Ipsum text."
    assert lines[first + 2].startswith("Lorem ipsum dolor sit amet")


def test_tables_still_read_row_by_row() -> None:
    cells = [["Region", "Q1", "Q2", "Q3"], ["Europe", "3.4", "3.8", "4.2"], ["Asia", "2.2", "2.5", "2.9"],
             ["Total", "5.6", "6.3", "7.1"]]
    lines = [TextLine(cell, Box(40 + 160 * j, 30 * i, 40 + 160 * j + (90 if j == 0 else 40), 30 * i + 20))
             for i, row in enumerate(cells) for j, cell in enumerate(row)]
    assert page_text(lines).splitlines() == [" ".join(row) for row in cells]


def test_a_table_with_narrow_columns_is_not_taken_for_two_columns_of_text() -> None:
    # A label column and a last column that each fill their own narrow side of a clear middle: no line is
    # column-wide, so this is not running text in two columns, and each row reads across.
    cells = [["Plant", "Output", "Staff"], ["Avon", "12", "40"], ["Site", "Staff", "Output"], ["Avon", "7", "30"]]
    widths = [(50, 60, 40), (40, 20, 20), (50, 40, 60), (40, 20, 20)]
    lines = [TextLine(cell, Box(10 + 95 * j, 20 * i, 10 + 95 * j + widths[i][j], 20 * i + 10))
             for i, row in enumerate(cells) for j, cell in enumerate(row)]
    assert page_text(lines).splitlines() == [" ".join(row) for row in cells]
