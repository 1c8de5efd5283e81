"""A run as one self-contained HTML page: the question, every step, each image as sent, the evidence and the answer.

The file needs nothing outside itself: images are data URLs (JPEG for page views and page overviews, which keeps a
trace to a few hundred KiB a page; PNG for crops, which are small and often read closely). A Content-Security-Policy
allows only inline styles and data-URL images, so the page runs no script and fetches nothing even if it were
edited. All text (the question, the model's messages, document text in the evidence) is escaped: it is untrusted;
the page is `trace.html.jinja`, rendered by Jinja2 with autoescaping.

Each image is shown twice when it is a crop: as the model saw it (`render_seen` re-makes the exact pixels from the
full page), and as an overview of the page with the cropped region outlined, so a reader sees where the model looked.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import jinja2
from markupsafe import Markup
from PIL import Image, ImageDraw

from pagelens.graph.policies.interface import ShownImage
from pagelens.graph.run import RunResult
from pagelens.tools.imagefiles import EncodedImage
from pagelens.tools.regions import render_seen

# The overview is for a reader's screen, never sent to a model, so it is sized here and not by smart_resize.
OVERVIEW_WIDTH = 900
BOX_COLOUR = (230, 0, 0)
BOX_LINE = 3

_STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 2rem auto; max-width: 1400px; padding: 0 1rem; color: #222; }
h1 { font-size: 1.3rem; } h2 { font-size: 1.1rem; margin-top: 2rem; border-bottom: 1px solid #ccc; }
h3 { font-size: 1rem; margin: 0 0 .4rem; }
pre { white-space: pre-wrap; word-break: break-word; background: #f6f6f6; padding: .6rem; border-radius: 4px; }
dl.fields { display: grid; grid-template-columns: max-content 1fr; gap: .15rem 1rem; margin: .4rem 0; }
dl.fields dt { font-weight: 600; } dl.fields dd { margin: 0; white-space: pre-wrap; word-break: break-word; }
table { border-collapse: collapse; width: 100%; } td, th { border: 1px solid #ddd; padding: .3rem .5rem;
  text-align: left; vertical-align: top; }
li.step { margin-bottom: 1.5rem; }
figure { margin: .8rem 0; } figcaption { font-size: .9rem; color: #555; margin-bottom: .3rem; }
.pair { display: flex; gap: 1rem; align-items: flex-start; flex-wrap: wrap; }
figure img { max-width: 100%; height: auto; border: 1px solid #bbb; }
.status-answered { color: #176117; } .status-insufficient { color: #8a5a00; }
.status-no_answer, .status-timeout { color: #a11; }
"""

_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
# Autoescaped: the question, the model's messages and page text are untrusted, and none can open a tag.
_TEMPLATE = jinja2.Environment(loader=jinja2.PackageLoader("pagelens.graph", "."), autoescape=True,
                               undefined=jinja2.StrictUndefined).get_template("trace.html.jinja")


def _box_text(values: list[float]) -> str:
    return ", ".join(f"{v:g}" for v in values)


class _Pictures:
    """Page images and their overviews, each made once per page however many images show that page."""

    def __init__(self, page_image: Callable[[str], Image.Image]):
        self._page_image = page_image
        self._pages: dict[str, Image.Image] = {}
        self._overviews: dict[str, Image.Image] = {}

    def page(self, page_id: str) -> Image.Image:
        if page_id not in self._pages:
            self._pages[page_id] = self._page_image(page_id)
        return self._pages[page_id]

    def overview(self, page_id: str) -> Image.Image:
        if page_id not in self._overviews:
            page = self.page(page_id)
            if page.width > OVERVIEW_WIDTH:
                height = max(1, round(page.height * OVERVIEW_WIDTH / page.width))
                page = page.resize((OVERVIEW_WIDTH, height), Image.Resampling.LANCZOS, reducing_gap=2.0)
            self._overviews[page_id] = page.convert("RGB")
        return self._overviews[page_id]

    def figure(self, image: ShownImage) -> dict:
        """What the template shows of one image: as sent, and for a crop the page overview with its box."""
        seen = render_seen(self.page(image.page_id), image.seen)
        figure = {"index": image.index, "page_id": image.page_id, "document": image.document,
                  "page_number": image.page_number, "width": seen.width, "height": seen.height,
                  "src": EncodedImage.encode(seen, "png" if image.is_crop else "jpeg").data_url,
                  "caption": f"[{image.index}] {image.document} p.{image.page_number}"}
        if image.region is None:
            figure["caption"] += f", whole page, sent at {seen.width}x{seen.height}"
            return figure
        box = image.region.box.rounded().as_list()
        figure["caption"] += f", crop of page box [{_box_text(box)}], sent at {seen.width}x{seen.height}"
        overview = self.overview(image.page_id).copy()
        normalized = image.region.normalized
        outline = [normalized.x1 * overview.width, normalized.y1 * overview.height,
                   normalized.x2 * overview.width, normalized.y2 * overview.height]
        ImageDraw.Draw(overview).rectangle(outline, outline=BOX_COLOUR, width=BOX_LINE)
        figure.update(box=_box_text(box), normalized=_box_text([round(v, 6) for v in normalized.as_list()]),
                      overview={"width": overview.width, "height": overview.height,
                                "src": EncodedImage.encode(overview, "jpeg").data_url})
        return figure


