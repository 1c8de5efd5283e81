"""`pagelens index`: files to stored pages, text and vectors, resumable and atomic per document.

For each document: begin a new version (pending, owned by this process), render and store its page images,
take each page's text (the PDF text layer, or OCR when a page has fewer than 20 visible characters), cut it into
passages, embed them page by page and write them to Milvus in bounded batches, then commit the document and its
pages to the catalogue in one transaction, which swaps it in for the version it replaces; that one is deleted
after. Until the commit the committed version stays whole and searchable, so a re-index (a new dpi) that fails
loses nothing. A run killed anywhere leaves the committed version and pending ones whose vectors and images the
next open deletes, so running again converges on the state of an uninterrupted run.

Rendering and text extraction run on a worker thread (PDFium, Pillow and OpenVINO release the GIL) while the main
thread embeds, so both cores work. Two files are begun (marked pending) at once, so the worker goes on to the next
file while the main thread embeds and commits the current one; a file with the same content as one in flight
waits for it to commit, then counts as unchanged.
"""

from __future__ import annotations

import queue
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np
from tqdm import tqdm

from pagelens.errors import PageLensError
from pagelens.tools.corpus.catalog import NewPage, PassageRow
from pagelens.tools.corpus.files import SourceFile, discover, file_digest, printable, render_pages
from pagelens.tools.corpus.store import PageStore
from pagelens.tools.corpus.text import MIN_TEXT_LAYER_CHARS, OcrEngine, page_text, pdf_text_lines, visible_char_count
from pagelens.tools.imagefiles import save_page_image, save_thumbnail
from pagelens.tools.pages import TextLine, page_id_for
from pagelens.tools.retrieval.embedders import TextEmbedder, make_embedder
from pagelens.tools.retrieval.lexical import AVG_PAGE_TERMS, passage_vector
from pagelens.tools.retrieval.passages import in_view, split_passages
from pagelens.tools.retrieval.vectors import VectorRow, page_row_pk
from pagelens.tools.retrieval.vision import pool_tokens

if TYPE_CHECKING:
    from PIL import Image

WRITE_BATCH = 256
# Page images embedded in one call for a vision retriever: the embedder batches them within its memory bound;
# this bounds how many rendered pages wait in memory for it.
PAGE_IMAGE_BATCH = 8
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
            text += " Failed: " + ", ".join(printable(path) for path, _ in self.failures) + "."
        return text


@dataclass
class _PageWork:
    page_number: int
    width: int
    height: int
    text_source: str
    lines: list[TextLine]
    image: Image.Image | None = None
    """The page image, kept for a vision retriever to embed (None without one)."""


@dataclass
class _Job:
    """A file being indexed: marked pending in the catalogue, its pages produced on the worker thread."""

    source: SourceFile
    document_id: str
    size: int
    name: str
    version: str
    previous: str | None
    """The document this file's path held before, if other content: dropped after the commit if orphaned."""
    replaced: str | None = None
    pages: list[NewPage] = field(default_factory=list)
    passages: list[PassageRow] = field(default_factory=list)
    unwritten: list[VectorRow] = field(default_factory=list)
    unembedded: list[tuple[str, Image.Image]] = field(default_factory=list)
    """(page_id, image) of pages whose image vectors are still to make, for a vision retriever."""
    error: BaseException | None = None


