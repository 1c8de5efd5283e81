"""The page store: one folder holding the catalogue, the page images, the vectors and a manifest.

Layout under `home` (PAGELENS_HOME, default ./.pagelens):
    manifest.json      pagelens version, store format, embedders, chunking, default dpi, retriever, and the
                       relevance model `pagelens calibrate` fitted (if any)
    catalog.sqlite     documents, sources, pages (text lines with boxes), passages
    milvus.db/         Milvus Lite (unless a Milvus server URI is given)
    pages/<doc>-<version>/p<N>.jpg, thumbs/<doc>-<version>/p<N>.jpg
    cache/             the passages' search copy (derived; caught up or rebuilt when stale)
    cache-pages/       the page images' MaxSim copy, for a vision retriever (the same)
    lock               held by the one process that has a Milvus Lite store open: its pid and command name
    opening.lock       held while a process opens the store (processes sharing a Milvus server take turns)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import secrets
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from pagelens import __version__
from pagelens.errors import BadInputError, NotFoundError, StoreError
from pagelens.tools.corpus.catalog import Catalog, PageRow
from pagelens.tools.corpus.owners import Heartbeat, is_alive, this_process
from pagelens.tools.imagefiles import PAGE_SUFFIX
from pagelens.tools.pages import Document, Page, TextLine
from pagelens.tools.retrieval.memory_index import MemoryIndex, saved_generation
from pagelens.tools.retrieval.relevance import RelevanceModel
from pagelens.tools.retrieval.settings import RetrievalSettings
from pagelens.tools.retrieval.multivector import MultiVectorStore
from pagelens.tools.retrieval.multivector_index import MultiVectorIndex
from pagelens.tools.retrieval.vectors import VectorStore
from pagelens.tools.retrieval.vision import PageImageEmbedder, make_page_embedder

MILVUS_LITE_DIR = "milvus.db"
"""The Milvus Lite data folder inside the store (also what `pagelens serve milvus` serves)."""
STORE_FORMAT = 2  # 2: documents written as versions beside the committed one
# Derived search copies of what Milvus holds, each a folder under the store (with .tmp/.old siblings while saved).
PASSAGE_COPY = "cache"
PAGE_VECTOR_COPY = "cache-pages"


@dataclass(frozen=True)
class StoreSettings:
    home: Path = Path(".pagelens")
    """The store folder (PAGELENS_HOME)."""
    milvus_uri: str | None = None
    """A Milvus server (PAGELENS_MILVUS_URI, e.g. http://host:19530); None keeps Milvus Lite inside `home`."""
    dpi: int = 144
    """Default rendering resolution for PDF pages; recorded in the manifest."""
    thumbnail_side: int = 256
    """Longest side of a thumbnail, in pixels."""
    max_pages: int = 2000
    """The most pages one file may have (`index --max-pages`); a longer file is skipped, naming the limit."""
    pdf_password: str = field(default="", repr=False)
    """Password for protected PDFs (PAGELENS_PDF_PASSWORD or `index --password`); never written anywhere."""

    def __post_init__(self) -> None:
        if not 36 <= self.dpi <= 600:
            raise BadInputError(f"dpi {self.dpi} is out of range; use 36 to 600 (144 is the default).")
        if self.max_pages < 1:
            raise BadInputError(f"max_pages {self.max_pages} is not positive; give the most pages a file may have.")

    @property
    def uses_milvus_lite(self) -> bool:
        return self.milvus_uri is None


def hold_lock(home: Path, holder: str):
    """Take the store's lock file for this process, writing its pid and `holder` (a command name, never the
    command line: that can carry a password); raise StoreError naming the holder if another process has it."""
    handle = open(home / "lock", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        found = handle.read().strip()  # "<pid> <command>"
        handle.close()
        who = f" (process {found})" if found else ""
        raise StoreError(
            f"the store {home} is open in another process{who}; Milvus Lite allows one process at a "
            f"time, so stop that process, or share the store through a Milvus server: run `pagelens serve milvus` "
            f"and set the PAGELENS_MILVUS_URI it prints."
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()} {holder}")
    handle.flush()
    return handle


def _write_manifest(path: Path, manifest: dict) -> None:
    """Replace the manifest whole (written beside, then renamed): a reader never finds half of one."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, path)


@contextlib.contextmanager
def opening_lock(home: Path):
    """Held while a process opens the store (manifest, catalogue, vectors): processes sharing it through a Milvus
    server take turns, so one writes a new store's manifest and creates its collection, and the others find them."""
    with open(home / "opening.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


class PageStore:
    """An open store. Use as a context manager, or call close()."""

    def __init__(self, settings: StoreSettings, retrieval: RetrievalSettings | None = None, *, rebuild: bool = False,
                 holder: str = "pagelens", choose_retriever: bool = False):
        """`holder` names what opened the store (a command such as "pagelens index") for a refused second process.
        A store keeps the retriever it was built with (its manifest's): `choose_retriever` (`index --retriever`)
        asks for `retrieval.retriever` instead, and a store built with another is refused."""
        self.settings = settings
        self.retrieval = retrieval or RetrievalSettings()
        self._choose_retriever = choose_retriever
        self._page_embedder: PageImageEmbedder | None = None
        self.home = settings.home.resolve()
        self.home.mkdir(parents=True, exist_ok=True)
        self._lock_file = hold_lock(self.home, holder) if settings.uses_milvus_lite else None
        self._owner = this_process()
        self._heartbeat: Heartbeat | None = None
        self._owner_lock = threading.Lock()
        try:
            with opening_lock(self.home):
                if rebuild:
                    self._wipe()
                self._check_manifest()
                self.catalog = Catalog(self.home / "catalog.sqlite")
                uri = settings.milvus_uri or str(self.home / MILVUS_LITE_DIR)
                self.vectors = VectorStore(uri, self._dim(), lexical=self.retrieval.lexical, recreate=rebuild)
                # The page images' vectors, for a vision retriever (tools/retrieval/multivector.py).
                self.page_vectors = (MultiVectorStore(uri, self.page_embedder().dim, recreate=rebuild)
                                     if self.retrieval.vision else None)
            self._caches: dict[str, MemoryIndex | MultiVectorIndex] = {}
            # The agent API searches from worker threads: one rebuilds a stale copy while the others wait.
            self._cache_lock = threading.Lock()
            self.recover()
        except BaseException:
            self._release()
            raise

    # -- opening --------------------------------------------------------------------------------------
    def _release(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def _expected_manifest(self) -> dict:
        return {"format": STORE_FORMAT, "dpi": self.settings.dpi, **self.retrieval.manifest()}

    def _check_manifest(self) -> None:
        path = self.home / "manifest.json"
        expected = self._expected_manifest()
        if path.exists():
            found = json.loads(path.read_text())
            found.setdefault("retriever", "text")  # a store from before vision retrievers
            if not self._choose_retriever:
                vision = found.get("vision") or {}
                self.retrieval = replace(self.retrieval, retriever=found["retriever"],
                                         vision_model=vision.get("model") or "",
                                         vision_pooling=vision.get("pooling") or "wmean",
                                         token_pooling=vision.get("token_pooling") or 0)
                expected = self._expected_manifest()
            if "relevance" in found:  # fitted for this store by `pagelens calibrate`
                self.retrieval = self.retrieval.with_relevance(RelevanceModel.from_manifest(found["relevance"]))
            diffs = [f"{k} {found.get(k)!r} (now {v!r})" for k, v in expected.items() if found.get(k) != v]
            if diffs:
                raise StoreError(
                    f"the store {self.home} was built with other settings: {'; '.join(diffs)}; "
                    f"run `pagelens index --rebuild PATH...` to rebuild it with the current ones."
                )
            return
        if self.retrieval.vision:
            self.page_embedder()  # a checkpoint of the wrong kind is refused before the store records it
        _write_manifest(path, {**expected, "pagelens": __version__})

    def save_relevance(self, model: RelevanceModel) -> None:
        """Keep a relevance model fitted for this store (`pagelens calibrate`) in its manifest: later searches use it."""
        with opening_lock(self.home):
            path = self.home / "manifest.json"
            manifest = json.loads(path.read_text())
            manifest["relevance"] = model.to_manifest()
            _write_manifest(path, manifest)
        self.retrieval = self.retrieval.with_relevance(model)

    def _wipe(self) -> None:
        for name in ("manifest.json", "catalog.sqlite", "catalog.sqlite-wal", "catalog.sqlite-shm"):
            (self.home / name).unlink(missing_ok=True)
        # Milvus's collection is dropped through its client (a Lite server may still hold the folder open).
        copies = [f"{copy}{suffix}" for copy in (PASSAGE_COPY, PAGE_VECTOR_COPY) for suffix in ("", ".tmp", ".old")]
        for name in ("pages", "thumbs", *copies):
            shutil.rmtree(self.home / name, ignore_errors=True)

    def page_embedder(self) -> PageImageEmbedder:
        """The vision retriever's embedder (loaded on first use); only for a store with a vision retriever."""
        if self._page_embedder is None:
            self._page_embedder = make_page_embedder(self.retrieval)
        return self._page_embedder

    def _dim(self) -> int:
        from pagelens.tools.retrieval.embedders import make_embedder

        return make_embedder(self.retrieval.embedder).dim

    def recover(self) -> None:
        """Undo what dead owners left: the vectors and images of versions that never committed or were replaced.

        Another process's work in progress (its owner alive, see `owners`) is left alone."""
        roots = [self.home / kind for kind in ("pages", "thumbs")]
        folders = [folder for root in roots if root.is_dir() for folder in root.iterdir()]
        owners = self.catalog.owners()
        for version, document_id, key in self.catalog.pending():
            known = owners.get(key)
            if key != self._owner.key and (known is None or not is_alive(*known)):
                self.discard_version(document_id, version)
        for key, known in owners.items():
            if key != self._owner.key and not is_alive(*known):
                self.catalog.forget_owner(key)
        for document_id, *_ in self.catalog.documents():
            if not self.catalog.sources(document_id):  # its path was re-indexed with other content
                self.delete_document(document_id)
        # Folders listed before the catalogue is read: a version's pending row exists before its first image.
        kept = {self.folder_name(d[0], d[6]) for d in self.catalog.documents()}
        kept |= {self.folder_name(document_id, version) for version, document_id, _ in self.catalog.pending()}
        for folder in folders:
            if folder.name not in kept:
                shutil.rmtree(folder, ignore_errors=True)

    def close(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop()
            self.catalog.forget_owner(self._owner.key)
        self.catalog.close()
        self.vectors.close()
        if self.page_vectors is not None:
            self.page_vectors.close()
        self._release()

    def __enter__(self) -> PageStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- paths ----------------------------------------------------------------------------------------
    @staticmethod
    def folder_name(document_id: str, version: str) -> str:
        return f"{document_id[:12]}-{version}"

    def image_path(self, document_id: str, version: str, page_number: int) -> Path:
        return self.home / "pages" / self.folder_name(document_id, version) / f"p{page_number}{PAGE_SUFFIX}"

    def thumbnail_path(self, document_id: str, version: str, page_number: int) -> Path:
        return self.home / "thumbs" / self.folder_name(document_id, version) / f"p{page_number}{PAGE_SUFFIX}"

    # -- reads ----------------------------------------------------------------------------------------
    def _page(self, row: PageRow) -> Page:
        return Page(
            page_id=row.page_id, document_id=row.document_id, document=row.document,
            page_number=row.page_number, width=row.width, height=row.height, dpi=row.dpi,
            image_path=self.image_path(row.document_id, row.version, row.page_number),
            thumbnail_path=self.thumbnail_path(row.document_id, row.version, row.page_number),
            text_source=row.text_source,  # type: ignore[arg-type]
        )

    def page(self, page_id: str) -> Page:
        row = self.catalog.page(page_id)
        if row is None:
            raise NotFoundError(f"page {page_id!r} is not in the store {self.home}; `pagelens pages` lists the pages.")
        return self._page(row)

    def pages(self, page_ids: list[str] | None = None) -> list[Page]:
        return [self._page(r) for r in self.catalog.pages(page_ids)]

    def lines(self, page_id: str) -> list[TextLine]:
        return self.catalog.lines(page_id)

    def documents(self) -> list[Document]:
        return [
            Document(document_id=d[0], name=d[1], sources=tuple(self.catalog.sources(d[0])), page_count=d[4],
                     kind=d[2], dpi=d[3])
            for d in self.catalog.documents()
        ]

    def match_documents(self, pattern: str) -> list[Document]:
        """Documents whose name matches a glob (`*` crosses folders, as in `reports/*`)."""
        from fnmatch import fnmatchcase

        return [d for d in self.documents() if fnmatchcase(d.name, pattern)]

    # -- changes --------------------------------------------------------------------------------------
    @property
    def owner_key(self) -> str:
        """This process as the owner of the versions it writes; recorded, and kept alive, from first use."""
        with self._owner_lock:  # the agent API's threads share the store: one heartbeat per process
            if self._heartbeat is None:
                self.catalog.record_owner(self._owner, time.time())
                self._heartbeat = Heartbeat(lambda: self.catalog.record_owner(self._owner, time.time()))
        return self._owner.key

    def begin_version(self, document_id: str) -> str:
        """A new version id for the document, pending under this process until committed or discarded."""
        version = secrets.token_hex(4)
        self.catalog.begin_version(document_id, version, self.owner_key)
        return version

    def discard_version(self, document_id: str, version: str) -> None:
        """Delete a version's vectors and images, then forget it (a crash in between leaves it pending)."""
        self.vectors.delete_version(document_id, version)
        self.vectors.flush()
        if self.page_vectors is not None:
            self.page_vectors.delete_version(document_id, version)
            self.page_vectors.flush()
        for kind in ("pages", "thumbs"):
            shutil.rmtree(self.home / kind / self.folder_name(document_id, version), ignore_errors=True)
        self.catalog.end_version(version)

    def delete_document(self, document_id: str) -> None:
        """Remove a document's pages, images and vectors."""
        version = self.catalog.delete_document(document_id, self.owner_key)
        if version is not None:
            self.discard_version(document_id, version)

    # -- search backend -------------------------------------------------------------------------------
    def use_memory_index(self) -> bool:
        mode = self.retrieval.memory_index
        # Server-side BM25 lives only in Milvus (RetrievalSettings refuses "on" with it).
        return mode == "on" or (mode == "auto" and self.settings.uses_milvus_lite and self.retrieval.lexical == "client")

    def memory_index(self) -> MemoryIndex:
        """The passages' search copy for the catalogue's current generation (tools/retrieval/memory_index.py)."""
        return self._derived(PASSAGE_COPY)

    def vision_index(self) -> MultiVectorIndex:
        """The page images' MaxSim copy for the catalogue's current generation (multivector_index.py); only for a
        store with a vision retriever."""
        return self._derived(PAGE_VECTOR_COPY)

    def _derived(self, kind: str):
        """A derived copy at the catalogue's current generation: kept, loaded, caught up with the documents changed
        since it was saved, or rebuilt from every row in Milvus."""
        with self._cache_lock:
            generation = self.catalog.generation()
            cache = self._caches.get(kind)
            if cache is not None and cache.generation == generation:
                return cache
            folder = self.home / kind
            copy, build, rows_of = self._copy_parts(kind)
            cache = cache or copy.load(folder)
            if cache is None or cache.generation != generation:
                changed = None if cache is None else self.catalog.changed_since(cache.generation)
                if changed is None:
                    cache = build(generation)
                else:
                    present = [d for d in sorted(changed) if self.catalog.document(d) is not None]
                    cache = cache.update(generation, changed, rows_of(present) if present else [])
                cache.save(folder)
                # The change log is kept back to the oldest copy still to catch up.
                kinds = [PASSAGE_COPY] + ([PAGE_VECTOR_COPY] if self.page_vectors is not None else [])
                saved = [saved_generation(self.home / k) for k in kinds]
                if None not in saved:
                    self.catalog.forget_changes(min(saved))
            self._caches[kind] = cache
            return cache

    def _copy_parts(self, kind: str):
        """A derived copy's class, how to build it from every row in Milvus at a generation, and how to read the
        rows of some documents to catch it up."""
        if kind == PASSAGE_COPY:
            vectors = self.vectors
            return (MemoryIndex, lambda generation: MemoryIndex.build(generation, vectors.rows(), vectors.dim),
                    vectors.rows)
        pages = self.page_vectors
        return (MultiVectorIndex,
                lambda generation: MultiVectorIndex.build(pages.pages(), pages.dim, generation=generation), pages.pages)
