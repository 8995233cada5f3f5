"""ProjectStore on a real SQLite file, and request shaping."""

from __future__ import annotations

import asyncio
import copy
import multiprocessing
import sqlite3
import stat
import threading
from pathlib import Path

import pytest

from slp.projects import (
    SYSTEM_PROJECT,
    GenerationParams,
    Project,
    ProjectConflict,
    ProjectCreate,
    ProjectInvalid,
    ProjectNotFound,
    ProjectStore,
    ProjectUpdate,
    SessionNotFound,
    shape_chat,
    shape_completion,
)
from slp.projects.shaping import added_usage
from slp.projects.store import MIGRATIONS


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("SLP_HOME", str(tmp_path / "home"))


@pytest.fixture
def db(tmp_path) -> Path:
    return tmp_path / "data" / "slp.db"


@pytest.fixture
def store(db):
    with ProjectStore(db) as s:
        yield s


# ----------------------------------------------------------------------------- schema and files

def test_migrations_recorded_and_idempotent(db):
    with ProjectStore(db) as s:
        first = s.migrations()
    assert [(v, n) for v, n, _ in first] == [(v, n) for v, n, _ in MIGRATIONS]
    with ProjectStore(db) as s:
        assert s.migrations() == first  # nothing re-applied
        assert [p.name for p in s.list()] == [SYSTEM_PROJECT]
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_newer_schema_is_refused(db):
    ProjectStore(db).close()
    conn = sqlite3.connect(db)
    conn.execute("INSERT INTO schema_migrations VALUES (999, 'future', 'x')")
    conn.commit()
    conn.close()
    with pytest.raises(Exception, match="newer slp"):
        ProjectStore(db)


def test_files_are_private(db):
    with ProjectStore(db) as s:
        s.create(ProjectCreate(name="p"))
        assert stat.S_IMODE(db.stat().st_mode) == 0o600
        assert stat.S_IMODE(db.parent.stat().st_mode) == 0o700
        wal = db.with_name(db.name + "-wal")
        if wal.exists():
            assert stat.S_IMODE(wal.stat().st_mode) & 0o077 == 0


# ----------------------------------------------------------------------------- system project

def test_general_chat_builtin_and_active(store):
    system = store.get(SYSTEM_PROJECT)
    assert system.is_system and system.active
    assert store.active().id == system.id
    with pytest.raises(ProjectConflict):
        store.delete(SYSTEM_PROJECT)
    with pytest.raises(ProjectConflict):
        store.update(SYSTEM_PROJECT, ProjectUpdate(name="other"))
    # Its other fields can change.
    updated = store.update(system.id, {"system_prompt": "Be nice.", "params": {"temperature": 0.3}})
    assert updated.system_prompt == "Be nice." and updated.params.temperature == 0.3 and updated.name == SYSTEM_PROJECT


def test_active_persists_across_reopen(db):
    with ProjectStore(db) as s:
        s.create({"name": "work"})
        assert s.activate("work").active
    with ProjectStore(db) as s:
        assert s.active().name == "work"
        assert [p.name for p in s.list() if p.active] == ["work"]
        s.delete("work")
        assert s.active().name == SYSTEM_PROJECT


# ----------------------------------------------------------------------------- CRUD and validation

def test_crud(store):
    p = store.create(ProjectCreate(name="notes", description="d", model="m1", system_prompt="S",
                                   params=GenerationParams(temperature=0.2, stop=["\n"])))
    assert isinstance(p, Project) and not p.active and not p.is_system
    assert store.get("notes") == p == store.get(p.id)
    assert store.get("NOTES").id == p.id  # names are unique case-insensitively
    assert p.model_dump(mode="json")["params"] == {"temperature": 0.2, "stop": ["\n"]}
    assert p.model_dump(mode="json")["object"] == "project"

    u = store.update("notes", {"name": "notes2", "params": {"temperature": None, "top_k": 5}, "description": None})
    assert (u.name, u.description, u.model) == ("notes2", "", "m1")
    assert u.params.values() == {"top_k": 5, "stop": ["\n"]}
    assert u.updated_at >= p.updated_at and u.created_at == p.created_at
    with pytest.raises(ProjectNotFound):
        store.get("notes")

    assert [x.name for x in store.list()] == [SYSTEM_PROJECT, "notes2"]
    store.delete("notes2")
    with pytest.raises(ProjectNotFound):
        store.get(p.id)
    with pytest.raises(ProjectNotFound):
        store.delete("notes2")


def test_duplicate_names_conflict(store):
    store.create({"name": "a"})
    with pytest.raises(ProjectConflict) as err:
        store.create({"name": "a"})
    assert err.value.param == "name"
    with pytest.raises(ProjectConflict):
        store.create({"name": "A"})
    store.create({"name": "b"})
    with pytest.raises(ProjectConflict):
        store.update("b", {"name": "a"})


