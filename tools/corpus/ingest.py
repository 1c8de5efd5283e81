"""`pagelens index`: files to stored pages, text and vectors, resumable and atomic per document.

For each document: mark it pending, render and store its page images, take each page's text (the PDF text
layer, or OCR when a page has fewer than 20 visible characters), cut it into passages, embed them page by page
and write them to Milvus in bounded batches, then commit the document and its pages to the catalogue in one
transaction. A run killed anywhere leaves either the committed document or a pending one whose vectors and
images the next open deletes, so running again converges on the state of an uninterrupted run.

Rendering and text extraction run on a worker thread (PDFium, Pillow and OpenVINO release the GIL) while the main
thread embeds, so both cores work.
"""

from __future__ import annotations

import queue
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from tqdm import tqdm

from pagelens.errors import PageLensError
from pagelens.tools.corpus.catalog import NewPage, PassageRow
from pagelens.tools.corpus.files import SourceFile, discover, file_digest, render_pages
from pagelens.tools.corpus.store import PageStore
from pagelens.tools.corpus.text import MIN_TEXT_LAYER_CHARS, OcrEngine, page_text, pdf_text_lines, visible_char_count
from pagelens.tools.imagefiles import save_page_image, save_thumbnail
from pagelens.tools.pages import TextLine, page_id_for
from pagelens.tools.retrieval.embedders import TextEmbedder, make_embedder
from pagelens.tools.retrieval.lexical import passage_vector
from pagelens.tools.retrieval.passages import split_passages
from pagelens.tools.retrieval.vectors import VectorRow

WRITE_BATCH = 256
T = TypeVar("T")


@dataclass
class IndexReport:
    pages_indexed: int = 0
    documents_indexed: int = 0
    unchanged: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        text = (
            f"Indexed {self.pages_indexed} page(s) from {self.documents_indexed} document(s); "
            f"{self.unchanged} unchanged; {len(self.failures)} failed."
        )
        if self.failures:
            text += " Failed: " + ", ".join(path for path, _ in self.failures) + "."
        return text


@dataclass
class _PageWork:
    page_number: int
    width: int
    height: int
    text_source: str
    lines: list[TextLine]


def index_paths(
    store: PageStore,
    paths: list[Path],
    *,
    dpi: int | None = None,
    password: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    embedder: TextEmbedder | None = None,
    ocr: OcrEngine | None = None,
) -> IndexReport:
    """Index files and folders into the store; failures are reported per file, never raised.

    `embedder` and `ocr` let a long-lived caller reuse loaded models across runs."""
    dpi = dpi or store.settings.dpi
    log = log or (lambda line: print(line, file=sys.stderr))
    embedder = embedder or make_embedder(store.retrieval.embedder)
    ocr = ocr or OcrEngine()
    report = IndexReport()
    sources, missing = discover(paths)
    for path, reason in missing:
        report.failures.append((str(path), reason))
        log(f"skipped {path}: {reason}")
    bar = tqdm(sources, unit="file", disable=not progress or not sys.stderr.isatty(), file=sys.stderr)
    for source in bar:
        bar.set_postfix_str(f"{report.pages_indexed} pages")
        try:
            pages = _index_file(store, source, dpi, password, embedder, ocr, bar)
        except PageLensError as exc:
            report.failures.append((str(source.path), str(exc)))
            log(f"skipped {source.path}: {exc}")
            continue
        except Exception as exc:  # a corrupt file can break a parser in any way; skip it, keep going
            reason = f"{type(exc).__name__}: {exc}"
            report.failures.append((str(source.path), reason))
            log(f"skipped {source.path}: {reason}")
            continue
        if pages is None:
            report.unchanged += 1
        else:
            report.documents_indexed += 1
            report.pages_indexed += pages
    bar.close()
    if report.documents_indexed and store.use_memory_index():
        store.memory_index()
    return report


