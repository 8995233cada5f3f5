"""SQLite store for projects, the active project, usage and conversations.

One file (`Paths.db_file`), user-only, WAL mode; every write runs in a `BEGIN IMMEDIATE`
transaction, so several agents or CLI processes sharing the file stay consistent. Uniqueness of
names is the database's job (a UNIQUE constraint), not a check-then-insert, so exactly one of
concurrent creates wins. The API is synchronous and thread-safe: the agent calls it through
`asyncio.to_thread`.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import threading
import time
import uuid
import contextlib
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, TypeVar, Union

from pydantic import BaseModel, ValidationError

from slp.settings import DEFAULT_MODEL_ALIAS, ensure_private_dir
from slp.projects.errors import (  # the store's callers import them from here too
    ProjectConflict,
    ProjectError,
    ProjectInvalid,
    ProjectNotFound,
    SessionNotFound,
)
from slp.projects.schema import (
    SESSION_ID_PATTERN,
    SYSTEM_PROJECT,
    DocumentStats,
    Exchange,
    GenerationParams,
    Project,
    ProjectCreate,
    ProjectUpdate,
    ProjectUsage,
    SessionDetail,
    SessionSummary,
)

M = TypeVar("M", bound=BaseModel)
BUSY_TIMEOUT_S = 30.0
_ACTIVE_KEY = "active_project"


def _param_of(loc: tuple) -> Optional[str]:
    """Field path of a pydantic error location, without union tags or list indexes."""
    names = [part for part in loc if isinstance(part, str)]
    if not names:
        return None
    return ".".join(names[:2]) if names[0] == "params" and len(names) > 1 else names[0]


def invalid_from(exc: ValidationError) -> ProjectInvalid:
    """Turn pydantic's report into one readable line naming the first bad field."""
    err = exc.errors()[0]
    param = _param_of(tuple(err.get("loc", ())))
    if err["type"] == "extra_forbidden":
        message = f"unknown field '{param}'"
    elif err["type"] == "string_pattern_mismatch" and param == "name":
        message = "name must be 1-64 characters: letters, digits, '_' or '-'"
    elif err["type"] == "missing":
        message = f"{param} is required"
    elif param == "params.stop":  # a union: pydantic reports each branch; one sentence says it better
        message = "params.stop must be a string or a list of at most 4 strings"
    elif err["type"] in ("model_type", "dict_type") and param is None:
        message = "request body must be a JSON object"
    else:
        message = f"{param}: {err['msg']}" if param else err["msg"]
    return ProjectInvalid(message, param=param)


def parse(model: type[M], data: Any) -> M:
    """Validate `data` (a model instance or plain dict) as `model`, raising ProjectInvalid."""
    if isinstance(data, model):
        return data
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise invalid_from(exc) from None


_SESSION_RE = re.compile(SESSION_ID_PATTERN)


def check_session_id(session_id: Any) -> str:
    """Validate a request's `session_id` before serving it, so a bad one is refused up front."""
    if not isinstance(session_id, str) or not _SESSION_RE.fullmatch(session_id):
        raise ProjectInvalid("session_id must be 1-128 characters: letters, digits, '_' or '-'",
                             param="session_id")
    return session_id


# ----------------------------------------------------------------------------- migrations

def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _m1_projects(conn: sqlite3.Connection) -> None:
    conn.execute("""
        CREATE TABLE projects (
            id            TEXT PRIMARY KEY,
            name          TEXT NOT NULL UNIQUE COLLATE NOCASE,
            description   TEXT NOT NULL DEFAULT '',
            model         TEXT NOT NULL,
            system_prompt TEXT NOT NULL DEFAULT '',
            params        TEXT NOT NULL DEFAULT '{}',
            is_system     INTEGER NOT NULL DEFAULT 0,
            created_at    TEXT NOT NULL,
            updated_at    TEXT NOT NULL
        )""")
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    system_id, now = str(uuid.uuid4()), _now()
    conn.execute(
        "INSERT INTO projects (id, name, description, model, system_prompt, params, is_system, created_at, updated_at)"
        " VALUES (?, ?, ?, ?, '', '{}', 1, ?, ?)",
        (system_id, SYSTEM_PROJECT, "Built-in project for general chat.", DEFAULT_MODEL_ALIAS, now, now))
    conn.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (_ACTIVE_KEY, system_id))