@pytest.mark.parametrize("data, param", [
    ({"name": "bad name!"}, "name"),
    ({"name": "x" * 65}, "name"),
    ({}, "name"),
    ({"name": "ok", "colour": "red"}, "colour"),
    ({"name": "ok", "params": {"temprature": 0.5}}, "params.temprature"),
    ({"name": "ok", "params": {"temperature": "hot"}}, "params.temperature"),
    ({"name": "ok", "params": {"temperature": 2.5}}, "params.temperature"),
    ({"name": "ok", "params": {"top_k": 1.5}}, "params.top_k"),
    ({"name": "ok", "params": {"seed": True}}, "params.seed"),
    ({"name": "ok", "params": {"stop": ["a", "b", "c", "d", "e"]}}, "params.stop"),
    ({"name": "ok", "params": {"stop": 3}}, "params.stop"),
    ({"name": "ok", "params": {"presence_penalty": -3}}, "params.presence_penalty"),
    ({"name": "ok", "description": "x" * 2001}, "description"),
])
def test_invalid_create_names_the_field(store, data, param):
    with pytest.raises(ProjectInvalid) as err:
        store.create(data)
    assert err.value.param == param
    assert param in str(err.value) or param == "name"
    assert [p.name for p in store.list()] == [SYSTEM_PROJECT]


def test_invalid_update_names_the_field(store):
    store.create({"name": "p"})
    with pytest.raises(ProjectInvalid) as err:
        store.update("p", {"params": {"max_tokens": 0}})
    assert err.value.param == "params.max_tokens"
    with pytest.raises(ProjectInvalid) as err:
        store.update("p", {"nme": "q"})
    assert err.value.param == "nme"
    with pytest.raises(ProjectInvalid):
        store.update("p", {"model": None})


# ----------------------------------------------------------------------------- concurrency

def test_concurrent_creates_threads(store):
    barrier = threading.Barrier(8)
    results: list[str] = []

    def worker():
        barrier.wait()
        try:
            store.create({"name": "race"})
            results.append("won")
        except ProjectConflict:
            results.append("conflict")

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["conflict"] * 7 + ["won"]
    assert [p.name for p in store.list()].count("race") == 1


def _create_in_process(db: str, barrier, results) -> None:
    with ProjectStore(Path(db)) as s:  # every process also races the migrations
        barrier.wait()
        try:
            s.create({"name": "race"})
            results.put("won")
        except ProjectConflict:
            results.put("conflict")


def test_concurrent_creates_processes(db):
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_create_in_process, args=(str(db), barrier, results)) for _ in range(4)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert sorted(outcomes) == ["conflict"] * 3 + ["won"]
    with ProjectStore(db) as s:
        assert sorted(p.name for p in s.list()) == [SYSTEM_PROJECT, "race"]
        assert len(s.migrations()) == len(MIGRATIONS)


# ----------------------------------------------------------------------------- usage and sessions

def test_usage_sums(store):
    p = store.create({"name": "p"})
    assert store.usage("p").requests == 0
    store.record_usage(p.id, 10, 5)
    store.record_usage(p.id, 1, None)
    u = store.usage("p")
    assert (u.prompt_tokens, u.completion_tokens, u.total_tokens, u.requests) == (11, 5, 16, 2)
    assert store.usage(SYSTEM_PROJECT).requests == 0
    assert store.record_usage("no-such-id", 1, 1) is False


def test_exchanges_and_sessions(store):
    p = store.create({"name": "p"})
    first = [{"role": "user", "content": "hi"}]
    reply1 = {"role": "assistant", "content": "hello"}
    second = [*first, reply1, {"role": "user", "content": "more"}]
    reply2 = {"role": "assistant", "content": "sure"}
    assert store.record_exchange(p.id, "s1", first, reply1, {"prompt_tokens": 3, "completion_tokens": 1})
    store.record_exchange(p.id, "s1", second, reply2, None)
    store.record_exchange(p.id, "s2", first, reply1)

    sessions = store.sessions("p")
    assert [s.id for s in sessions] == ["s2", "s1"]  # most recent first
    s1 = next(s for s in sessions if s.id == "s1")
    assert (s1.exchange_count, s1.message_count) == (2, 4)

    detail = store.session("p", "s1")
    assert detail.messages == [*second, reply2]
    assert [e.messages for e in detail.exchanges] == [first, second]
    assert detail.exchanges[0].usage == {"prompt_tokens": 3, "completion_tokens": 1}
    assert detail.message_count == 4

    with pytest.raises(SessionNotFound):
        store.session("p", "nope")
    with pytest.raises(ProjectInvalid) as err:
        store.record_exchange(p.id, "bad id!", first, reply1)
    assert err.value.param == "session_id"
    assert store.sessions(SYSTEM_PROJECT) == []

    store.delete("p")  # takes its sessions and usage with it
    store.create({"name": "p"})
    assert store.sessions("p") == []