def _fields(items: list[tuple[str, object]]) -> list[tuple[str, str]]:
    return [(key, value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)) for key, value in items]


def _evidence(result: RunResult) -> list[dict]:
    return [{"image": item.image, "document": item.document, "page_number": item.page_number, "text": item.text,
             "box": _box_text(item.region.box.rounded().as_list()) if item.region is not None else "whole page"}
            for item in result.evidence]


def _steps(result: RunResult, pictures: _Pictures) -> tuple[list[dict], list[dict]]:
    """Each step with its figures, and the figures of images no step added."""
    by_index = {image.index: image for image in result.images}
    placed: set[int] = set()
    steps = []
    for step in result.steps:
        figures = []
        for index in step.images:
            if index in by_index:
                figures.append(pictures.figure(by_index[index]))
                placed.add(index)
            else:
                # A trace is for finding what went wrong, so an inconsistent record is shown rather than fatal.
                figures.append({"missing": index})
        steps.append({"turn": step.turn, "kind": step.kind, "text": step.text, "figures": figures,
                      "fields": _fields(list(step.detail.items())) if step.detail else []})
    unplaced = [pictures.figure(image) for image in result.images if image.index not in placed]
    return steps, unplaced


def _parts(content: object) -> list[dict]:
    if isinstance(content, str):
        return [{"text": content}]
    parts = []
    for part in content if isinstance(content, list | tuple) else [content]:
        if isinstance(part, dict) and part.get("type") == "text":
            parts.append({"text": str(part.get("text", ""))})
        elif isinstance(part, dict) and part.get("type") == "image":
            parts.append({"image": str(part.get("image"))})
        else:
            parts.append({"text": json.dumps(part, ensure_ascii=False, default=str)})
    return parts


def render_trace(result: RunResult, page_image: Callable[[str], Image.Image]) -> str:
    """The trace of `result` as an HTML string; `page_image(page_id)` returns the full stored page image."""
    steps, unplaced = _steps(result, _Pictures(page_image))
    header = _fields([("protocol", result.protocol), ("policy", result.policy)]
                     + ([("thread", result.thread_id)] if result.thread_id else []))
    conversation = [{"role": str(m.get("role", "")), "title": str(m.get("role", "?")),
                     "parts": _parts(m.get("content", ""))} for m in result.messages]
    return _TEMPLATE.render(r=result, header=header, evidence=_evidence(result), steps=steps, unplaced=unplaced,
                            conversation=conversation, style=Markup(_STYLE), csp=Markup(_CSP)) + "\n"


def write_trace(result: RunResult, page_image: Callable[[str], Image.Image], path: Path) -> Path:
    """Write the trace of `result` to `path` (parents created, replaced atomically) and return the path.

    The caller passes `lambda pid: load_page_image(store.page(pid).image_path)`; each page is loaded once.
    """
    path = Path(path)
    text = render_trace(result, page_image)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=path.parent, prefix=f".{path.name}.",
                                         suffix=".tmp", delete=False)
    try:
        with handle:
            handle.write(text)
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise
    return path
