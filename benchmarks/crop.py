"""Time crop + zoom on a real text page at 144 and 300 dpi, in memory and from the stored file to PNG bytes.

Run: `python benchmarks/crop.py`. The page comes from the real-world corpus in `tests/data/realworld`. Goals, at
144 dpi: crop + zoom in memory p50 <= 15 ms; stored file -> crop -> PNG bytes p50 <= 40 ms.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from pagelens.tools.imagefiles import PAGE_SUFFIX, encode_image, load_page_image, save_page_image
from pagelens.tools.boxes import Box
from pagelens.tools.regions import crop

PDF_NAME = "026-latex-multicolumn_multicolumn.pdf"
DPIS = (144, 300)
GOAL_DPI = 144
GOAL_IN_MEMORY_MS = 15.0
GOAL_END_TO_END_MS = 40.0
ROUNDS = 30
# A text line, a paragraph and a quarter page, as fractions of the page (x1, y1, x2, y2).
BOXES = {
    "line": (0.10, 0.300, 0.50, 0.315),
    "paragraph": (0.10, 0.300, 0.50, 0.450),
    "quarter": (0.00, 0.000, 0.50, 0.500),
}


REALWORLD = Path(__file__).resolve().parents[1] / "tests" / "data" / "realworld"


def render_page(dpi: int) -> tuple[Image.Image, str]:
    """The first page of the corpus PDF at `dpi`."""
    import pypdfium2

    document = pypdfium2.PdfDocument(REALWORLD / PDF_NAME)
    try:
        return document[0].render(scale=dpi / 72).to_pil().convert("RGB"), f"{PDF_NAME} page 1"
    finally:
        document.close()


def page_boxes(width: int, height: int) -> list[Box]:
    return [Box(x1 * width, y1 * height, x2 * width, y2 * height) for x1, y1, x2, y2 in BOXES.values()]


def time_ms(step: Callable[[Box], object], boxes: list[Box]) -> list[float]:
    """Milliseconds per call, over ROUNDS passes through every box, after one untimed warm-up pass."""
    for box in boxes:
        step(box)
    samples = []
    for _ in range(ROUNDS):
        for box in boxes:
            start = time.perf_counter()
            step(box)
            samples.append((time.perf_counter() - start) * 1000)
    return samples


def p99(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[98]


def main() -> None:
    rows = []
    source = ""
    with tempfile.TemporaryDirectory() as folder:
        for dpi in DPIS:
            page, source = render_page(dpi)
            path = Path(folder) / f"page-{dpi}{PAGE_SUFFIX}"
            save_page_image(page, path)
            boxes = page_boxes(*page.size)
            in_memory = time_ms(lambda box: crop(page, "bench-p1", box), boxes)
            end_to_end = time_ms(lambda box: encode_image(crop(load_page_image(path), "bench-p1", box).image), boxes)
            size = f"{page.width}x{page.height}"
            rows.append((dpi, size, "crop + zoom, in memory", in_memory, GOAL_IN_MEMORY_MS))
            rows.append((dpi, size, "file -> crop + zoom -> PNG", end_to_end, GOAL_END_TO_END_MS))

    print(f"page: {source}; boxes: {', '.join(BOXES)}; {ROUNDS} rounds each")
    print(f"{'dpi':>4}  {'page px':<10} {'step':<27} {'p50 ms':>7} {'p99 ms':>7}  goal")
    for dpi, size, step, samples, goal in rows:
        p50 = statistics.median(samples)
        if dpi == GOAL_DPI:
            verdict = f"p50 <= {goal:g} ms: {'met' if p50 <= goal else 'MISSED'}"
        else:
            verdict = f"(goals are for {GOAL_DPI} dpi)"
        print(f"{dpi:>4}  {size:<10} {step:<27} {p50:>7.1f} {p99(samples):>7.1f}  {verdict}")


if __name__ == "__main__":
    main()
