"""Run traces: a self-contained HTML page with the images as sent, the crop outlined on its page, text escaped."""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from io import BytesIO
from pathlib import Path

import numpy as np
import pypdfium2 as pdfium
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from pagelens.graph.policies.interface import ShownImage
from pagelens.graph.run import Evidence, RunResult, Step
from pagelens.graph.trace import OVERVIEW_WIDTH, render_trace, write_trace
from pagelens.tools.boxes import Box
from pagelens.tools.regions import crop, fit_for_model, render_seen

PDF = Path(__file__).resolve().parents[2] / "servers" / "sample" / "northwind_annual_report_2023.pdf"
DOCUMENT = "northwind_annual_report_2023.pdf"
PAGE_1, PAGE_2 = "0123456789ab-p1", "0123456789ab-p2"
HOSTILE = '<script>document.title="pwned"</script><img src=x onerror="alert(1)">'


@pytest.fixture(scope="module")
def pages() -> dict[str, Image.Image]:
    pdf = pdfium.PdfDocument(PDF)
    try:
        return {PAGE_1: pdf[0].render(scale=2).to_pil().convert("RGB"),
                PAGE_2: pdf[1].render(scale=2).to_pil().convert("RGB")}
    finally:
        pdf.close()


def make_run(pages: dict[str, Image.Image], answer: str = "55.0 million US dollars") -> RunResult:
    """Page 1 shown whole, a crop of what the model saw, a crop of that crop, then page 2 shown whole."""
    _, seen_1 = fit_for_model(pages[PAGE_1], PAGE_1)
    first = crop(pages[PAGE_1], PAGE_1, Box(60, 180, 480, 330), seen=seen_1)
    second = crop(pages[PAGE_1], PAGE_1, Box(10, 10, 300, 120), seen=first.seen)
    _, seen_2 = fit_for_model(pages[PAGE_2], PAGE_2)
    images = (
        ShownImage(1, PAGE_1, DOCUMENT, 1, seen_1),
        ShownImage(2, PAGE_1, DOCUMENT, 1, first.seen, first.region),
        ShownImage(3, PAGE_1, DOCUMENT, 1, second.seen, second.region),
        ShownImage(4, PAGE_2, DOCUMENT, 2, seen_2),
    )
    steps = (
        Step(1, "search", "<think>find revenue</think><search>revenue 2023</search>", {"query": "revenue 2023"}, (1,)),
        Step(2, "crop", "<bbox>[60, 180, 480, 330]</bbox>", {"box": [60, 180, 480, 330]}, (2,)),
        Step(3, "crop", "<bbox>[10, 10, 300, 120]</bbox>", {"box": [10, 10, 300, 120]}, (3,)),
        Step(4, "search", "<search>employees</search>", {"query": "employees"}, (4,)),
        Step(5, "answer", f"<evidence>[3]: revenue</evidence><answer>{answer}</answer>", {}),
    )
    evidence = (Evidence(3, PAGE_1, DOCUMENT, 1, second.region, f"Revenue reached 55.0 million {HOSTILE}"),)
    messages = (
        {"role": "user", "content": [{"type": "text", "text": "Question: what was revenue in 2023?"}]},
        {"role": "assistant", "content": steps[0].text},
        {"role": "user", "content": [{"type": "image", "image": 1}]},
    )
    return RunResult("What was revenue in 2023?", answer, "answered", "answered with one citation", evidence,
                     steps, images, messages, "pagelens", "extractive")


