"""The catalogue: documents, their source paths, pages and passages in one SQLite file.

SQLite gives each document's commit one transaction: a document and all of its pages appear together or not
at all. Each indexing of a document writes a new *version* (its vectors and page images carry the version id)
beside the committed one, and the commit swaps the catalogue over to it. Vectors live in Milvus; the `pending`
table names each version whose vectors or images may exist without being the committed one (being written, or
replaced and not yet deleted), with its owner, so that whoever opens the store next can delete what a dead
owner left and nothing else.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pagelens.tools.corpus.owners import Owner
from pagelens.tools.pages import TextLine

_SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    document_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    dpi INTEGER NOT NULL,
    page_count INTEGER NOT NULL,
    size INTEGER NOT NULL,
    version TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sources (
    path TEXT PRIMARY KEY,
    document_id TEXT NOT NULL REFERENCES documents(document_id) ON DELETE CASCADE
);
CREATE TABLE IF NOT EXISTS pages (
    page_id TEXT PRIMARY KEY,
    document_id TEXT NOT NULL REFERENCES documents(document_id) ON DELETE CASCADE,
    page_number INTEGER NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    text_source TEXT NOT NULL,
    lines TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS pages_by_document ON pages(document_id, page_number);
CREATE TABLE IF NOT EXISTS passages (
    pk TEXT PRIMARY KEY,
    page_id TEXT NOT NULL REFERENCES pages(page_id) ON DELETE CASCADE,
    text TEXT NOT NULL,
    terms TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS passages_by_page ON passages(page_id);
CREATE TABLE IF NOT EXISTS term_counts (term INTEGER PRIMARY KEY, df INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS pending (version TEXT PRIMARY KEY, document_id TEXT NOT NULL, owner TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS owners (
    owner TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    started TEXT NOT NULL,
    heartbeat REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS changes (generation INTEGER PRIMARY KEY, document_id TEXT NOT NULL);
"""


@dataclass(frozen=True)
class PageRow:
    page_id: str
    document_id: str
    document: str
    page_number: int
    width: int
    height: int
    dpi: int
    text_source: str
    version: str


@dataclass(frozen=True)
class PassageRow:
    """One passage of a page: the unit that is embedded; `terms` are its hashed lexical term ids."""

    pk: str
    page_id: str
    text: str
    terms: tuple[int, ...]


@dataclass(frozen=True)
class NewPage:
    page_id: str
    page_number: int
    width: int
    height: int
    text_source: str
    lines: list[TextLine]