def _index_file(store: PageStore, source: SourceFile, dpi: int, password: str | None,
                embedder: TextEmbedder, ocr: OcrEngine, bar: tqdm) -> int | None:
    """Index one file; None when it is already stored as it is."""
    document_id, size = file_digest(source.path)
    path = str(source.path)
    previous = store.catalog.document_at(path)
    existing = store.catalog.document(document_id)
    if existing is not None and existing[3] == dpi:
        store.catalog.add_source(document_id, path)
        _drop_if_orphaned(store, previous, document_id)
        return None
    name = existing[1] if existing is not None else source.name
    store.catalog.mark_pending(document_id)
    try:
        store.vectors.delete_document(document_id)
        pages, passages = _store_pages(store, source, document_id, dpi, password, embedder, ocr, bar)
        store.vectors.flush()
    except BaseException:
        store.vectors.delete_document(document_id)
        store.catalog.clear_pending(document_id)
        if existing is None or existing[3] != dpi:
            store.remove_images(document_id, dpi)
        raise
    store.catalog.commit_document(document_id=document_id, name=name, kind=source.kind, dpi=dpi, size=size,
                                  source=path, pages=pages, passages=passages)
    if existing is not None and existing[3] != dpi:
        store.remove_images(document_id, existing[3])
    _drop_if_orphaned(store, previous, document_id)
    return len(pages)


def _drop_if_orphaned(store: PageStore, previous: str | None, current: str) -> None:
    """A path that now holds other content no longer vouches for its old document."""
    if previous is not None and previous != current and not store.catalog.sources(previous):
        store.delete_document(previous)


def _store_pages(store: PageStore, source: SourceFile, document_id: str, dpi: int, password: str | None,
                 embedder: TextEmbedder, ocr: OcrEngine, bar: tqdm) -> tuple[list[NewPage], list[PassageRow]]:
    pages: list[NewPage] = []
    passages: list[PassageRow] = []
    unwritten: list[VectorRow] = []

    def produce() -> Iterator[_PageWork]:
        for rendered in render_pages(source, dpi, password):
            number = rendered.page_number
            image = rendered.image
            save_page_image(image, store.image_path(document_id, dpi, number))
            save_thumbnail(image, store.thumbnail_path(document_id, dpi, number), store.settings.thumbnail_side)
            lines: list[TextLine] = []
            text_source = "none"
            if rendered.pdf_page is not None:
                lines = pdf_text_lines(rendered.pdf_page, rendered.scale)
                text_source = "pdf"
            if visible_char_count(lines) < MIN_TEXT_LAYER_CHARS:
                lines = ocr.lines(image)
                text_source = "ocr" if lines else "none"
            yield _PageWork(number, image.width, image.height, text_source, lines)

    count_tokens = _token_counter(embedder)
    for work in _prefetch(produce(), 4):
        page_id = page_id_for(document_id, work.page_number)
        pages.append(NewPage(page_id, work.page_number, work.width, work.height, work.text_source, work.lines))
        texts = split_passages(page_text(work.lines).splitlines(), count_tokens, store.retrieval.passage_tokens)
        rows = []
        for j, text in enumerate(texts):
            weights = passage_vector(text)
            if weights:  # else nothing a search could match; Milvus also refuses an empty sparse vector
                rows.append((PassageRow(f"{page_id}:{j}", page_id, text, tuple(weights)), weights))
        if rows:
            # Embedding each page as it arrives keeps the worker rendering the next ones meanwhile; Milvus
            # writes are batched, as each call has a fixed cost.
            dense = embedder.embed_passages([row.text for row, _ in rows])
            passages += [row for row, _ in rows]
            unwritten += [VectorRow(row.pk, page_id, document_id, vec, weights)
                          for (row, weights), vec in zip(rows, dense)]
        if len(unwritten) >= WRITE_BATCH:
            store.vectors.insert(unwritten)
            unwritten = []
        bar.set_postfix_str(f"{source.name} p{work.page_number}")
    if unwritten:
        store.vectors.insert(unwritten)
    return pages, passages


def _token_counter(embedder: TextEmbedder) -> Callable[[list[str]], list[int]]:
    tokenizer = getattr(embedder, "tokenizer", None)
    if tokenizer is None:
        return lambda lines: [embedder.count_tokens(line) for line in lines]
    return lambda lines: [len(ids) for ids in tokenizer()(lines, add_special_tokens=False)["input_ids"]] if lines else []


def _prefetch(items: Iterator[T], size: int) -> Iterator[T]:
    """Run an iterator on a worker thread, at most `size` items ahead; its exceptions re-raise here."""
    buffer: queue.Queue = queue.Queue(maxsize=size)
    done = object()
    stop = threading.Event()

    def work() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                buffer.put((item, None))
            buffer.put((done, None))
        except BaseException as exc:  # handed to the consumer, which re-raises it
            buffer.put((done, exc))

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        while True:
            item, error = buffer.get()
            if error is not None:
                raise error
            if item is done:
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                buffer.get_nowait()
            except queue.Empty:
                thread.join(0.05)
