"""Text with boxes for one page: the PDF text layer where a page has one, OCR otherwise.

Every box is in the pixels of the page image as `PdfPage.render(scale=scale)` draws it, the page's
/Rotate and crop box included, so a line's box can be cropped straight out of the stored page image.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pypdfium2
import pypdfium2.raw as pdfium_c

from pagelens.tools.corpus.spacing import respace
from pagelens.tools.openvino_cpu import compile_for_cpu, infer
from pagelens.tools.boxes import Box
from pagelens.tools.pages import TextLine

if TYPE_CHECKING:
    from PIL import Image
    from rapidocr_onnxruntime import RapidOCR

MIN_TEXT_LAYER_CHARS = 20
"""A page whose text layer has fewer visible characters than this counts as having none and is OCR'd."""

# Two glyphs on one PDFium line further apart than this many font heights (the loose glyph box) start a
# new run. Measured on the sample corpus: word gaps reach 1.7 in a stretched justified line, table cells
# range from 1.35 to 3.3 and form fields reach 8, and a hyphenated word that PDFium carries over to the
# next line jumps by tens. Keeping every line of running text whole matters more for snippets than
# splitting every table cell, which `page_text` reads across a row anyway.
_MAX_GAP_HEIGHTS = 2.0

# The page's width is scanned for a gutter in this many strips.
GUTTER_BINS = 200

# PDFium writes a line-end hyphen as U+0002 (FPDFText_IsHyphen); it is a visible "-" on the page.
_PDFIUM_HYPHEN = "\x02"


@dataclass
class _Run:
    """Glyphs that sit together on one line, with their union box in PDF user space (y grows up)."""

    chars: list[str] = field(default_factory=list)
    left: float = math.inf
    bottom: float = math.inf
    right: float = -math.inf
    top: float = -math.inf

    @property
    def has_box(self) -> bool:
        return self.left <= self.right

    def add(self, char: str, box: tuple[float, float, float, float]) -> None:
        left, bottom, right, top = box
        self.chars.append(char)
        self.left, self.bottom = min(self.left, left), min(self.bottom, bottom)
        self.right, self.top = max(self.right, right), max(self.top, top)

    @property
    def text(self) -> str:
        return _clean_text("".join(self.chars))


def _clean_text(text: str) -> str:
    """Collapse every kind of whitespace to single spaces and drop lone UTF-16 surrogates PDFium may emit."""
    text = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return " ".join(text.split())


def _gap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """How far apart two glyph boxes (left, bottom, right, top) lie: the larger of the x and y gaps."""
    dx = max(b[0] - a[2], a[0] - b[2], 0.0)
    dy = max(b[1] - a[3], a[1] - b[3], 0.0)
    return max(dx, dy)


def _char_at(textpage: pypdfium2.PdfTextPage, index: int) -> str:
    """The character at `index`: "\\n" for a line break, "" for an invisible control code."""
    code = pdfium_c.FPDFText_GetUnicode(textpage, index)
    if code > 0x10FFFF:
        return ""
    char = chr(code)
    if char in "\r\n":
        return "\n"
    if char == _PDFIUM_HYPHEN:
        return "-"
    if char.isspace():
        return " "
    return char if char.isprintable() or 0xD800 <= code <= 0xDFFF else ""


def _page_space_runs(textpage: pypdfium2.PdfTextPage, visible: tuple[float, float, float, float]) -> list[_Run]:
    """Walk PDFium's characters in its reading order, splitting at its line breaks and at wide gaps.

    Glyphs whose centre lies outside `visible` (the page's crop box) are left out: they are not drawn.
    """
    visible_left, visible_bottom, visible_right, visible_top = visible
    runs = [_Run()]
    previous_box, previous_height = (0.0, 0.0, 0.0, 0.0), 0.0
    for index in range(textpage.count_chars()):
        char = _char_at(textpage, index)
        run = runs[-1]
        if char == "\n":
            runs.append(_Run())
            continue
        if char in ("", " "):
            # Whitespace keeps words apart but has no ink, so its box (often empty) must not grow the run.
            if char and run.chars:
                run.chars.append(char)
            continue
        try:
            box = textpage.get_charbox(index)
            loose = textpage.get_charbox(index, loose=True)
        except pypdfium2.PdfiumError:
            continue
        x, y = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        if not (visible_left <= x <= visible_right and visible_bottom <= y <= visible_top):
            continue
        height = max(loose[3] - loose[1], box[3] - box[1])
        # Measured from the previous glyph, not the run: a run spanning a line's width is close to
        # everything on the next line, including a hyphenated word that PDFium carries over to it.
        if run.has_box and _gap(previous_box, box) > _MAX_GAP_HEIGHTS * max(height, previous_height):
            run = _Run()
            runs.append(run)
        run.add(char, box)
        previous_box, previous_height = box, height
    return [run for run in runs if run.has_box]