class Catalog:
    def __init__(self, path: Path):
        # check_same_thread off: the agent API's worker threads read the open store at once; SQLite in serialized
        # mode (Python's default build, sqlite3.threadsafety == 3) lets threads share one connection.
        # The timeout lets writers in several processes (a store shared through a Milvus server) queue for the lock.
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # -- meta -----------------------------------------------------------------------------------------
    def generation(self) -> int:
        """A counter bumped by every committed change, so derived caches know when they are stale."""
        row = self._db.execute("SELECT value FROM meta WHERE key='generation'").fetchone()
        return int(row[0]) if row else 0

    def _bump(self, db: sqlite3.Connection, document_id: str) -> None:
        db.execute(
            "INSERT INTO meta(key, value) VALUES('generation', '1') "
            "ON CONFLICT(key) DO UPDATE SET value = CAST(value AS INTEGER) + 1"
        )
        generation = int(db.execute("SELECT value FROM meta WHERE key='generation'").fetchone()[0])
        db.execute("INSERT INTO changes(generation, document_id) VALUES(?, ?)", (generation, document_id))

    def changed_since(self, generation: int) -> set[str] | None:
        """The documents committed or deleted after `generation`, or None when the change log no longer
        reaches back that far (it is trimmed by `forget_changes`, and stores made before it have none)."""
        with self.transaction() as db:
            current = self.generation()
            rows = db.execute("SELECT document_id FROM changes WHERE generation > ?", (generation,)).fetchall()
        if current < generation or len(rows) != current - generation:
            return None
        return {row[0] for row in rows}

    def forget_changes(self, through: int) -> None:
        """Trim the change log up to a generation that derived copies no longer need to catch up from."""
        self._db.execute("DELETE FROM changes WHERE generation <= ?", (through,))

    # -- reads ----------------------------------------------------------------------------------------
    def document(self, document_id: str) -> tuple | None:
        return self._db.execute(
            "SELECT document_id, name, kind, dpi, page_count, size, version FROM documents WHERE document_id=?",
            (document_id,),
        ).fetchone()

    def documents(self) -> list[tuple]:
        return self._db.execute(
            "SELECT document_id, name, kind, dpi, page_count, size, version FROM documents ORDER BY name, document_id"
        ).fetchall()

    def sources(self, document_id: str) -> list[str]:
        rows = self._db.execute("SELECT path FROM sources WHERE document_id=? ORDER BY path", (document_id,))
        return [r[0] for r in rows]

    def document_at(self, path: str) -> str | None:
        row = self._db.execute("SELECT document_id FROM sources WHERE path=?", (path,)).fetchone()
        return row[0] if row else None

    _PAGE_SELECT = (
        "SELECT p.page_id, p.document_id, d.name, p.page_number, p.width, p.height, d.dpi, p.text_source, d.version "
        "FROM pages p JOIN documents d ON d.document_id = p.document_id "
    )

    def page(self, page_id: str) -> PageRow | None:
        row = self._db.execute(self._PAGE_SELECT + "WHERE p.page_id=?", (page_id,)).fetchone()
        return PageRow(*row) if row else None

    def pages(self, page_ids: Iterable[str] | None = None) -> list[PageRow]:
        if page_ids is None:
            rows = self._db.execute(self._PAGE_SELECT + "ORDER BY d.name, p.document_id, p.page_number")
            return [PageRow(*r) for r in rows]
        wanted = list(page_ids)
        found = {}
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for r in self._db.execute(self._PAGE_SELECT + f"WHERE p.page_id IN ({marks})", chunk):
                found[r[0]] = PageRow(*r)
        return [found[p] for p in wanted if p in found]

    def lines(self, page_id: str) -> list[TextLine]:
        row = self._db.execute("SELECT lines FROM pages WHERE page_id=?", (page_id,)).fetchone()
        return [TextLine.from_dict(d) for d in json.loads(row[0])] if row else []

    def passages(self, pks: Iterable[str]) -> dict[str, PassageRow]:
        wanted = list(pks)
        out: dict[str, PassageRow] = {}
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for pk, page_id, text, terms in self._db.execute(
                f"SELECT pk, page_id, text, terms FROM passages WHERE pk IN ({marks})", chunk
            ):
                out[pk] = PassageRow(pk, page_id, text, tuple(json.loads(terms)))
        return out

    def page_terms(self, page_ids: Iterable[str]) -> dict[str, list[frozenset[int]]]:
        """Each page's passages as their sets of term ids."""
        wanted = list(page_ids)
        out: dict[str, list[frozenset[int]]] = {page_id: [] for page_id in wanted}
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for page_id, terms in self._db.execute(
                f"SELECT page_id, terms FROM passages WHERE page_id IN ({marks})", chunk
            ):
                out[page_id].append(frozenset(json.loads(terms)))
        return out

    def passage_count(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM passages").fetchone()[0]

    def document_frequencies(self, terms: Iterable[int]) -> dict[int, int]:
        wanted = list(set(terms))
        if not wanted:
            return {}
        marks = ",".join("?" * len(wanted))
        return dict(self._db.execute(f"SELECT term, df FROM term_counts WHERE term IN ({marks})", wanted))

    def pending(self) -> list[tuple[str, str, str]]:
        """(version, document_id, owner key) of every version that is not, or no longer, committed."""
        return self._db.execute("SELECT version, document_id, owner FROM pending ORDER BY version").fetchall()

    def owners(self) -> dict[str, tuple[Owner, float]]:
        """Each recorded owner by key, with its last heartbeat (seconds since the epoch)."""
        rows = self._db.execute("SELECT owner, host, pid, started, heartbeat FROM owners")
        return {key: (Owner(host, pid, started), heartbeat) for key, host, pid, started, heartbeat in rows}

    # -- writes ---------------------------------------------------------------------------------------
    def record_owner(self, owner: Owner, now: float) -> None:
        """Record `owner` or renew its heartbeat."""
        self._db.execute(
            "INSERT INTO owners(owner, host, pid, started, heartbeat) VALUES(?,?,?,?,?) "
            "ON CONFLICT(owner) DO UPDATE SET heartbeat = excluded.heartbeat",
            (owner.key, owner.host, owner.pid, owner.started, now),
        )

    def forget_owner(self, key: str) -> None:
        """Drop an owner that has no pending version left."""
        self._db.execute("DELETE FROM owners WHERE owner=? AND NOT EXISTS (SELECT 1 FROM pending WHERE owner=?)",
                         (key, key))

    def begin_version(self, document_id: str, version: str, owner: str) -> None:
        self._db.execute("INSERT INTO pending(version, document_id, owner) VALUES(?, ?, ?)",
                         (version, document_id, owner))

    def end_version(self, version: str) -> None:
        """Forget a pending version whose vectors and images are gone."""
        self._db.execute("DELETE FROM pending WHERE version=?", (version,))

    def add_source(self, document_id: str, path: str) -> None:
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO sources(path, document_id) VALUES(?, ?)", (path, document_id))

    def commit_document(
        self,
        *,
        document_id: str,
        name: str,
        kind: str,
        dpi: int,
        size: int,
        source: str,
        pages: list[NewPage],
        passages: list[PassageRow],
        version: str,
        owner: str,
    ) -> str | None:
        """Make `version` the document's committed one, in one transaction; return the version it replaced,
        now pending under `owner` until its vectors and images are deleted."""
        with self.transaction() as db:
            kept = [r[0] for r in db.execute("SELECT path FROM sources WHERE document_id=?", (document_id,))]
            replaced = self._delete_document(db, document_id, owner)
            db.execute(
                "INSERT INTO documents(document_id, name, kind, dpi, page_count, size, version) VALUES(?,?,?,?,?,?,?)",
                (document_id, name, kind, dpi, len(pages), size, version),
            )
            db.executemany(
                "INSERT INTO pages(page_id, document_id, page_number, width, height, text_source, lines) "
                "VALUES(?,?,?,?,?,?,?)",
                [
                    (p.page_id, document_id, p.page_number, p.width, p.height, p.text_source,
                     json.dumps([line.to_dict() for line in p.lines], ensure_ascii=False))
                    for p in pages
                ],
            )
            db.executemany(
                "INSERT INTO passages(pk, page_id, text, terms) VALUES(?,?,?,?)",
                [(p.pk, p.page_id, p.text, json.dumps(list(p.terms))) for p in passages],
            )
            self._count_terms(db, passages, +1)
            db.executemany(
                "INSERT OR REPLACE INTO sources(path, document_id) VALUES(?, ?)",
                [(path, document_id) for path in {*kept, source}],
            )
            db.execute("DELETE FROM pending WHERE version=?", (version,))
            self._bump(db, document_id)
        return replaced

    def delete_document(self, document_id: str, owner: str) -> str | None:
        """Remove the document from the catalogue; return its version, now pending under `owner` until its
        vectors and images are deleted (None if it was not there)."""
        with self.transaction() as db:
            version = self._delete_document(db, document_id, owner)
            self._bump(db, document_id)
        return version

    def drop_source(self, path: str) -> str | None:
        """Forget one path; return the document it pointed to if that document now has no path left."""
        with self.transaction() as db:
            row = db.execute("SELECT document_id FROM sources WHERE path=?", (path,)).fetchone()
            if row is None:
                return None
            db.execute("DELETE FROM sources WHERE path=?", (path,))
            left = db.execute("SELECT COUNT(*) FROM sources WHERE document_id=?", (row[0],)).fetchone()[0]
            return row[0] if left == 0 else None

    def _delete_document(self, db: sqlite3.Connection, document_id: str, owner: str) -> str | None:
        row = db.execute("SELECT version FROM documents WHERE document_id=?", (document_id,)).fetchone()
        if row is None:
            return None
        old = [
            PassageRow(pk, page_id, "", tuple(json.loads(terms)))
            for pk, page_id, terms in db.execute(
                "SELECT s.pk, s.page_id, s.terms FROM passages s JOIN pages p ON p.page_id = s.page_id "
                "WHERE p.document_id=?",
                (document_id,),
            )
        ]
        self._count_terms(db, old, -1)
        db.execute("DELETE FROM documents WHERE document_id=?", (document_id,))
        db.execute("INSERT INTO pending(version, document_id, owner) VALUES(?, ?, ?)", (row[0], document_id, owner))
        return row[0]

    @staticmethod
    def _count_terms(db: sqlite3.Connection, passages: list[PassageRow], sign: int) -> None:
        counts: dict[int, int] = {}
        for passage in passages:
            for term in set(passage.terms):
                counts[term] = counts.get(term, 0) + 1
        db.executemany(
            "INSERT INTO term_counts(term, df) VALUES(?, ?) ON CONFLICT(term) DO UPDATE SET df = df + excluded.df",
            [(t, sign * c) for t, c in counts.items()],
        )
        if sign < 0:
            db.execute("DELETE FROM term_counts WHERE df <= 0")