def _m2_usage(conn: sqlite3.Connection) -> None:
    conn.execute("""
        CREATE TABLE usage (
            project_id        TEXT PRIMARY KEY REFERENCES projects(id) ON DELETE CASCADE,
            prompt_tokens     INTEGER NOT NULL DEFAULT 0,
            completion_tokens INTEGER NOT NULL DEFAULT 0,
            requests          INTEGER NOT NULL DEFAULT 0
        )""")


def _m3_exchanges(conn: sqlite3.Connection) -> None:
    conn.execute("""
        CREATE TABLE exchanges (
            id         INTEGER PRIMARY KEY AUTOINCREMENT,
            project_id TEXT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
            session_id TEXT NOT NULL,
            messages   TEXT NOT NULL,
            assistant  TEXT NOT NULL,
            usage      TEXT,
            created_at TEXT NOT NULL
        )""")
    conn.execute("CREATE INDEX exchanges_session ON exchanges (project_id, session_id, id)")


def _m4_documents(conn: sqlite3.Connection) -> None:
    """Documents and their chunks (read and written by slp.projects.documents) with their FTS5 index kept
    in step by triggers, the project's retrieval switch, and the chunks a session's exchange was given."""
    conn.execute("ALTER TABLE projects ADD COLUMN retrieval INTEGER NOT NULL DEFAULT 1")
    conn.execute("ALTER TABLE exchanges ADD COLUMN sources TEXT")
    conn.execute("""
        CREATE TABLE documents (
            id          TEXT PRIMARY KEY,
            project_id  TEXT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
            name        TEXT NOT NULL,
            source      TEXT NOT NULL,
            format      TEXT NOT NULL,
            sha256      TEXT NOT NULL,
            bytes       INTEGER NOT NULL,
            pages       INTEGER,
            chunks      INTEGER NOT NULL,
            tokens      INTEGER NOT NULL,
            index_bytes INTEGER NOT NULL,
            created_at  TEXT NOT NULL,
            updated_at  TEXT NOT NULL,
            UNIQUE (project_id, source),
            UNIQUE (project_id, sha256)
        )""")
    conn.execute("""
        CREATE TABLE chunks (
            id           INTEGER PRIMARY KEY,
            document_id  TEXT NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
            scope        TEXT NOT NULL,
            seq          INTEGER NOT NULL,
            start_offset INTEGER NOT NULL,
            end_offset   INTEGER NOT NULL,
            page         INTEGER,
            tokens       INTEGER NOT NULL,
            text         TEXT NOT NULL
        )""")
    conn.execute("CREATE INDEX chunks_document ON chunks (document_id, seq)")
    conn.execute("CREATE VIRTUAL TABLE chunks_fts USING fts5(scope, text, content='chunks', content_rowid='id',"
                 " tokenize='porter unicode61 remove_diacritics 2')")
    conn.execute("CREATE TRIGGER chunks_indexed AFTER INSERT ON chunks BEGIN"
                 " INSERT INTO chunks_fts (rowid, scope, text) VALUES (new.id, new.scope, new.text); END")
    conn.execute("CREATE TRIGGER chunks_unindexed AFTER DELETE ON chunks BEGIN"
                 " INSERT INTO chunks_fts (chunks_fts, rowid, scope, text)"
                 " VALUES ('delete', old.id, old.scope, old.text); END")


# Append only: a released migration is never edited or renumbered.
MIGRATIONS: list[tuple[int, str, Callable[[sqlite3.Connection], None]]] = [
    (1, "create_projects_and_meta", _m1_projects),
    (2, "create_usage", _m2_usage),
    (3, "create_exchanges", _m3_exchanges),
    (4, "create_documents", _m4_documents),
]

# A project row with what its documents add up to (index lookups on documents(project_id, ...)).
_PROJECTS = "SELECT p.*, " + ", ".join(
    f"(SELECT {total} FROM documents d WHERE d.project_id = p.id) AS {name}"
    for name, total in (("doc_count", "COUNT(*)"), ("doc_chunks", "COALESCE(SUM(chunks), 0)"),
                        ("doc_tokens", "COALESCE(SUM(tokens), 0)"), ("doc_bytes", "COALESCE(SUM(index_bytes), 0)"))
) + " FROM projects p"


# ----------------------------------------------------------------------------- store