def _to_pixels(run: _Run, converter: pypdfium2.PdfPosConv, width: int, height: int) -> Box | None:
    """The run's box in rendered pixels, clipped to the image; None when it lies outside the visible page."""
    corners = [converter.to_bitmap(x, y) for x in (run.left, run.right) for y in (run.bottom, run.top)]
    xs = [x for x, _ in corners]
    ys = [y for _, y in corners]
    x1, y1 = max(min(xs), 0), max(min(ys), 0)
    x2, y2 = min(max(xs), width), min(max(ys), height)
    if x1 >= width or y1 >= height or x2 <= 0 or y2 <= 0:
        return None
    # PDFium rounds to whole pixels, so a hairline (a rule of dashes, a period) may collapse; keep 1 px.
    return Box(x1, y1, max(x2, min(x1 + 1, width)), max(y2, min(y1 + 1, height)))


def pdf_text_lines(page: pypdfium2.PdfPage, scale: float) -> list[TextLine]:
    """The page's PDF text layer as lines with boxes in the pixels of `page.render(scale=scale)`.

    Characters come from PDFium's text page in its reading order and are grouped into runs at PDFium's
    line breaks and at gaps wider than two font heights (most table cells, form fields). Boxes go through
    PDFium's own page-to-device mapping with the renderer's canvas, so /Rotate 90/180/270 and a crop box
    offset land exactly where the rendered page shows the text. Right-to-left text stays in PDFium's order.
    """
    # The same canvas `PdfPage.render` sets up: the rotated page size scaled and rounded up, rotation 0.
    width = math.ceil(page.get_width() * scale)
    height = math.ceil(page.get_height() * scale)
    converter = pypdfium2.PdfPosConv(page, (0, 0, width, height, 0))
    textpage = page.get_textpage()
    try:
        runs = _page_space_runs(textpage, page.get_bbox())
    finally:
        textpage.close()
    lines = []
    for run in runs:
        text = run.text
        box = _to_pixels(run, converter, width, height)
        if text and box is not None:
            lines.append(TextLine(text, box))
    return lines


def visible_char_count(lines: list[TextLine]) -> int:
    """How many non-whitespace characters the lines hold."""
    return sum(len("".join(line.text.split())) for line in lines)


def page_text(lines: list[TextLine]) -> str:
    """The page's text in reading order: column by column (see `reading_sections`), and within one, rows top to
    bottom, lines within a row left to right.

    Lines whose vertical extents overlap by at least half the shorter one share a row, so words OCR
    splits into pieces, or table cells, read across.
    """
    return "\n".join(_rows_text(section) for section in reading_sections(lines) if section)


def _rows_text(lines: list[TextLine]) -> str:
    rows: list[list[TextLine]] = []
    row_top = row_bottom = 0.0
    for line in sorted(lines, key=lambda line: (line.box.y1 + line.box.y2) / 2):
        overlap = min(row_bottom, line.box.y2) - max(row_top, line.box.y1)
        shorter = min(row_bottom - row_top, line.box.height)
        if rows and overlap >= 0.5 * shorter:
            rows[-1].append(line)
            row_top, row_bottom = min(row_top, line.box.y1), max(row_bottom, line.box.y2)
        else:
            rows.append([line])
            row_top, row_bottom = line.box.y1, line.box.y2
    return "\n".join(" ".join(line.text for line in sorted(row, key=lambda line: line.box.x1)) for row in rows)