def index_paths(
    store: PageStore,
    paths: list[Path],
    *,
    dpi: int | None = None,
    password: str | None = None,
    max_pages: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    embedder: TextEmbedder | None = None,
    ocr: OcrEngine | None = None,
) -> IndexReport:
    """Index files and folders into the store; failures are reported per file, never raised.

    `dpi`, `password` (for protected PDFs) and `max_pages` (a file with more is skipped) default to the store's
    settings; `embedder` and `ocr` let a long-lived caller reuse loaded models across runs."""
    dpi = dpi or store.settings.dpi
    password = password or store.settings.pdf_password or None
    max_pages = max_pages or store.settings.max_pages
    log = log or (lambda line: print(line, file=sys.stderr))
    embedder = embedder or make_embedder(store.retrieval.embedder)
    ocr = ocr or OcrEngine()
    report = IndexReport()
    sources, problems = discover(paths, exclude=store.home)
    for path, reason in problems:
        report.failures.append((str(path), reason))
        log(printable(f"skipped {path}: {reason}"))
    bar = tqdm(total=len(sources), unit="file", disable=not progress or not sys.stderr.isatty(), file=sys.stderr)
    waiting = deque(sources)
    active: deque[_Job] = deque()  # begun, in the order the worker produces them
    to_produce: queue.Queue[_Job | None] = queue.Queue()

    def fail(source: SourceFile, exc: BaseException) -> None:
        reason = str(exc) if isinstance(exc, PageLensError) else f"{type(exc).__name__}: {exc}"
        report.failures.append((str(source.path), reason))
        log(printable(f"skipped {source.path}: {reason}"))
        bar.update(1)

    def begin_more() -> None:
        # Two files begun at once: the worker renders the next while this thread embeds and commits the current.
        while waiting and len(active) < 2:
            source = waiting.popleft()
            try:
                digest = file_digest(source.path)
                if any(job.document_id == digest[0] for job in active):
                    waiting.appendleft(source)  # the same content from another path: wait until that one commits
                    return
                job = _begin(store, source, digest, dpi)
            except Exception as exc:  # a file that cannot be read or hashed
                fail(source, exc)
                continue
            if job is None:
                report.unchanged += 1
                bar.update(1)
                continue
            active.append(job)
            to_produce.put(job)

    def produce() -> Iterator[tuple[_Job, _PageWork | Exception | None]]:
        while (job := to_produce.get()) is not None:
            try:
                for work in _produce_pages(store, job, dpi, password, max_pages, ocr):
                    yield job, work
            except Exception as exc:  # a corrupt file can break a parser in any way; skip it, keep going
                yield job, exc
                continue
            yield job, None

    count_tokens = _token_counter(embedder)
    items = _prefetch(produce(), 4)
    try:
        begin_more()
        while active:
            job, item = next(items)
            if isinstance(item, _PageWork):
                if job.error is None:
                    try:
                        _add_page(store, job, item, embedder, count_tokens)
                    except Exception as exc:
                        job.error = exc
                    bar.set_postfix_str(f"{job.source.name} p{item.page_number}")
                continue
            error = item or job.error
            try:
                if error is not None:
                    raise error
                _commit(store, job, dpi)
            except Exception as exc:
                active.popleft()
                _abandon(store, job)
                fail(job.source, exc)
            else:
                active.popleft()
                try:
                    _tidy(store, job)
                except Exception as exc:
                    fail(job.source, exc)
                else:
                    report.documents_indexed += 1
                    report.pages_indexed += len(job.pages)
                    bar.update(1)
            bar.set_postfix_str(f"{report.pages_indexed} pages")
            begin_more()
    finally:
        to_produce.put(None)
        items.close()
        bar.close()
        # Files still begun here were cut short by an exception (the loop above ends with none); the worker
        # has stopped, so no image of theirs is written after this clean-up.
        for job in active:
            _abandon(store, job)
    if report.documents_indexed and store.use_memory_index():
        store.memory_index()
        if store.page_vectors is not None:
            store.vision_index()
    return report


def _begin(store: PageStore, source: SourceFile, digest: tuple[str, int], dpi: int) -> _Job | None:
    """Mark the file's document pending, or return None when it is already stored as it is."""
    document_id, size = digest
    path = str(source.path)
    previous = store.catalog.document_at(path)
    existing = store.catalog.document(document_id)
    if existing is not None and existing[3] == dpi:
        store.catalog.add_source(document_id, path)
        _drop_if_orphaned(store, previous, document_id)
        return None
    # The committed version (at another dpi) stays as it is until this one commits.
    return _Job(source, document_id, size, existing[1] if existing is not None else source.name,
                store.begin_version(document_id), previous)


def _commit(store: PageStore, job: _Job, dpi: int) -> None:
    if job.unwritten:
        store.vectors.insert(job.unwritten, job.version)
    store.vectors.flush()
    if store.page_vectors is not None:
        _embed_page_images(store, job)
        store.page_vectors.flush()
    job.replaced = store.catalog.commit_document(
        document_id=job.document_id, name=job.name, kind=job.source.kind, dpi=dpi, size=job.size,
        source=str(job.source.path), pages=job.pages, passages=job.passages, version=job.version,
        owner=store.owner_key)


def _tidy(store: PageStore, job: _Job) -> None:
    """After a commit: drop what the committed version replaced."""
    if job.replaced is not None:
        store.discard_version(job.document_id, job.replaced)
    _drop_if_orphaned(store, job.previous, job.document_id)


