"""The page store: one folder holding the catalogue, the page images, the vectors and a manifest.

Layout under `home` (PAGELENS_HOME, default ./.pagelens):
    manifest.json      pagelens version, store format, embedders, chunking, default dpi
    catalog.sqlite     documents, sources, pages (text lines with boxes), passages
    milvus.db/         Milvus Lite (unless a Milvus server URI is given)
    pages/<doc>-<dpi>/p<N>.jpg, thumbs/<doc>-<dpi>/p<N>.jpg
    cache/             the exact search cache (derived; rebuilt when stale)
    lock               held by the one process that has the store open
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from pagelens import __version__
from pagelens.errors import BadInputError, NotFoundError, StoreError
from pagelens.tools.corpus.catalog import Catalog, PageRow
from pagelens.tools.imagefiles import PAGE_SUFFIX
from pagelens.tools.pages import Document, Page, TextLine
from pagelens.tools.retrieval.cache import MemoryIndex
from pagelens.tools.retrieval.settings import RetrievalSettings
from pagelens.tools.retrieval.vectors import VectorStore

STORE_FORMAT = 1


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

    def __post_init__(self) -> None:
        if not 36 <= self.dpi <= 600:
            raise BadInputError(f"dpi {self.dpi} is out of range; use 36 to 600 (144 is the default).")

    @property
    def uses_milvus_lite(self) -> bool:
        return self.milvus_uri is None


def _command_line() -> str:
    """This process's command line ("pagelens --home X serve mcp"), so a refused process learns what holds the
    store; a password given on it is left out, since the lock file is readable."""
    words, hide = [], False
    for word in sys.argv[1:]:
        words.append("***" if hide else word.split("=", 1)[0] + "=***" if word.startswith("--password=") else word)
        hide = word == "--password"
    program = "pagelens" if Path(sys.argv[0]).name == "__main__.py" else Path(sys.argv[0]).name
    return " ".join([program, *words])[:300]


class PageStore:
    """An open store. Use as a context manager, or call close()."""

    def __init__(self, settings: StoreSettings, retrieval: RetrievalSettings | None = None, *, rebuild: bool = False):
        self.settings = settings
        self.retrieval = retrieval or RetrievalSettings()
        self.home = settings.home.resolve()
        self.home.mkdir(parents=True, exist_ok=True)
        self._lock_file = self._lock() if settings.uses_milvus_lite else None
        try:
            if rebuild:
                self._wipe()
            self._check_manifest()
            self.catalog = Catalog(self.home / "catalog.sqlite")
            self.vectors = VectorStore(settings.milvus_uri or str(self.home / "milvus.db"), self._dim(),
                                       recreate=rebuild)
            self._cache: MemoryIndex | None = None
            # The agent API searches from worker threads: one rebuilds a stale cache while the others wait.
            self._cache_lock = threading.Lock()
            self.recover()
        except BaseException:
            self._release()
            raise

    # -- opening --------------------------------------------------------------------------------------
    def _lock(self):
        handle = open(self.home / "lock", "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip()
            handle.close()
            who = f" (process {holder})" if holder else ""
            raise StoreError(
                f"the store {self.home} is open in another process{who}; Milvus Lite allows one process at a "
                f"time, so stop that process, or set PAGELENS_MILVUS_URI to a Milvus server to share a store."
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()} {_command_line()}".strip())
        handle.flush()
        return handle

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
            diffs = [f"{k} {found.get(k)!r} (now {v!r})" for k, v in expected.items() if found.get(k) != v]
            if diffs:
                raise StoreError(
                    f"the store {self.home} was built with other settings: {'; '.join(diffs)}; "
                    f"run `pagelens index --rebuild PATH...` to rebuild it with the current ones."
                )
            return
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({**expected, "pagelens": __version__}, indent=2))
        os.replace(tmp, path)

    def _wipe(self) -> None:
        for name in ("manifest.json", "catalog.sqlite", "catalog.sqlite-wal", "catalog.sqlite-shm"):
            (self.home / name).unlink(missing_ok=True)
        # Milvus's collection is dropped through its client (a Lite server may still hold the folder open).
        for name in ("pages", "thumbs", "cache", "cache.tmp", "cache.old"):
            shutil.rmtree(self.home / name, ignore_errors=True)

    def _dim(self) -> int:
        from pagelens.tools.retrieval.embedders import make_embedder

        return make_embedder(self.retrieval.embedder).dim

    def recover(self) -> None:
        """Undo what a killed run left: vectors and images of documents that never committed."""
        for document_id in self.catalog.pending():
            self.vectors.delete_document(document_id)
            self.catalog.clear_pending(document_id)
        for document_id, *_ in self.catalog.documents():
            if not self.catalog.sources(document_id):  # its path was re-indexed with other content
                self.delete_document(document_id)
        self.vectors.flush()
        committed = {self.folder_name(d[0], d[3]) for d in self.catalog.documents()}
        for kind in ("pages", "thumbs"):
            root = self.home / kind
            if root.is_dir():
                for folder in root.iterdir():
                    if folder.name not in committed:
                        shutil.rmtree(folder, ignore_errors=True)

    def close(self) -> None:
        self.catalog.close()
        self.vectors.close()
        self._release()

    def __enter__(self) -> PageStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- paths ----------------------------------------------------------------------------------------
    @staticmethod
    def folder_name(document_id: str, dpi: int) -> str:
        return f"{document_id[:12]}-{dpi}"

    def image_path(self, document_id: str, dpi: int, page_number: int) -> Path:
        return self.home / "pages" / self.folder_name(document_id, dpi) / f"p{page_number}{PAGE_SUFFIX}"

    def thumbnail_path(self, document_id: str, dpi: int, page_number: int) -> Path:
        return self.home / "thumbs" / self.folder_name(document_id, dpi) / f"p{page_number}{PAGE_SUFFIX}"

    def remove_images(self, document_id: str, dpi: int) -> None:
        for kind in ("pages", "thumbs"):
            shutil.rmtree(self.home / kind / self.folder_name(document_id, dpi), ignore_errors=True)

    # -- reads ----------------------------------------------------------------------------------------
    def _page(self, row: PageRow) -> Page:
        return Page(
            page_id=row.page_id, document_id=row.document_id, document=row.document,
            page_number=row.page_number, width=row.width, height=row.height, dpi=row.dpi,
            image_path=self.image_path(row.document_id, row.dpi, row.page_number),
            thumbnail_path=self.thumbnail_path(row.document_id, row.dpi, row.page_number),
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
    def delete_document(self, document_id: str) -> None:
        """Remove a document's pages, images and vectors."""
        row = self.catalog.document(document_id)
        if row is None:
            return
        self.catalog.mark_pending(document_id)
        self.catalog.delete_document(document_id)
        self.vectors.delete_document(document_id)
        self.vectors.flush()
        self.catalog.clear_pending(document_id)
        self.remove_images(document_id, row[3])

    # -- search backend -------------------------------------------------------------------------------
    def use_memory_index(self) -> bool:
        mode = self.retrieval.memory_index
        return mode == "on" or (mode == "auto" and self.settings.uses_milvus_lite)

    def memory_index(self) -> MemoryIndex:
        """The exact search cache for the catalogue's current generation: loaded, caught up with the documents
        changed since it was saved, or rebuilt from every row."""
        with self._cache_lock:
            generation = self.catalog.generation()
            cache = self._cache
            if cache is not None and cache.generation == generation:
                return cache
            folder = self.home / "cache"
            cache = cache or MemoryIndex.load(folder)
            if cache is None or cache.generation != generation:
                changed = None if cache is None else self.catalog.changed_since(cache.generation)
                if changed is None:
                    cache = MemoryIndex.build(generation, self.vectors.rows(), self.vectors.dim)
                else:
                    present = [d for d in sorted(changed) if self.catalog.document(d) is not None]
                    cache = cache.update(generation, changed, self.vectors.rows(present) if present else [])
                cache.save(folder)
                self.catalog.forget_changes(generation)
            self._cache = cache
            return cache
