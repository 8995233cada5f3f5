"""A project's documents and their full-text index, in the project database (SQLite FTS5, BM25).

Tables: `documents` (one row per file, unique per project by source and by content hash), `chunks` (the
text cut by slp.projects.chunking, with offsets) and `chunks_fts`, an FTS5 index over the chunks kept in
step by triggers. Each chunk is indexed with a `scope` token naming its project, so a search is one FTS5
query (`scope:pID AND (words)`) that never ranks another project's chunks; the scope column has weight 0
in BM25. Deleting a project deletes its documents, their chunks and their index entries (foreign keys
cascade, and the delete trigger runs for each chunk).

Adding is one write transaction per document: extraction and chunking run first, outside it, and any
refusal leaves the index as it was. The API is synchronous; the agent calls it through `asyncio.to_thread`.

Search cost: BM25 in FTS5 costs about a microsecond and a half per matching chunk, so a question whose
words are all common would rank most of a 50,000-chunk project (70 ms). The query therefore takes the
question's words rarest first (document frequencies, counted once per word and kept until the index
changes) while the chunks they match add up to CANDIDATE_ROWS at most (always the rarest word): ranking
is exact BM25 whenever the question's words match that few chunks in all (any small project, and any
question with a distinctive word), and otherwise ranks the chunks holding its rarest words, by them.
"""

from __future__ import annotations

import hashlib
import sqlite3
import uuid
from datetime import datetime, timezone
from pathlib import PurePath
from typing import Optional

from slp.projects.chunking import chunk_text, fts_query, query_terms
from slp.projects.extract import DocumentRefused, extract
from slp.projects.schema import Document, DocumentAdded, SearchHit
from slp.projects.errors import ProjectNotFound
from slp.projects.store import ProjectStore

DEFAULT_MAX_BYTES = 32 * 1024 * 1024
CANDIDATE_ROWS = 1500  # chunks a search ranks at most, unless its rarest word alone matches more


class DocumentNotFound(ProjectNotFound):
    code = "document_not_found"


def scope_of(project_id: str) -> str:
    """The token that marks a project's chunks in the index (one unicode61 token: letters and digits)."""
    return "p" + project_id.replace("-", "")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _document(row: sqlite3.Row) -> Document:
    return Document(id=row["id"], project_id=row["project_id"], name=row["name"], source=row["source"],
                    format=row["format"], sha256=row["sha256"], bytes=row["bytes"], pages=row["pages"],
                    chunks=row["chunks"], tokens=row["tokens"], index_bytes=row["index_bytes"],
                    created_at=row["created_at"], updated_at=row["updated_at"])


_SEARCH = """
    WITH hits AS (SELECT rowid, bm25(chunks_fts, 0.0, 1.0) AS rank FROM chunks_fts WHERE chunks_fts MATCH ?
                  ORDER BY rank LIMIT ?)
    SELECT c.id, c.document_id, d.name, c.text, c.start_offset, c.end_offset, c.page, c.tokens, hits.rank
    FROM hits JOIN chunks c ON c.id = hits.rowid JOIN documents d ON d.id = c.document_id
    ORDER BY hits.rank, c.id"""


def index_of(store: ProjectStore) -> "DocumentIndex":
    """The one DocumentIndex of a store (its word frequencies are shared by every caller)."""
    index = getattr(store, "_document_index", None)
    if index is None:
        index = store._document_index = DocumentIndex(store)
    return index