def reading_sections(lines: list[TextLine]) -> list[list[TextLine]]:
    """Runs of lines to read one after another: a two-column page becomes its left column, then its right
    column, with lines that span the gutter (titles, full-width figures) read in place between them.

    The gutter is the widest vertical strip in the middle half of the page that at most one in ten column-wide
    lines (a quarter to 60% of the text's width) crosses. A table also has such strips, so the split needs full
    columns: column-wide lines on each side, filling most of their side, as running text does and table cells do
    not.
    """
    if len(lines) < 6:
        return [lines]
    left = min(line.box.x1 for line in lines)
    right = max(line.box.x2 for line in lines)
    width = right - left
    # Column-like lines only: short ones (centred titles, a column's last line) may cross the gutter; so may one
    # column-wide line in ten (a centred running footer, a caption).
    def column_wide(line: TextLine) -> bool:
        return 0.25 * width <= line.box.width < 0.6 * width

    narrow = [(line.box.x1, line.box.x2) for line in lines if column_wide(line)]
    allowed = len(narrow) // 10
    step = width / GUTTER_BINS
    crossing = [sum(x1 < left + (i + 0.5) * step < x2 for x1, x2 in narrow) for i in range(GUTTER_BINS)]
    gutter: tuple[float, float] | None = None
    start = None
    for i in range(GUTTER_BINS // 4, 3 * GUTTER_BINS // 4 + 1):
        clear = i < 3 * GUTTER_BINS // 4 and crossing[i] <= allowed
        if clear and start is None:
            start = i
        elif not clear and start is not None:
            if gutter is None or (i - start) * step > gutter[1] - gutter[0]:
                gutter = (left + start * step, left + i * step)
            start = None
    if gutter is None:
        return [lines]
    # The gutter's edges: the nearest column-like line ends and starts around the clear strip.
    gutter = (max((x2 for x1, x2 in narrow if x2 <= gutter[1]), default=gutter[0]),
              min((x1 for x1, x2 in narrow if x1 >= gutter[0]), default=gutter[1]))
    if gutter[1] <= gutter[0]:
        return [lines]
    lefts = [line for line in lines if line.box.x2 <= gutter[0]]
    rights = [line for line in lines if line.box.x1 >= gutter[1]]

    def fills(side: list[TextLine], span: float) -> bool:
        widths = sorted(line.box.width for line in side)
        return sum(map(column_wide, side)) >= 3 and widths[len(widths) // 2] >= 0.6 * span

    if not (fills(lefts, gutter[0] - left) and fills(rights, right - gutter[1])):
        return [lines]
    sections: list[list[TextLine]] = []
    column_left: list[TextLine] = []
    column_right: list[TextLine] = []
    for line in sorted(lines, key=lambda line: line.box.y1):
        if line.box.x2 <= gutter[0]:
            column_left.append(line)
        elif line.box.x1 >= gutter[1]:
            column_right.append(line)
        else:
            sections += [column_left, column_right, [line]]
            column_left, column_right = [], []
    return sections + [column_left, column_right]


class OcrEngine:
    """OCR with RapidOCR's PP-OCRv4 models, its own pre- and post-processing, inference on OpenVINO.

    RapidOCR's shipped models read Chinese and English (Latin letters, digits, punctuation); other
    scripts come back as noise or nothing. The models run on OpenVINO rather than RapidOCR's ONNX Runtime
    sessions: on two AVX2 cores the recogniser, which holds most of a page's time, runs in half the time
    there (its hard-swish activations stay unfused in ONNX Runtime), and the text read is the same (a test
    compares both). A sparse page takes about a second, a dense one about three. RapidOCR logs only to
    stderr, and this class turns that down to errors, so nothing reaches stdout (an MCP server's channel).
    """

    def __init__(self, threads: int | None = None) -> None:
        self._threads = threads or len(os.sched_getaffinity(0))
        self._engine: RapidOCR | None = None
        self._lock = threading.Lock()

    def _load(self) -> RapidOCR:
        with self._lock:
            if self._engine is None:
                self._engine = _openvino_rapidocr(self._threads)
            return self._engine

    def lines(self, image: Image.Image) -> list[TextLine]:
        """The text lines RapidOCR finds, each boxed by the axis-aligned bounds of its quadrilateral, with the
        spaces its recogniser drops between English words put back (`spacing.respace`)."""
        result, _ = self._load()(_as_rgb(image))
        lines = []
        for points, text, score in result or []:
            text = respace(_clean_text(text))
            if not text:
                continue
            xs = [float(x) for x, _ in points]
            ys = [float(y) for _, y in points]
            lines.append(TextLine(text, Box(min(xs), min(ys), max(xs), max(ys)), float(score)))
        return lines


def rapidocr(threads: int) -> RapidOCR:
    """RapidOCR as shipped (ONNX Runtime sessions), quiet on stderr."""
    from rapidocr_onnxruntime import RapidOCR
    from rapidocr_onnxruntime.utils import get_logger

    # RapidOCR's cached loggers log at DEBUG to stderr; quieting them before the constructor first asks for
    # them keeps it from resetting the level.
    for name in ("RapidOCR", "OrtInferSession"):
        get_logger(name).setLevel(logging.ERROR)
    # Left alone, ONNX Runtime sizes its pool by the machine's physical cores, which can be more than the
    # CPUs this process may run on (an affinity mask, a container's cpuset).
    return RapidOCR(intra_op_num_threads=threads)


def _openvino_rapidocr(threads: int) -> RapidOCR:
    """RapidOCR with its detector, angle classifier and recogniser sessions swapped for OpenVINO ones."""
    engine = rapidocr(threads)
    stages = [(engine.text_det, "infer"), (engine.text_cls, "infer"), (engine.text_rec, "session")]
    for stage, attribute in stages:
        session = getattr(stage, attribute, None)
        path = getattr(getattr(session, "session", None), "_model_path", None)
        if path is None:
            raise RuntimeError(
                "this rapidocr-onnxruntime no longer exposes its ONNX sessions where pagelens swaps in OpenVINO; "
                "install rapidocr-onnxruntime 1.4 (`pip install 'rapidocr-onnxruntime>=1.4,<1.5'`)."
            )
        setattr(stage, attribute, _OpenVinoSession(path, threads))
    return engine


class _OpenVinoSession:
    """Called like RapidOCR's ONNX session: one input array in, the list of outputs back."""

    def __init__(self, model_path: str, threads: int) -> None:
        self._model = compile_for_cpu(model_path, threads)

    def __call__(self, inputs):
        return [infer(self._model, [inputs])]


def _as_rgb(image: Image.Image) -> Image.Image:
    """An RGB copy of the image, transparent parts on white (RapidOCR would read them as black)."""
    from PIL import Image

    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, "white")
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return image.convert("RGB")