# ----------------------------------------------------------------------------- shaping

def _project(**kw) -> Project:
    now = "2024-01-01T00:00:00Z"
    return Project(id="pid", name="p", created_at=now, updated_at=now, **kw)


def test_shape_merges_system_prompt():
    project = _project(system_prompt="PROJECT")
    body = {"messages": [{"role": "user", "content": "hi"}]}
    assert shape_chat(body, project)["messages"] == [{"role": "system", "content": "PROJECT"},
                                                     {"role": "user", "content": "hi"}]
    body = {"messages": [{"role": "user", "content": "hi"}, {"role": "system", "content": "CALLER"},
                         {"role": "system", "content": [{"type": "text", "text": "PARTS"}]}]}
    assert shape_chat(body, project)["messages"] == [
        {"role": "system", "content": "PROJECT\n\nCALLER\n\nPARTS"}, {"role": "user", "content": "hi"}]
    list_body = {"messages": [{"role": "system", "content": [{"type": "text", "text": "A"},
                                                             {"type": "text", "text": "B"}]},
                              {"role": "user", "content": [{"type": "text", "text": "q"}]}]}
    out = shape_chat(list_body, project)["messages"]
    assert out[0] == {"role": "system", "content": "PROJECT\n\nA\nB"}
    assert out[1] == {"role": "user", "content": [{"type": "text", "text": "q"}]}


def test_shape_without_project_prompt_keeps_messages():
    body = {"messages": [{"role": "user", "content": "hi"}, {"role": "system", "content": "late"}]}
    assert shape_chat(body, _project())["messages"] == body["messages"]


def test_shape_params_model_and_agent_fields():
    project = _project(model="proj-model", params=GenerationParams(temperature=0.1, top_p=0.5, max_tokens=64,
                                                                   stop=["x"]))
    body = {"messages": [], "temperature": 0.9, "project_id": "p", "session_id": "s", "stream": True}
    snapshot = copy.deepcopy(body)
    out = shape_chat(body, project)
    assert body == snapshot  # input untouched
    assert "project_id" not in out and "session_id" not in out
    assert out["temperature"] == 0.9 and out["top_p"] == 0.5 and out["max_tokens"] == 64
    assert out["stop"] == ["x"] and out["model"] == "proj-model"
    assert out["stream_options"] == {"include_usage": True}
    out["stop"].append("y")
    assert project.params.stop == ["x"]  # no aliasing into the project

    caller = {"messages": [], "model": "mine", "max_completion_tokens": 5, "stream": True,
              "stream_options": {"include_usage": False, "other": 1}}
    out = shape_chat(caller, project)
    assert out["model"] == "mine" and "max_tokens" not in out
    # slp asks for usage to count the stream, and knows to keep it from this caller, who did not ask
    assert out["stream_options"] == {"include_usage": True, "other": 1} and added_usage(caller, out)
    assert caller["stream_options"] == {"include_usage": False, "other": 1}
    asked = {"messages": [], "stream": True, "stream_options": {"include_usage": True}}
    assert not added_usage(asked, shape_chat(asked, project))
    assert "stream_options" not in shape_chat({"messages": []}, project)
    assert "stream_options" not in shape_chat({"messages": [], "stream": None}, project)

    out = shape_completion({"prompt": "p", "session_id": "s", "top_p": 1.0}, _project(
        system_prompt="ignored", params=GenerationParams(top_p=0.2, seed=7)))
    assert out == {"prompt": "p", "top_p": 1.0, "seed": 7, "model": "slp-orchestra-mini"}


def test_messages_not_mutated_by_merge():
    body = {"messages": [{"role": "system", "content": "c"}, {"role": "user", "content": "u"}]}
    snapshot = copy.deepcopy(body)
    shape_chat(body, _project(system_prompt="P"))
    assert body == snapshot


# ----------------------------------------------------------------------------- the proxy's usage recorder

async def test_recorder_flush_returns_under_steady_traffic(store):
    """flush() waits for what was recorded before it, not for a queue that never empties."""
    from slp.server.services import UsageRecorder as Recorder

    project = store.active()
    recorder = Recorder(store)
    recorder.start()
    busy = True

    async def traffic() -> None:
        while busy:  # faster than batches are written: the queue never empties
            for _ in range(20):
                recorder.record(project.id, {"prompt_tokens": 1, "completion_tokens": 1}, None, None)
            await asyncio.sleep(0.001)

    feeder = asyncio.ensure_future(traffic())
    try:
        await asyncio.sleep(0.1)
        recorder.record(project.id, {"prompt_tokens": 1000, "completion_tokens": 0}, None, None)
        await asyncio.wait_for(recorder.flush(), 10)
        assert store.usage(project.id).prompt_tokens >= 1000
    finally:
        busy = False
        await feeder
        await recorder.stop()
