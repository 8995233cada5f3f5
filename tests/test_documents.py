"""A project's documents (issue #24): files the tests make (a Markdown file, an HTML page, a PDF of five pages
whose page 3 holds a fact found nowhere else), indexed in a real SQLite file, searched, given to chats.

- the index itself (slp.projects.documents), without an agent: chunks and their offsets, the same content
  stored once, a changed file replacing its chunks, every bad input leaving the index as it was, deleting
  a project deleting its chunks, and a database from before documents upgraded in place;
- the API and what chats get, over real HTTP against an agent whose engine is the stand-in
  (tests/standin_engine.py, named as such: it records the exact request the engine received);
- the CLI (`slp project add-doc/docs/search/rm-doc/show/update --retrieval`) against that agent;
- the real engine (the shared agent): the prompt it builds holds the page-3 chunk (`/apply-template`, and
  the chat's prompt tokens), and its replies name the PDF in `annotations`, streamed and not.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import uuid
from pathlib import Path

import pytest
import requests

from bench.documents import make_pdf
from conftest import REPO
from slp.projects import ProjectStore
from slp.projects.chunking import CHARS_PER_TOKEN, CHUNK_TOKENS, chunk_text, query_terms
from slp.projects.documents import DocumentIndex
from slp.projects.extract import DocumentRefused, extract, html_text
from slp.projects.files import walk

FACT = "The harbour gate code is 4417-ZEBRA."  # short: on one line of the PDF page
QUESTION = "What is the harbour gate code?"
PAGES = [
    "Chapter one. Rigging a small sailboat starts with the mast. Check the shrouds, the forestay and the "
    "backstay for wear before every season, and replace any wire with broken strands.",
    "Chapter two. The bilge pump should be serviced twice a year. Clean the strainer, test the float switch "
    "and run the pump dry for no more than a few seconds.",
    "Chapter three. Mooring. " + FACT + " The harbour master changes it every spring. Visitors tie up on "
    "the outer pontoon and pay at the office.",
    "Chapter four. Sails last longer when rinsed with fresh water and dried before they are folded. Store "
    "them out of the sun and away from mice.",
    "Chapter five. Engines. Change the oil and the impeller each winter, and keep a spare fuel filter aboard.",
]
MARKDOWN = "# Crew notes\n\nThe crew meets on Saturdays at nine.\n\n## Food\n\nBring sandwiches and water.\n"
HTML = ("<!doctype html><html><head><title>Club page</title><style>p {color: red}</style>"
        "<script>var secret = 'not text';</script></head><body><h1>Sailing club</h1>"
        "<p>The club house opens at <b>eight</b> &amp; closes at six.</p><ul><li>Kayaks</li><li>Dinghies</li></ul>"
        "</body></html>")


# ----------------------------------------------------------------------------- files the tests make

@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("documents")
    made = {"manual.pdf": make_pdf(PAGES), "crew.md": MARKDOWN.encode(), "club.html": HTML.encode(),
            "locked.pdf": make_pdf(["A secret page."], password="hunter2"),
            "broken.pdf": b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\n",  # no pages, no xref, no trailer
            "photo.png": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 4,
            "empty.txt": b"", "blank.md": b"   \n\n\t\n"}
    paths = {}
    for name, data in made.items():
        paths[name] = folder / name
        paths[name].write_bytes(data)
    return paths


# ----------------------------------------------------------------------------- the index, no agent

@pytest.fixture
def index(tmp_path):
    store = ProjectStore(tmp_path / "data" / "slp.db")
    store.create({"name": "boat"})
    yield DocumentIndex(store)
    store.close()


def table_counts(store: ProjectStore) -> tuple[int, int, int]:
    """(documents, chunks, rows of the full-text index)."""
    with store.transaction() as conn:
        return tuple(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
                     for table in ("documents", "chunks", "chunks_fts_docsize"))


def test_the_page_3_fact_is_found_first_with_its_page_and_offsets(index, files):
    for name in ("manual.pdf", "crew.md", "club.html"):
        assert index.add("boat", files[name].read_bytes(), name, source=str(files[name])).status == "added"
    docs = {d.name: d for d in index.list("boat")}
    assert {n: d.format for n, d in docs.items()} == {"manual.pdf": "pdf", "crew.md": "markdown", "club.html": "html"}
    assert docs["manual.pdf"].pages == 5 and docs["manual.pdf"].chunks == 5  # a chunk never crosses a page
    hits = index.search("boat", QUESTION, top_k=3)
    assert hits[0].name == "manual.pdf" and hits[0].page == 3 and FACT in hits[0].text
    assert all(FACT not in hit.text for hit in hits[1:])
    text = extract(files["manual.pdf"].read_bytes(), "manual.pdf").text
    assert text[hits[0].start:hits[0].end] == hits[0].text  # offsets into the document's text
    assert index.store.get("boat").documents.count == 3


def test_chunks_overlap_and_their_offsets_are_the_files_own():
    words = " ".join(f"word{i}" for i in range(2000))
    text = "Intro line.\r\n\r\n" + words + "\n"
    chunks = chunk_text(extract(text.encode(), "long.txt"))
    assert len(chunks) > 3
    for chunk in chunks:
        assert text[chunk.start:chunk.end] == chunk.text  # character offsets into the file itself
        assert len(chunk.text) <= CHUNK_TOKENS * CHARS_PER_TOKEN
    for before, after in zip(chunks, chunks[1:]):
        assert before.start < after.start < before.end < after.end  # overlapping, moving forward


def test_html_is_its_visible_text():
    text = html_text(HTML)
    assert "The club house opens at eight & closes at six." in text and "Kayaks\n" in text
    assert "secret" not in text and "color" not in text and text.startswith("Club page")


def test_query_terms_leave_stop_words_out():
    assert query_terms(QUESTION) == ["harbour", "gate", "code"]
    assert query_terms("what is it?") == ["what", "is", "it"]  # nothing but stop words: search them anyway
    assert query_terms("   ") == []


def test_same_content_is_stored_once_and_a_changed_file_replaces_its_chunks(index, tmp_path):
    path = tmp_path / "log.md"
    path.write_text("The anchor chain is forty metres long.")
    first = index.add("boat", path.read_bytes(), path.name, source=str(path))
    again = index.add("boat", path.read_bytes(), "copy.md", source="/elsewhere/copy.md")
    assert again.status == "unchanged" and again.document.id == first.document.id
    path.write_text("The anchor chain is fifty metres long.")
    changed = index.add("boat", path.read_bytes(), path.name, source=str(path))
    assert changed.status == "replaced" and changed.document.id == first.document.id
    assert [h.text for h in index.search("boat", "anchor chain")] == ["The anchor chain is fifty metres long."]
    assert table_counts(index.store) == (1, 1, 1)


@pytest.mark.parametrize("name, code", [
    ("locked.pdf", "pdf_encrypted"), ("broken.pdf", "pdf_unreadable"), ("photo.png", "document_binary"),
    ("empty.txt", "document_empty"), ("blank.md", "document_empty"),
])
def test_bad_documents_are_refused_and_leave_the_index_as_it_was(index, files, name, code):
    index.add("boat", files["crew.md"].read_bytes(), "crew.md")
    before = table_counts(index.store)
    with pytest.raises(DocumentRefused) as refused:
        index.add("boat", files[name].read_bytes(), name)
    assert refused.value.code == code and name in refused.value.message and "\n" not in refused.value.message
    assert table_counts(index.store) == before


def test_a_document_over_the_size_limit_is_refused(index):
    with pytest.raises(DocumentRefused) as refused:
        index.add("boat", b"x" * 1001, "big.txt", max_bytes=1000)
    assert refused.value.code == "document_too_large" and refused.value.status == 413
    assert table_counts(index.store) == (0, 0, 0)


def test_a_failure_inside_the_transaction_writes_nothing(index, files, monkeypatch):
    """One transaction per document: a chunk that cannot be written rolls the document row back too."""
    import slp.projects.documents as documents

    real = documents.chunk_text
    monkeypatch.setattr(documents, "chunk_text", lambda doc: [*real(doc), None])  # the last row fails
    with pytest.raises(AttributeError):
        index.add("boat", files["crew.md"].read_bytes(), "crew.md")
    assert table_counts(index.store) == (0, 0, 0)


def test_deleting_a_project_deletes_its_documents_chunks_and_index(index, files):
    store = index.store
    store.create({"name": "other"})
    index.add("boat", files["manual.pdf"].read_bytes(), "manual.pdf")
    index.add("other", files["crew.md"].read_bytes(), "crew.md")
    assert index.search("other", QUESTION) == []  # a project's search never sees another's chunks
    store.delete("boat")
    assert table_counts(store) == (1, 1, 1)
    with store.transaction() as conn:
        conn.execute("INSERT INTO chunks_fts (chunks_fts) VALUES ('integrity-check')")  # raises if out of step


def test_a_database_from_before_documents_is_upgraded_in_place(tmp_path, files):
    from slp.projects import store as store_module

    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
                 "applied_at TEXT NOT NULL)")
    for version, name, apply in store_module.MIGRATIONS[:3]:
        apply(conn)
        conn.execute("INSERT INTO schema_migrations VALUES (?, ?, '2026-01-01T00:00:00+00:00')", (version, name))
    conn.execute("INSERT INTO projects (id, name, model, created_at, updated_at) VALUES ('p1', 'old', 'm', "
                 "'2026-01-01T00:00:00+00:00', "
                 "'2026-01-01T00:00:00+00:00')")
    conn.commit()
    conn.close()
    with ProjectStore(path) as store:
        assert [m[1] for m in store.migrations()][-1] == "create_documents"
        old = store.get("old")
        assert old.retrieval and old.documents.count == 0
        DocumentIndex(store).add("old", files["crew.md"].read_bytes(), "crew.md")
        assert store.get("old").documents.count == 1


def test_a_folder_walk_skips_hidden_ignored_and_binary_files(tmp_path, files):
    root = tmp_path / "notes"
    (root / "sub").mkdir(parents=True)
    (root / ".git").mkdir()
    (root / ".git" / "config").write_text("[core]")
    (root / "a.md").write_text("alpha")
    (root / "sub" / "b.py").write_text("print('beta')")
    (root / ".secret.txt").write_text("hidden")
    (root / "debug.log").write_text("ignored")
    (root / "build").mkdir()
    (root / "build" / "out.txt").write_text("ignored too")
    (root / ".gitignore").write_text("*.log\nbuild/\n")
    (root / "sub" / ".gitignore").write_text("/local.txt\n")
    (root / "sub" / "local.txt").write_text("ignored by the sub folder's rules")
    (root / "photo.png").write_bytes(files["photo.png"].read_bytes())
    (root / "manual.pdf").write_bytes(files["manual.pdf"].read_bytes())
    found = walk([root])
    assert [p.relative_to(root).as_posix() for p in found.files] == ["a.md", "manual.pdf", "sub/b.py"]
    assert {p.relative_to(root).as_posix(): why for p, why in found.skipped} == {
        ".git": "hidden", ".gitignore": "hidden", ".secret.txt": "hidden", "build": "ignored",
        "debug.log": "ignored", "photo.png": "binary", "sub/.gitignore": "hidden", "sub/local.txt": "ignored"}
    with pytest.raises(FileNotFoundError):
        walk([root / "missing"])


# ----------------------------------------------------------------------------- the API and chats (stand-in engine)

def new_project(agent, **fields) -> dict:
    resp = requests.post(f"{agent.url}/v1/projects", json={"name": f"d-{uuid.uuid4().hex[:8]}", **fields}, timeout=10)
    assert resp.status_code == 201, resp.text
    return resp.json()


def upload(agent, project: dict, path: Path, source: str | None = None) -> requests.Response:
    data = {"source": source} if source else None
    with open(path, "rb") as file:
        return requests.post(f"{agent.url}/v1/projects/{project['id']}/documents", files={"file": (path.name, file)},
                             data=data, timeout=30)


def add_path(agent, project: dict, path) -> requests.Response:
    return requests.post(f"{agent.url}/v1/projects/{project['id']}/documents", json={"path": str(path)}, timeout=30)


def documents_of(agent, project: dict) -> list[dict]:
    return requests.get(f"{agent.url}/v1/projects/{project['id']}/documents", timeout=10).json()["data"]


def search(agent, project: dict, query: str = QUESTION, top_k: int = 5) -> list[dict]:
    resp = requests.post(f"{agent.url}/v1/projects/{project['id']}/search", json={"query": query, "top_k": top_k},
                         timeout=10)
    assert resp.status_code == 200, resp.text
    return resp.json()["data"]


def engine_requests(agent) -> list[dict]:
    """What the stand-in engine received, in order (it records each request's bytes)."""
    found = sorted(agent.record.glob("*.request.json"), key=lambda p: (p.stat().st_mtime_ns, p.name))
    return [json.loads(p.read_bytes()) for p in found]


def chat(agent, project: dict, **fields) -> requests.Response:
    body = {"messages": [{"role": "user", "content": QUESTION}], "project_id": project["id"], **fields}
    return requests.post(f"{agent.url}/v1/chat/completions", json=body, timeout=30, stream=bool(fields.get("stream")))


def events_of(resp: requests.Response) -> list:
    return [json.loads(line[6:]) if line != b"data: [DONE]" else "[DONE]"
            for line in resp.iter_lines() if line.startswith(b"data: ")]


@pytest.fixture(scope="module")
def boat(standin_agent, files) -> dict:
    """A project on the stand-in agent with the three documents: Markdown and HTML uploaded, the PDF by path."""
    project = new_project(standin_agent, system_prompt="You are the harbour's assistant.")
    for name in ("crew.md", "club.html"):
        assert upload(standin_agent, project, files[name]).status_code == 201
    resp = add_path(standin_agent, project, files["manual.pdf"])
    assert resp.status_code == 201, resp.text
    assert resp.json()["document"]["source"] == str(files["manual.pdf"].resolve())
    return project


def test_api_lists_searches_and_shows_the_documents(standin_agent, boat):
    docs = documents_of(standin_agent, boat)
    assert sorted((d["name"], d["format"]) for d in docs) == [("club.html", "html"), ("crew.md", "markdown"),
                                                              ("manual.pdf", "pdf")]
    hits = search(standin_agent, boat)
    assert hits[0]["name"] == "manual.pdf" and hits[0]["page"] == 3 and FACT in hits[0]["text"]
    assert set(hits[0]) >= {"document", "name", "text", "score", "start", "end"}
    pdf = next(d for d in docs if d["name"] == "manual.pdf")
    for ref in (pdf["id"], "manual.pdf"):
        assert requests.get(f"{standin_agent.url}/v1/projects/{boat['name']}/documents/{ref}",
                            timeout=10).json() == pdf
    shown = requests.get(f"{standin_agent.url}/v1/projects/{boat['id']}", timeout=10).json()
    assert shown["documents"]["count"] == 3 and shown["documents"]["index_bytes"] > len(FACT) and shown["retrieval"]


def test_a_chat_is_given_the_page_3_chunk_and_names_the_pdf(standin_agent, boat):
    session = "s-" + uuid.uuid4().hex[:8]
    reply = chat(standin_agent, boat, session_id=session).json()
    sent = engine_requests(standin_agent)[-1]
    system = sent["messages"][0]
    assert system["role"] == "system" and system["content"].startswith("You are the harbour's assistant.")
    assert FACT in system["content"] and "manual.pdf, page 3" in system["content"]
    assert sent["messages"][1:] == [{"role": "user", "content": QUESTION}]
    annotations = reply["choices"][0]["message"]["annotations"]
    first = annotations[0]
    assert first["type"] == "file_citation" and first["file_citation"]["name"] == "manual.pdf"
    assert set(first["file_citation"]) == {"document", "name", "start", "end"}
    hit = search(standin_agent, boat)[0]
    assert (first["file_citation"]["start"], first["file_citation"]["end"]) == (hit["start"], hit["end"])

    with chat(standin_agent, boat, stream=True, session_id=session) as resp:
        events = events_of(resp)
    assert events[-1] == "[DONE]"
    last = events[-2]
    assert last["choices"][0]["delta"]["annotations"] == annotations and last["id"] == events[0]["id"]
    assert all("annotations" not in (e["choices"][0]["delta"] if e["choices"] else {}) for e in events[:-2])

    def stored():
        got = requests.get(f"{standin_agent.url}/v1/projects/{boat['id']}/sessions/{session}", timeout=10).json()
        return got if len(got.get("exchanges", [])) == 2 else None

    from conftest import wait_for

    exchanges = wait_for(stored, 10, "both exchanges stored")["exchanges"]
    for exchange in exchanges:
        assert exchange["sources"][0]["name"] == "manual.pdf" and exchange["sources"][0]["page"] == 3
        assert exchange["assistant"]["annotations"] == annotations


def test_retrieval_can_be_turned_off_by_the_request_and_by_the_project(standin_agent, boat):
    reply = chat(standin_agent, boat, retrieval=False).json()
    sent = engine_requests(standin_agent)[-1]
    assert "retrieval" not in sent and FACT not in json.dumps(sent)
    assert "annotations" not in reply["choices"][0]["message"]
    off = new_project(standin_agent, retrieval=False)
    assert upload(standin_agent, off, REPO / "bench" / "documents.py").status_code == 201  # retrieval off
    asked = [{"role": "user", "content": "What does make_pdf do?"}]
    chat(standin_agent, off, messages=asked)
    assert engine_requests(standin_agent)[-1]["messages"] == asked
    patched = requests.patch(f"{standin_agent.url}/v1/projects/{off['id']}", json={"retrieval": True}, timeout=10)
    assert patched.json()["retrieval"] is True
    chat(standin_agent, off, messages=asked)
    system = engine_requests(standin_agent)[-1]["messages"][0]
    assert system["role"] == "system" and "def make_pdf(" in system["content"]


def test_a_project_without_documents_sends_the_clients_bytes_unchanged(standin_agent):
    """The fast path stays: nothing retrieved, nothing re-encoded (the engine gets the very bytes sent)."""
    project = new_project(standin_agent)
    raw = json.dumps({"model": "slp-orchestra-mini", "messages": [{"role": "user", "content": QUESTION}],
                      "max_tokens": 2}).encode()
    resp = requests.post(f"{standin_agent.url}/v1/chat/completions", data=raw, timeout=30,
                         headers={"Content-Type": "application/json", "X-SLP-Project": project["id"]})
    assert resp.status_code == 200 and "annotations" not in resp.json()["choices"][0]["message"]
    newest = max(standin_agent.record.glob("*.request.json"), key=lambda p: p.stat().st_mtime_ns)
    assert newest.read_bytes() == raw


def test_removing_a_document_takes_its_chunks_out_of_search_and_chats(standin_agent, files):
    project = new_project(standin_agent)
    added = add_path(standin_agent, project, files["manual.pdf"]).json()["document"]
    assert search(standin_agent, project)[0]["page"] == 3
    gone = requests.delete(f"{standin_agent.url}/v1/projects/{project['id']}/documents/{added['id']}", timeout=10)
    assert gone.json() == {"id": added["id"], "object": "project.document.deleted", "deleted": True}
    assert search(standin_agent, project) == [] and documents_of(standin_agent, project) == []
    reply = chat(standin_agent, project).json()
    assert "annotations" not in reply["choices"][0]["message"]
    assert FACT not in json.dumps(engine_requests(standin_agent)[-1])
    again = requests.delete(f"{standin_agent.url}/v1/projects/{project['id']}/documents/{added['id']}", timeout=10)
    assert again.status_code == 404 and again.json()["error"]["code"] == "document_not_found"


def unix_socket(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    return sock


def test_bad_input_gets_one_clear_error_and_leaves_the_index_as_it_was(standin_agent, files, tmp_path):
    project = new_project(standin_agent)
    assert upload(standin_agent, project, files["crew.md"]).status_code == 201
    hidden = tmp_path / ".private" / "keys.txt"
    hidden.parent.mkdir()
    hidden.write_text("a key")
    sparse = tmp_path / "huge.txt"
    with open(sparse, "wb") as file:
        file.truncate(33 * 1024 * 1024)  # over the 32 MiB default, without writing it
    sock = unix_socket(tmp_path / "agent.sock")  # a path that exists but cannot be read as a file
    try:
        cases = [
            (upload(standin_agent, project, files["locked.pdf"]), 400, "pdf_encrypted"),
            (upload(standin_agent, project, files["broken.pdf"]), 400, "pdf_unreadable"),
            (upload(standin_agent, project, files["photo.png"]), 415, "document_binary"),
            (upload(standin_agent, project, files["empty.txt"]), 400, "document_empty"),
            (add_path(standin_agent, project, sparse), 413, "document_too_large"),
            (add_path(standin_agent, project, tmp_path / "missing.txt"), 400, "path_unreadable"),
            (add_path(standin_agent, project, tmp_path / "agent.sock"), 400, "path_unreadable"),
            (add_path(standin_agent, project, tmp_path), 400, "path_unreadable"),
            (add_path(standin_agent, project, "relative/notes.md"), 400, "path_unreadable"),
            (add_path(standin_agent, project, hidden), 400, "path_not_allowed"),
            (add_path(standin_agent, project, "/tmp/nul\x00.md"), 400, "path_unreadable"),
            (requests.post(f"{standin_agent.url}/v1/projects/{project['id']}/documents", files={"other": b"x"},
                           timeout=10), 400, "invalid_multipart"),
            (requests.post(f"{standin_agent.url}/v1/projects/{project['id']}/documents", files={"file": b"notes"},
                           data={"source": "s" * 5000}, timeout=10), 400, "invalid_value"),  # found by fuzzing
            (requests.post(f"{standin_agent.url}/v1/projects/no-such-project/documents", json={"path": str(hidden)},
                           timeout=10), 404, "project_not_found"),
        ]
    finally:
        sock.close()
    for resp, status, code in cases:
        error = resp.json()["error"]
        assert (resp.status_code, error["code"]) == (status, code), resp.text
        assert error["message"] and "\n" not in error["message"] and "Traceback" not in error["message"]
    assert [d["name"] for d in documents_of(standin_agent, project)] == ["crew.md"]


def test_a_path_may_be_added_only_from_loopback():
    from slp.server.documents_routes import loopback

    assert loopback("127.0.0.1") and loopback("::1") and loopback("127.8.0.1")
    assert not loopback("192.168.1.20") and not loopback("10.0.0.2") and not loopback(None) and not loopback("")


# ----------------------------------------------------------------------------- the CLI (stand-in engine)

def test_cli_adds_lists_searches_and_removes_documents(standin_agent, files, tmp_path):
    name = f"cli-{uuid.uuid4().hex[:6]}"
    standin_agent.cli("project", "create", name, check=True)
    folder = tmp_path / "notes"
    folder.mkdir()
    for file in ("manual.pdf", "crew.md", "photo.png"):
        (folder / file).write_bytes(files[file].read_bytes())
    (folder / ".hidden.md").write_text("hidden")
    added = standin_agent.cli("project", "add-doc", "--project", name, str(folder), check=True)
    assert f"Project {name}: 2 added; skipped 2 (hidden, ignored or binary)." in added.stdout
    listed = json.loads(standin_agent.cli("project", "docs", "--project", name, "--json", check=True).stdout)
    assert sorted(d["name"] for d in listed) == ["crew.md", "manual.pdf"]
    assert all(d["source"].startswith(str(folder)) for d in listed)
    again = standin_agent.cli("project", "add-doc", "--project", name, str(folder / "crew.md"), check=True)
    assert "1 unchanged" in again.stdout
    found = standin_agent.cli("project", "search", QUESTION, "--project", name, check=True).stdout
    assert found.startswith("1. manual.pdf (page 3, ") and "4417-ZEBRA" in found.splitlines()[1]
    shown = standin_agent.cli("project", "show", name, check=True).stdout
    assert "documents:    2 (" in shown and "retrieval:    on" in shown
    locked = standin_agent.cli("project", "add-doc", "--project", name, str(files["locked.pdf"]))
    assert locked.returncode == 1 and locked.stdout == ""
    assert locked.stderr.strip().splitlines() == [
        "Error: locked.pdf is an encrypted PDF; decrypt it first (e.g. qpdf --decrypt --password=... in.pdf out.pdf)"]
    missing = standin_agent.cli("project", "add-doc", "--project", name, str(tmp_path / "nope.md"))
    assert missing.returncode == 1 and missing.stderr.strip() == f"Error: {tmp_path / 'nope.md'} does not exist"
    standin_agent.cli("project", "update", name, "--retrieval", "off", check=True)
    assert "retrieval:    off" in standin_agent.cli("project", "show", name, check=True).stdout
    removed = standin_agent.cli("project", "rm-doc", "--project", name, "manual.pdf", check=True)
    assert removed.stdout.strip() == f"Removed manual.pdf from project {name}."
    assert standin_agent.cli("project", "search", QUESTION, "--project", name, check=True).stdout.strip() == \
        "No matches."


# ----------------------------------------------------------------------------- the real engine

def test_real_engine_prompt_holds_the_page_3_chunk_and_replies_name_the_pdf(agent, files):
    project = new_project(agent)
    assert add_path(agent, project, files["manual.pdf"]).status_code == 201
    question = {"messages": [{"role": "user", "content": QUESTION}], "project_id": project["id"]}
    templated = requests.post(f"{agent.url}/apply-template", json=question, timeout=60)
    assert templated.status_code == 200, templated.text
    prompt = templated.json()["prompt"]
    assert FACT in prompt and "manual.pdf, page 3" in prompt and prompt.index(FACT) < prompt.rindex(QUESTION)
    plain = requests.post(f"{agent.url}/apply-template", json={**question, "retrieval": False}, timeout=60).json()
    assert FACT not in plain["prompt"]

    def tokens(text: str) -> int:
        resp = requests.post(f"{agent.url}/tokenize", json={"content": text, "project_id": project["id"]}, timeout=60)
        return len(resp.json()["tokens"])

    reply = requests.post(f"{agent.url}/v1/chat/completions", json={**question, "max_tokens": 2}, timeout=120).json()
    citation = reply["choices"][0]["message"]["annotations"][0]["file_citation"]
    assert citation["name"] == "manual.pdf"
    # The engine's prompt was the templated one, excerpt included: its token count, within a token or two for
    # the special tokens /tokenize does not parse as such.
    assert abs(reply["usage"]["prompt_tokens"] - tokens(prompt)) <= 2 < tokens(FACT)
    with requests.post(f"{agent.url}/v1/chat/completions", json={**question, "max_tokens": 2, "stream": True},
                       timeout=120, stream=True) as resp:
        events = events_of(resp)
    assert events[-1] == "[DONE]"
    assert events[-2]["choices"][0]["delta"]["annotations"][0]["file_citation"] == citation


def test_ollamas_chat_and_generate_are_given_the_documents_too(standin_agent, boat):
    """An Ollama-only tool naming the project as its model gets the same excerpts in the prompt (its answer
    has no field to name them in); `"retrieval": false` turns it off there too."""
    for path, body in (("/api/chat", {"messages": [{"role": "user", "content": QUESTION}]}),
                       ("/api/generate", {"prompt": QUESTION})):
        resp = requests.post(f"{standin_agent.url}{path}", json={"model": boat["name"], "stream": False, **body},
                             timeout=30)
        assert resp.status_code == 200 and resp.json()["done"] is True, resp.text
        system = engine_requests(standin_agent)[-1]["messages"][0]
        assert system["role"] == "system" and FACT in system["content"], system
        assert "X-SLP-Unknown-Fields" not in resp.headers
    off = requests.post(f"{standin_agent.url}/api/chat", json={"model": boat["name"], "stream": False,
                        "retrieval": False, "messages": [{"role": "user", "content": QUESTION}]}, timeout=30)
    assert off.status_code == 200 and "X-SLP-Unknown-Fields" not in off.headers
    sent = engine_requests(standin_agent)[-1]
    assert FACT not in json.dumps(sent) and "retrieval" not in sent