class Tags(HTMLParser):
    """Every start tag with its attributes, and the text inside elements of a given class."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: dict[str, list[str]] = {}
        self._open: list[str | None] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        attributes = dict(attrs)
        self.tags.append((tag, attributes))
        if tag not in ("img", "meta", "br"):
            self._open.append(attributes.get("class"))
            if attributes.get("class"):
                self.text.setdefault(attributes["class"], []).append("")

    def handle_endtag(self, tag: str) -> None:
        if tag not in ("img", "meta", "br") and self._open:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        for name in reversed(self._open):
            if name:
                self.text[name][-1] += data
                break

    def images(self, kind: str) -> dict[int, dict]:
        return {int(a["data-index"]): a for tag, a in self.tags if tag == "img" and a.get("class") == kind}


def parse(html: str) -> Tags:
    tags = Tags()
    tags.feed(html)
    return tags


def decode(src: str) -> Image.Image:
    header, payload = src.split(",", 1)
    assert header in ("data:image/png;base64", "data:image/jpeg;base64")
    return Image.open(BytesIO(base64.b64decode(payload))).convert("RGB")


def test_each_image_is_the_image_sent(pages, tmp_path):
    run = make_run(pages)
    path = write_trace(run, pages.__getitem__, tmp_path / "traces" / "run.html")
    shown = parse(path.read_text(encoding="utf-8")).images("shown")
    assert sorted(shown) == [1, 2, 3, 4]
    for image in run.images:
        attributes = shown[image.index]
        expected = np.asarray(render_seen(pages[image.page_id], image.seen), dtype=int)
        got = np.asarray(decode(attributes["src"]), dtype=int)
        assert got.shape == expected.shape == (image.seen.height, image.seen.width, 3)
        assert (int(attributes["width"]), int(attributes["height"])) == (image.seen.width, image.seen.height)
        if image.is_crop:
            assert attributes["src"].startswith("data:image/png")
            assert np.array_equal(got, expected)
        else:  # page views are JPEG q95 4:4:4: near, not equal
            assert attributes["src"].startswith("data:image/jpeg")
            assert np.abs(got - expected).mean() < 1.5


def test_file_is_self_contained(pages, tmp_path):
    html = write_trace(make_run(pages), pages.__getitem__, tmp_path / "run.html").read_text(encoding="utf-8")
    for tag, attributes in parse(html).tags:
        for name in ("src", "href"):
            value = attributes.get(name)
            assert value is None or value.startswith(("data:image/", "#")), (tag, name, value[:80])
    assert "default-src 'none'; img-src data:" in html


def test_each_page_is_loaded_once(pages, tmp_path):
    calls: list[str] = []

    def page_image(page_id: str) -> Image.Image:
        calls.append(page_id)
        return pages[page_id]

    write_trace(make_run(pages), page_image, tmp_path / "run.html")
    assert sorted(calls) == [PAGE_1, PAGE_2]


def test_crop_is_outlined_where_it_lies_on_the_page(pages, tmp_path):
    run = make_run(pages)
    boxes = parse(write_trace(run, pages.__getitem__, tmp_path / "run.html").read_text("utf-8")).images(
        "page-with-box")
    assert sorted(boxes) == [2, 3]  # only crops get an overview
    for image in run.images[1:3]:
        attributes = boxes[image.index]
        overview = np.asarray(decode(attributes["src"]), dtype=int)
        height, width, _ = overview.shape
        assert width == OVERVIEW_WIDTH and height == round(pages[PAGE_1].height * OVERVIEW_WIDTH / pages[PAGE_1].width)
        normalized = image.region.normalized
        assert [float(v) for v in attributes["data-normalized"].split(",")] == pytest.approx(
            normalized.as_list(), abs=1e-6)
        # The page has no red ink, so red pixels are the outline: its extent must be the region, scaled.
        red = (overview[..., 0] > 150) & (overview[..., 1] < 90) & (overview[..., 2] < 90)
        rows, columns = np.nonzero(red)
        expected = [normalized.x1 * width, normalized.y1 * height, normalized.x2 * width, normalized.y2 * height]
        assert [columns.min(), rows.min(), columns.max(), rows.max()] == pytest.approx(expected, abs=2.5)
        # ... and it is a rectangle: every edge is drawn along its length, the inside is left alone.
        x1, y1, x2, y2 = (round(v) for v in expected)
        assert red[y1 + 1, x1 + 3:x2 - 3].mean() > 0.95 and red[y2 - 1, x1 + 3:x2 - 3].mean() > 0.95
        assert red[y1 + 3:y2 - 3, x1 + 1].mean() > 0.95 and red[y1 + 3:y2 - 3, x2 - 1].mean() > 0.95
        assert not red[y1 + 6:y2 - 6, x1 + 6:x2 - 6].any()


def test_untrusted_text_is_inert(pages, tmp_path):
    run = make_run(pages, answer=f"55.0 million {HOSTILE}")
    html = write_trace(run, pages.__getitem__, tmp_path / "run.html").read_text(encoding="utf-8")
    tags = parse(html)
    assert not [tag for tag, _ in tags.tags if tag == "script"]
    assert not [a for _, a in tags.tags if any(name.startswith("on") for name in a)]
    assert tags.text["answer"] == [f"55.0 million {HOSTILE}"]
    assert f"Revenue reached 55.0 million {HOSTILE}" in "".join(tags.text.get("evidence", []))
    assert "&lt;script&gt;" in html


def test_steps_show_the_model_text_and_what_they_did(pages, tmp_path):
    run = make_run(pages)
    tags = parse(write_trace(run, pages.__getitem__, tmp_path / "run.html").read_text("utf-8"))
    assert tags.text["model-text"] == [step.text for step in run.steps]
    assert [a["data-kind"] for tag, a in tags.tags if a.get("class") == "step"] == [s.kind for s in run.steps]
    assert tags.text["question"] == [run.question]
    assert tags.text["status status-answered"] == ["answered"]


printable = st.text(st.characters(blacklist_categories=("Cs", "Cc")) | st.sampled_from("<>&\"'\n\t"), max_size=60)


@settings(max_examples=60, deadline=None)
@given(question=printable, answer=printable, model=printable, evidence=printable)
def test_any_text_comes_back_as_written(question, answer, model, evidence):
    run = RunResult(question, answer, "answered", "", (Evidence(1, PAGE_1, DOCUMENT, 1, None, evidence),),
                    (Step(1, "answer", model, {"reason": model}),), (), (), "pagelens", "p")
    tags = parse(render_trace(run, lambda page_id: pytest.fail("no image to load")))
    assert {tag for tag, _ in tags.tags} <= {"html", "head", "meta", "title", "style", "body", "header", "h1", "h2",
                                             "h3", "p", "dl", "dt", "dd", "section", "table", "thead", "tbody", "tr",
                                             "th", "td", "a", "ol", "li", "pre", "details", "summary"}
    assert tags.text["question"] == [question]
    assert tags.text["answer"] == [answer]
    assert tags.text.get("model-text", [""]) == [model]


# --- the trace in a real browser -------------------------------------------------------------------------------

# Injected into a copy of the trace, ahead of its Content-Security-Policy (which would block it anywhere later):
# after load, each image records the size it decoded to; a broken image decodes to 0x0.
PROBE = ("<script>addEventListener('load', () => { for (const image of document.images) "
         "image.dataset.decoded = image.naturalWidth + 'x' + image.naturalHeight; });</script>")


def chromium() -> str:
    found = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    if found is None:
        if os.environ.get("PAGELENS_REQUIRE_CHROMIUM"):
            pytest.fail("PAGELENS_REQUIRE_CHROMIUM is set but chromium is not installed; apt-get install -y chromium")
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    return found


def test_images_decode_in_a_browser(pages, tmp_path):
    browser = chromium()
    run = make_run(pages, answer=f"55.0 million {HOSTILE}")
    html = write_trace(run, pages.__getitem__, tmp_path / "run.html").read_text(encoding="utf-8")
    probed = tmp_path / "probed.html"
    probed.write_text(html.replace("<head>", "<head>" + PROBE, 1), encoding="utf-8")
    dom = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", probed.as_uri()],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    images = parse(dom)
    decoded = [(a.get("class"), a.get("data-decoded"), f"{a['width']}x{a['height']}")
               for tag, a in images.tags if tag == "img"]
    assert len(decoded) == 6  # four images as sent, two page overviews
    for kind, size, declared in decoded:
        assert size == declared, (kind, size, declared)
    # The probe is the only script: the hostile answer and evidence stayed text, and nothing changed the title.
    assert len(re.findall(r"<script", dom)) == 1
    assert f"<title>pagelens trace: {run.question}</title>" in dom
