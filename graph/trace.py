"""A run as one self-contained HTML page: the question, every step, each image as sent, the evidence and the answer.

The file needs nothing outside itself: images are data URLs (JPEG for page views and page overviews, which keeps a
trace to a few hundred KiB a page; PNG for crops, which are small and often read closely). A Content-Security-Policy
allows only inline styles and data-URL images, so the page runs no script and fetches nothing even if it were
edited. All text (the question, the model's messages, document text in the evidence) is escaped: it is untrusted.

Each image is shown twice when it is a crop: as the model saw it (`render_seen` re-makes the exact pixels from the
full page), and as an overview of the page with the cropped region outlined, so a reader sees where the model looked.
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
from collections.abc import Callable
from html import escape
from pathlib import Path

from PIL import Image, ImageDraw

from pagelens.graph.policy import ShownImage
from pagelens.graph.run import RunResult
from pagelens.tools.imagefiles import encode_image
from pagelens.tools.regions import render_seen

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


def _data_url(image: Image.Image, format: str) -> str:
    mime = "image/png" if format == "png" else "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(encode_image(image, format)).decode('ascii')}"


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

    def figure(self, image: ShownImage) -> str:
        seen = render_seen(self.page(image.page_id), image.seen)
        caption = f"[{image.index}] {image.document} p.{image.page_number}"
        shown = (
            f'<img class="shown" data-index="{image.index}" data-page-id="{escape(image.page_id)}" '
            f'width="{seen.width}" height="{seen.height}" alt="image {image.index} as sent to the model" '
            f'src="{_data_url(seen, "png" if image.is_crop else "jpeg")}">'
        )
        if image.region is None:
            caption += f", whole page, sent at {seen.width}x{seen.height}"
            return f'<figure id="image-{image.index}"><figcaption>{escape(caption)}</figcaption>{shown}</figure>'

        box = image.region.box.rounded().as_list()
        caption += f", crop of page box [{_box_text(box)}], sent at {seen.width}x{seen.height}"
        overview = self.overview(image.page_id).copy()
        normalized = image.region.normalized
        outline = [normalized.x1 * overview.width, normalized.y1 * overview.height,
                   normalized.x2 * overview.width, normalized.y2 * overview.height]
        ImageDraw.Draw(overview).rectangle(outline, outline=BOX_COLOUR, width=BOX_LINE)
        page_with_box = (
            f'<img class="page-with-box" data-index="{image.index}" data-box="{_box_text(box)}" '
            f'data-normalized="{_box_text([round(v, 6) for v in normalized.as_list()])}" '
            f'width="{overview.width}" height="{overview.height}" '
            f'alt="page {image.page_number} of {escape(image.document)} with the crop outlined" '
            f'src="{_data_url(overview, "jpeg")}">'
        )
        return (f'<figure id="image-{image.index}"><figcaption>{escape(caption)}</figcaption>'
                f'<div class="pair">{shown}{page_with_box}</div></figure>')


def _fields(items: list[tuple[str, object]]) -> str:
    rows = []
    for key, value in items:
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        rows.append(f"<dt>{escape(key)}</dt><dd>{escape(text)}</dd>")
    return f'<dl class="fields">{"".join(rows)}</dl>'


def _answer(result: RunResult) -> str:
    answer = (f'<p class="answer">{escape(result.answer)}</p>' if result.answer is not None
              else '<p class="answer none">(no answer)</p>')
    return (f'<section id="answer"><h2>Answer</h2>'
            f'<p class="status status-{escape(result.status)}">{escape(result.status)}</p>'
            f'{answer}<p class="message">{escape(result.message)}</p></section>')


def _evidence(result: RunResult) -> str:
    if not result.evidence:
        return '<section id="evidence"><h2>Evidence</h2><p>No evidence cited.</p></section>'
    rows = []
    for item in result.evidence:
        box = _box_text(item.region.box.rounded().as_list()) if item.region is not None else "whole page"
        rows.append(
            f'<tr class="evidence" data-index="{item.image}"><td><a href="#image-{item.image}">[{item.image}]</a></td>'
            f"<td>{escape(item.document)} p.{item.page_number}</td><td>{escape(box)}</td>"
            f"<td>{escape(item.text)}</td></tr>"
        )
    return ('<section id="evidence"><h2>Evidence</h2><table><thead><tr><th>image</th><th>page</th><th>box</th>'
            f'<th>text</th></tr></thead><tbody>{"".join(rows)}</tbody></table></section>')


def _steps(result: RunResult, pictures: _Pictures) -> str:
    by_index = {image.index: image for image in result.images}
    placed: set[int] = set()
    items = []
    for step in result.steps:
        parts = [f"<h3>Turn {step.turn} · {escape(step.kind)}</h3>"]
        if step.detail:
            parts.append(_fields(list(step.detail.items())))
        if step.text:
            parts.append(f'<pre class="model-text">{escape(step.text)}</pre>')
        for index in step.images:
            if index in by_index:
                parts.append(pictures.figure(by_index[index]))
                placed.add(index)
            else:
                # A trace is for finding what went wrong, so an inconsistent record is shown rather than fatal.
                parts.append(f'<p class="missing">Image {index} is not among the run\'s images.</p>')
        items.append(f'<li class="step" data-kind="{escape(step.kind)}">{"".join(parts)}</li>')
    unplaced = [pictures.figure(image) for image in result.images if image.index not in placed]
    other = f'<h3>Images no step added</h3>{"".join(unplaced)}' if unplaced else ""
    return f'<section id="steps"><h2>Steps</h2><ol>{"".join(items)}</ol>{other}</section>'


def _content(content: object) -> str:
    if isinstance(content, str):
        return f"<pre>{escape(content)}</pre>"
    parts = []
    for part in content if isinstance(content, list | tuple) else [content]:
        if isinstance(part, dict) and part.get("type") == "text":
            parts.append(f"<pre>{escape(str(part.get('text', '')))}</pre>")
        elif isinstance(part, dict) and part.get("type") == "image":
            index = escape(str(part.get("image")))
            parts.append(f'<p><a href="#image-{index}">[image {index}]</a></p>')
        else:
            parts.append(f"<pre>{escape(json.dumps(part, ensure_ascii=False, default=str))}</pre>")
    return "".join(parts)


def _conversation(result: RunResult) -> str:
    turns = [
        f'<div class="message role-{escape(str(m.get("role", "")))}"><h3>{escape(str(m.get("role", "?")))}</h3>'
        f'{_content(m.get("content", ""))}</div>'
        for m in result.messages
    ]
    return (f'<section id="conversation"><h2>Conversation</h2><details><summary>{len(turns)} messages</summary>'
            f'{"".join(turns)}</details></section>')


def render_trace(result: RunResult, page_image: Callable[[str], Image.Image]) -> str:
    """The trace of `result` as an HTML string; `page_image(page_id)` returns the full stored page image."""
    pictures = _Pictures(page_image)
    header = _fields([("protocol", result.protocol), ("policy", result.policy)]
                     + ([("thread", result.thread_id)] if result.thread_id else []))
    body = (f'<header><h1>Question</h1><p class="question">{escape(result.question)}</p>{header}</header>'
            f"{_answer(result)}{_evidence(result)}{_steps(result, pictures)}{_conversation(result)}")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        f"<title>pagelens trace: {escape(result.question)}</title><style>{_STYLE}</style></head>"
        f"<body>{body}</body></html>\n"
    )


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