class ProjectStore:
    """Projects and their history in one SQLite file; create it with the path, close it when done."""

    def __init__(self, path: Union[Path, str]):
        self.path = Path(path)
        ensure_private_dir(self.path.parent)
        self._create_private_file()
        self._lock = threading.RLock()
        self.revision = 0  # bumped by every committed change to projects (not by usage or sessions)
        self._conn: Optional[sqlite3.Connection] = self._connect()
        try:
            self._migrate()
        except BaseException:
            self.close()
            raise

    # -- plumbing

    def _create_private_file(self) -> None:
        """Create the DB file 0600 before SQLite does (its -wal/-shm files copy these permissions)."""
        fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600)
        os.close(fd)
        try:
            os.chmod(self.path, 0o600)
        except OSError:
            pass  # not ours to change; SQLite will still open it

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        conn.execute("PRAGMA foreign_keys = ON")
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        while True:  # switching to WAL may report "locked" without waiting while another process does it
            try:
                conn.execute("PRAGMA journal_mode = WAL")
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    conn.close()
                    raise
                time.sleep(0.05)
        conn.execute("PRAGMA synchronous = NORMAL")
        return conn

    @contextmanager
    def _tx(self, write: bool = False, projects_changed: bool = False) -> Iterator[sqlite3.Connection]:
        """One transaction; writes take the write lock up front so they never deadlock on upgrade.
        `projects_changed` bumps `revision` on commit, so callers' caches of projects know to refresh."""
        with self._lock:
            if self._conn is None:
                raise ProjectError("the project store is closed")
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:
                    conn.rollback()
                raise
            else:
                conn.execute("COMMIT")
                if projects_changed:
                    self.revision += 1

    def transaction(self, write: bool = False, projects_changed: bool = False
                    ) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """`_tx` for the modules that keep their own tables in this file (slp.projects.documents): a change
        that shows in a project (its document count) passes `projects_changed`, so caches refresh."""
        return self._tx(write=write, projects_changed=projects_changed)

    def _migrate(self) -> None:
        with self._tx(write=True) as conn:
            conn.execute("""
                CREATE TABLE IF NOT EXISTS schema_migrations (
                    version    INTEGER PRIMARY KEY,
                    name       TEXT NOT NULL,
                    applied_at TEXT NOT NULL
                )""")
            applied = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
            known = {version for version, _, _ in MIGRATIONS}
            if applied - known:
                raise ProjectError(f"{self.path} was written by a newer slp (schema version "
                                   f"{max(applied)}); upgrade slp to use it")
            for version, name, apply in MIGRATIONS:
                if version not in applied:
                    apply(conn)
                    conn.execute("INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                                 (version, name, _now()))

    def migrations(self) -> list[tuple[int, str, str]]:
        """Applied migrations as (version, name, applied_at), oldest first."""
        with self._tx() as conn:
            return [tuple(row) for row in conn.execute(
                "SELECT version, name, applied_at FROM schema_migrations ORDER BY version")]

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> "ProjectStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- reading helpers (call inside a transaction)

    @staticmethod
    def _active_id(conn: sqlite3.Connection) -> Optional[str]:
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (_ACTIVE_KEY,)).fetchone()
        return row[0] if row else None

    @staticmethod
    def _to_project(row: sqlite3.Row, active_id: Optional[str]) -> Project:
        return Project(
            id=row["id"], name=row["name"], description=row["description"], model=row["model"],
            system_prompt=row["system_prompt"], params=GenerationParams.model_validate(json.loads(row["params"])),
            created_at=row["created_at"], updated_at=row["updated_at"], is_system=bool(row["is_system"]),
            active=row["id"] == active_id, retrieval=bool(row["retrieval"]),
            documents=DocumentStats(count=row["doc_count"], chunks=row["doc_chunks"], tokens=row["doc_tokens"],
                                    index_bytes=row["doc_bytes"]))

    @staticmethod
    def _row(conn: sqlite3.Connection, id_or_name: str) -> sqlite3.Row:
        # An exact id wins over a project that happens to be named like an id.
        row = conn.execute(_PROJECTS + " WHERE p.id = ? OR p.name = ? ORDER BY p.id = ? DESC LIMIT 1",
                           (id_or_name, id_or_name, id_or_name)).fetchone()
        if row is None:
            raise ProjectNotFound(f"no project named or with id '{id_or_name}'")
        return row

    @staticmethod
    def _system_row(conn: sqlite3.Connection) -> sqlite3.Row:
        return conn.execute(_PROJECTS + " WHERE p.is_system = 1 ORDER BY p.created_at LIMIT 1").fetchone()

    def _get(self, conn: sqlite3.Connection, id_or_name: str) -> Project:
        return self._to_project(self._row(conn, id_or_name), self._active_id(conn))

    # -- projects

    def list(self) -> list[Project]:
        """Every project, the system project first, then oldest first."""
        with self._tx() as conn:
            active_id = self._active_id(conn)
            rows = conn.execute(_PROJECTS + " ORDER BY p.is_system DESC, p.created_at, p.name").fetchall()
            return [self._to_project(row, active_id) for row in rows]

    def get(self, id_or_name: str) -> Project:
        with self._tx() as conn:
            return self._get(conn, id_or_name)

    def create(self, data: Union[ProjectCreate, dict]) -> Project:
        spec = parse(ProjectCreate, data)
        project_id, now = str(uuid.uuid4()), _now()
        with self._tx(write=True, projects_changed=True) as conn:
            try:
                conn.execute(
                    "INSERT INTO projects (id, name, description, model, system_prompt, params, is_system,"
                    " created_at, updated_at, retrieval) VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?, ?)",
                    (project_id, spec.name, spec.description, spec.model, spec.system_prompt,
                     json.dumps(spec.params.values()), now, now, int(spec.retrieval)))
            except sqlite3.IntegrityError:
                raise ProjectConflict(f"a project named '{spec.name}' already exists",
                                      code="project_exists", param="name") from None
            return self._get(conn, project_id)

    def update(self, id_or_name: str, data: Union[ProjectUpdate, dict]) -> Project:
        patch = parse(ProjectUpdate, data)
        given = patch.model_fields_set
        with self._tx(write=True, projects_changed=True) as conn:
            row = self._row(conn, id_or_name)
            values = {key: row[key] for key in ("name", "description", "model", "system_prompt", "retrieval")}
            params = json.loads(row["params"])
            if "name" in given:
                if patch.name is None:
                    raise ProjectInvalid("name cannot be null", param="name")
                if row["is_system"] and patch.name != row["name"]:
                    raise ProjectConflict(f"'{row['name']}' is the built-in project and cannot be renamed",
                                          code="system_project", param="name")
                values["name"] = patch.name
            if "model" in given:
                if patch.model is None:
                    raise ProjectInvalid("model cannot be null", param="model")
                values["model"] = patch.model
            for key in ("description", "system_prompt"):
                if key in given:
                    values[key] = getattr(patch, key) or ""
            if "retrieval" in given:
                if patch.retrieval is None:
                    raise ProjectInvalid("retrieval cannot be null", param="retrieval")
                values["retrieval"] = int(patch.retrieval)
            if "params" in given:
                if patch.params is None:
                    params = {}
                else:
                    for key in patch.params.model_fields_set:
                        value = getattr(patch.params, key)
                        if value is None:
                            params.pop(key, None)
                        else:
                            params[key] = value
            try:
                conn.execute(
                    "UPDATE projects SET name = ?, description = ?, model = ?, system_prompt = ?, params = ?,"
                    " retrieval = ?, updated_at = ? WHERE id = ?",
                    (values["name"], values["description"], values["model"], values["system_prompt"],
                     json.dumps(params), values["retrieval"], _now(), row["id"]))
            except sqlite3.IntegrityError:
                raise ProjectConflict(f"a project named '{values['name']}' already exists",
                                      code="project_exists", param="name") from None
            return self._get(conn, row["id"])

    def delete(self, id_or_name: str) -> Project:
        """Delete a project with its usage, sessions and documents; the system project becomes active if it was."""
        with self._tx(write=True, projects_changed=True) as conn:
            row = self._row(conn, id_or_name)
            if row["is_system"]:
                raise ProjectConflict(f"'{row['name']}' is the built-in project and cannot be deleted",
                                      code="system_project")
            project = self._to_project(row, self._active_id(conn))
            conn.execute("DELETE FROM projects WHERE id = ?", (row["id"],))
            if project.active:
                conn.execute("UPDATE meta SET value = ? WHERE key = ?", (self._system_row(conn)["id"], _ACTIVE_KEY))
            return project

    def activate(self, id_or_name: str) -> Project:
        with self._tx(write=True, projects_changed=True) as conn:
            row = self._row(conn, id_or_name)
            conn.execute("INSERT INTO meta (key, value) VALUES (?, ?)"
                         " ON CONFLICT(key) DO UPDATE SET value = excluded.value", (_ACTIVE_KEY, row["id"]))
            return self._to_project(row, row["id"])

    def active(self) -> Project:
        """The project requests use when they name none (the system project if unset)."""
        with self._tx() as conn:
            active_id = self._active_id(conn)
            row = conn.execute(_PROJECTS + " WHERE p.id = ?", (active_id,)).fetchone() if active_id else None
            if row is None:
                row = self._system_row(conn)
            return self._to_project(row, row["id"])

    # -- usage and conversations

    def record_usage(self, project_id: str, prompt_tokens: Optional[int], completion_tokens: Optional[int]) -> bool:
        """Add one request's tokens to the project's totals; False if the project is gone meanwhile."""
        prompt, completion = max(int(prompt_tokens or 0), 0), max(int(completion_tokens or 0), 0)
        with self._tx(write=True) as conn:
            cur = conn.execute(
                "INSERT INTO usage (project_id, prompt_tokens, completion_tokens, requests)"
                " SELECT id, ?, ?, 1 FROM projects WHERE id = ?"
                " ON CONFLICT(project_id) DO UPDATE SET"
                "  prompt_tokens = prompt_tokens + excluded.prompt_tokens,"
                "  completion_tokens = completion_tokens + excluded.completion_tokens,"
                "  requests = requests + 1",
                (prompt, completion, project_id))
            return cur.rowcount > 0

    def record_exchange(self, project_id: str, session_id: str, messages: list[dict], assistant: dict,
                        usage: Optional[dict] = None, sources: Optional[list[dict]] = None) -> bool:
        """Store one turn of a session: the caller's messages as sent, the assistant's reply and the document
        chunks retrieval gave the prompt (`sources`).

        Does not count usage (call `record_usage` for every request). False if the project is gone.
        """
        check_session_id(session_id)
        with self._tx(write=True) as conn:
            cur = conn.execute(
                "INSERT INTO exchanges (project_id, session_id, messages, assistant, usage, created_at, sources)"
                " SELECT id, ?, ?, ?, ?, ?, ? FROM projects WHERE id = ?",
                (session_id, json.dumps(messages, ensure_ascii=False), json.dumps(assistant, ensure_ascii=False),
                 json.dumps(usage) if usage is not None else None, _now(),
                 json.dumps(sources, ensure_ascii=False) if sources else None, project_id))
            return cur.rowcount > 0

    def usage(self, id_or_name: str) -> ProjectUsage:
        with self._tx() as conn:
            row = self._row(conn, id_or_name)
            totals = conn.execute("SELECT prompt_tokens, completion_tokens, requests FROM usage WHERE project_id = ?",
                                  (row["id"],)).fetchone()
            prompt, completion, requests = tuple(totals) if totals else (0, 0, 0)
            return ProjectUsage(project_id=row["id"], project=row["name"], prompt_tokens=prompt,
                                completion_tokens=completion, total_tokens=prompt + completion, requests=requests)

    def sessions(self, id_or_name: str) -> list[SessionSummary]:
        """The project's sessions, most recently used first."""
        with self._tx() as conn:
            project_id = self._row(conn, id_or_name)["id"]
            rows = conn.execute(
                "SELECT session_id, COUNT(*) AS n, MIN(created_at) AS first, MAX(created_at) AS last,"
                " MAX(id) AS last_id FROM exchanges WHERE project_id = ? GROUP BY session_id ORDER BY last_id DESC",
                (project_id,)).fetchall()
            summaries = []
            for row in rows:
                (count,) = conn.execute("SELECT json_array_length(messages) FROM exchanges WHERE id = ?",
                                        (row["last_id"],)).fetchone()
                summaries.append(SessionSummary(
                    id=row["session_id"], project_id=project_id, exchange_count=row["n"],
                    message_count=(count or 0) + 1, created_at=row["first"], updated_at=row["last"]))
            return summaries

    def session(self, id_or_name: str, session_id: str) -> SessionDetail:
        with self._tx() as conn:
            project = self._row(conn, id_or_name)
            rows = conn.execute("SELECT * FROM exchanges WHERE project_id = ? AND session_id = ? ORDER BY id",
                                (project["id"], session_id)).fetchall()
        if not rows:
            raise SessionNotFound(f"project '{project['name']}' has no session '{session_id}'")
        exchanges = [Exchange(messages=json.loads(r["messages"]), assistant=json.loads(r["assistant"]),
                              usage=json.loads(r["usage"]) if r["usage"] else None, created_at=r["created_at"],
                              sources=json.loads(r["sources"]) if r["sources"] else None)
                     for r in rows]
        last = exchanges[-1]
        messages = [*last.messages, last.assistant]
        return SessionDetail(id=session_id, project_id=project["id"], exchange_count=len(exchanges),
                             message_count=len(messages), created_at=exchanges[0].created_at,
                             updated_at=last.created_at, messages=messages, exchanges=exchanges)