def _abandon(store: PageStore, job: _Job) -> None:
    """Undo a job that will not commit: its vectors and images; the committed version is untouched."""
    store.discard_version(job.document_id, job.version)


def _drop_if_orphaned(store: PageStore, previous: str | None, current: str) -> None:
    """A path that now holds other content no longer vouches for its old document."""
    if previous is not None and previous != current and not store.catalog.sources(previous):
        store.delete_document(previous)


def _produce_pages(store: PageStore, job: _Job, dpi: int, password: str | None, max_pages: int,
                   ocr: OcrEngine) -> Iterator[_PageWork]:
    """Render the job's pages, store their images and read their text (runs on the worker thread)."""
    for rendered in render_pages(job.source, dpi, password, max_pages):
        number = rendered.page_number
        image = rendered.image
        save_page_image(image, store.image_path(job.document_id, job.version, number))
        save_thumbnail(image, store.thumbnail_path(job.document_id, job.version, number),
                       store.settings.thumbnail_side)
        lines: list[TextLine] = []
        text_source = "none"
        if rendered.pdf_page is not None:
            lines = pdf_text_lines(rendered.pdf_page, rendered.scale)
            text_source = "pdf"
        if visible_char_count(lines) < MIN_TEXT_LAYER_CHARS:
            lines = ocr.lines(image)
            text_source = "ocr" if lines else "none"
        yield _PageWork(number, image.width, image.height, text_source, lines,
                        image if store.page_vectors is not None else None)


def _add_page(store: PageStore, job: _Job, work: _PageWork, embedder: TextEmbedder,
              count_tokens: Callable[[list[str]], list[int]]) -> None:
    """Cut a produced page into passages, embed them and queue their Milvus rows."""
    page_id = page_id_for(job.document_id, work.page_number)
    job.pages.append(NewPage(page_id, work.page_number, work.width, work.height, work.text_source, work.lines))
    text = page_text(work.lines)
    texts = split_passages(text.splitlines(), count_tokens, store.retrieval.passage_tokens)
    rows = []
    for j, passage in enumerate(texts):
        weights = passage_vector(in_view(job.name, passage))
        if any(c.isalnum() for c in passage):  # else nothing a search could match
            # The version in the pk keeps these rows apart from the committed version's rows of the same page.
            rows.append((PassageRow(f"{page_id}:{job.version}:{j}", page_id, passage, tuple(weights)), weights))
    if rows:
        # Embedding each page as it arrives keeps the worker rendering the next ones meanwhile; Milvus writes
        # are batched, as each call has a fixed cost.
        viewed = [in_view(job.name, row.text) for row, _ in rows]
        dense = embedder.embed_passages(viewed)
        job.passages += [row for row, _ in rows]
        # Each row carries its BM25 weights and its text: the store writes the one its lexical setting reads.
        job.unwritten += [VectorRow(row.pk, page_id, job.document_id, vec, weights, view)
                          for (row, weights), vec, view in zip(rows, dense, viewed)]
        # The whole page as one more row: its BM25 over all its text, and the direction of its passages' mean.
        mean = dense.mean(axis=0)
        page_view = in_view(job.name, text)
        job.unwritten.append(VectorRow(page_row_pk(page_id, job.version), page_id, job.document_id,
                                       mean / max(float(np.linalg.norm(mean)), 1e-12),
                                       passage_vector(page_view, AVG_PAGE_TERMS), page_view))
    if len(job.unwritten) >= WRITE_BATCH:
        store.vectors.insert(job.unwritten, job.version)
        job.unwritten = []
    if work.image is not None and store.page_vectors is not None:
        job.unembedded.append((page_id, work.image))
        if len(job.unembedded) >= PAGE_IMAGE_BATCH:
            _embed_page_images(store, job)


def _embed_page_images(store: PageStore, job: _Job) -> None:
    """The waiting page images' own vectors (a page with no text at all is found by these alone), written."""
    if not job.unembedded:
        return
    page_ids, images = zip(*job.unembedded)
    vectors = store.page_embedder().embed_pages(list(images))
    if store.retrieval.token_pooling:
        vectors = [pool_tokens(v, store.retrieval.token_pooling) for v in vectors]
    store.page_vectors.insert_pages([(p, job.document_id, v) for p, v in zip(page_ids, vectors)], job.version)
    job.unembedded = []


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