class DocumentIndex:
    """Documents of the projects in one ProjectStore (its connection, lock and transactions)."""

    def __init__(self, store: ProjectStore):
        self.store = store
        self._frequency: dict[str, int] = {}  # word -> chunks (of every project) holding it
        self._frequency_revision = -1  # the store's revision they were counted at

    # -- adding

    def add(self, project: str, data: bytes, name: str, source: Optional[str] = None,
            max_bytes: int = DEFAULT_MAX_BYTES) -> DocumentAdded:
        """Index `data` (a file named `name`) in `project` (id or name). `source` identifies it (default: the
        name): the same source again replaces its chunks; content already in the project is not stored
        twice. Raises DocumentRefused (nothing written) or ProjectNotFound."""
        name = PurePath(name.replace("\\", "/")).name or "document"
        source = source or name
        if len(data) > max_bytes:
            raise DocumentRefused(f"{name} is {len(data):,} bytes, over the {max_bytes:,}-byte limit for a "
                                  "document (SLP_MAX_DOCUMENT_BYTES)", code="document_too_large", status=413)
        extracted = extract(data, name)
        chunks = chunk_text(extracted)
        digest = hashlib.sha256(data).hexdigest()
        tokens = sum(c.tokens for c in chunks)
        index_bytes = sum(len(c.text.encode()) for c in chunks)
        with self.store.transaction(write=True, projects_changed=True) as conn:
            project_id = self._project_id(conn, project)
            same = conn.execute("SELECT * FROM documents WHERE project_id = ? AND sha256 = ?",
                                (project_id, digest)).fetchone()
            if same is not None:
                return DocumentAdded(status="unchanged", document=_document(same))
            old = conn.execute("SELECT id, created_at FROM documents WHERE project_id = ? AND source = ?",
                               (project_id, source)).fetchone()
            now = _now()
            if old is not None:  # the chunks go with the old row (cascade), the id stays
                conn.execute("DELETE FROM documents WHERE id = ?", (old["id"],))
            document_id, created = (old["id"], old["created_at"]) if old is not None else (uuid.uuid4().hex, now)
            conn.execute(
                "INSERT INTO documents (id, project_id, name, source, format, sha256, bytes, pages, chunks, tokens,"
                " index_bytes, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (document_id, project_id, name, source, extracted.format, digest, len(data), extracted.pages,
                 len(chunks), tokens, index_bytes, created, now))
            scope = scope_of(project_id)
            conn.executemany(
                "INSERT INTO chunks (document_id, scope, seq, start_offset, end_offset, page, tokens, text)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(document_id, scope, seq, c.start, c.end, c.page, c.tokens, c.text) for seq, c in enumerate(chunks)])
            row = conn.execute("SELECT * FROM documents WHERE id = ?", (document_id,)).fetchone()
            return DocumentAdded(status="replaced" if old is not None else "added", document=_document(row))

    # -- reading and removing

    def list(self, project: str) -> list[Document]:
        """The project's documents, oldest first."""
        with self.store.transaction() as conn:
            project_id = self._project_id(conn, project)
            rows = conn.execute("SELECT * FROM documents WHERE project_id = ? ORDER BY created_at, name",
                                (project_id,)).fetchall()
            return [_document(row) for row in rows]

    def get(self, project: str, document: str) -> Document:
        """A document by id, or by name or source when exactly one has it."""
        with self.store.transaction() as conn:
            return _document(self._row(conn, self._project_id(conn, project), document))

    def delete(self, project: str, document: str) -> Document:
        """Remove a document with its chunks and their index entries."""
        with self.store.transaction(write=True, projects_changed=True) as conn:
            row = self._row(conn, self._project_id(conn, project), document)
            conn.execute("DELETE FROM documents WHERE id = ?", (row["id"],))
            return _document(row)

    def text_of(self, project: str, document: str) -> list[tuple[int, int, str]]:
        """A document's chunks as (start, end, text), in order."""
        with self.store.transaction() as conn:
            row = self._row(conn, self._project_id(conn, project), document)
            return [tuple(r) for r in conn.execute(
                "SELECT start_offset, end_offset, text FROM chunks WHERE document_id = ? ORDER BY seq", (row["id"],))]

    # -- searching

    def search(self, project: str, query: str, top_k: int = 5) -> list[SearchHit]:
        """The chunks of `project` (id or name) that best match `query` (BM25), best first."""
        with self.store.transaction() as conn:
            project_id = self._project_id(conn, project)
        return self.search_id(project_id, query, top_k)

    def search_id(self, project_id: str, query: str, top_k: int = 5) -> list[SearchHit]:
        """`search` by the project's id, without looking the project up (the chat path knows it)."""
        terms = query_terms(query)
        if not terms:
            return []
        with self.store.transaction() as conn:
            terms = self._rarest(conn, terms)
            if not terms:
                return []
            match = f'scope:"{scope_of(project_id)}" AND ({fts_query(terms)})'
            rows = conn.execute(_SEARCH, (match, top_k)).fetchall()
        return [SearchHit(document=r["document_id"], name=r["name"], text=r["text"], score=-r["rank"],
                          start=r["start_offset"], end=r["end_offset"], page=r["page"], chunk=r["id"],
                          tokens=r["tokens"])
                for r in rows]

    # -- helpers (inside a transaction)

    def _rarest(self, conn: sqlite3.Connection, terms: list[str]) -> list[str]:
        """The words to search for: those in the index, rarest first, while the chunks they match add up to
        CANDIDATE_ROWS (the rarest always). Frequencies are counted once per word until the index changes."""
        if self.store.revision != self._frequency_revision:
            self._frequency.clear()
            self._frequency_revision = self.store.revision
        counted = []
        for term in terms:
            found = self._frequency.get(term)
            if found is None:
                if len(self._frequency) > 100_000:
                    self._frequency.clear()
                found = self._frequency[term] = conn.execute(
                    "SELECT COUNT(*) FROM chunks_fts WHERE chunks_fts MATCH ?", (f'text:"{term}"',)).fetchone()[0]
            if found:
                counted.append((found, term))
        chosen, total = [], 0
        for found, term in sorted(counted):
            if chosen and total + found > CANDIDATE_ROWS:
                break
            chosen.append(term)
            total += found
        return chosen

    @staticmethod
    def _project_id(conn: sqlite3.Connection, project: str) -> str:
        row = conn.execute("SELECT id FROM projects WHERE id = ? OR name = ? ORDER BY id = ? DESC LIMIT 1",
                           (project, project, project)).fetchone()
        if row is None:
            raise ProjectNotFound(f"no project named or with id '{project}'")
        return row[0]

    @staticmethod
    def _row(conn: sqlite3.Connection, project_id: str, document: str) -> sqlite3.Row:
        row = conn.execute("SELECT * FROM documents WHERE project_id = ? AND id = ?", (project_id, document)).fetchone()
        if row is None:
            rows = conn.execute("SELECT * FROM documents WHERE project_id = ? AND (name = ? OR source = ?) LIMIT 2",
                                (project_id, document, document)).fetchall()
            if len(rows) > 1:
                raise DocumentRefused(f"several documents are named '{document}'; use its id", code="ambiguous_name")
            row = rows[0] if rows else None
        if row is None:
            raise DocumentNotFound(f"the project has no document '{document}'")
        return row
