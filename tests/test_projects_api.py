"""The /v1/projects routes over real HTTP on loopback, and the project CLI against them; `slp chat` against
a real agent (its engine the stand-in, so the test runs in seconds)."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import threading
from typing import Any, Optional

import pytest
import typer
from aiohttp import web
from typer.testing import CliRunner

from slp.cli.chat import chat
from slp.cli.project import app as project_app
from slp.projects import ProjectStore
from slp.server.middleware import error_middleware, make_auth
from slp.server.api import ROUTES
from slp.server.projects_routes import PROJECT_ROUTES, ProjectRoutes
from slp.server.route_table import register

MODELS = {"slp-orchestra-mini", "SmolLM2-135M-Instruct-Q4_1"}


def add_project_routes(app: web.Application, store: ProjectStore, model_exists) -> None:
    """Only the /v1/projects routes of the agent's route table, on `app`."""
    app[PROJECT_ROUTES] = ProjectRoutes(store, model_exists)
    register(app, [route for route in ROUTES if route.tag == "Projects"])


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("SLP_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SLP_API_KEY", raising=False)


class ServerThread:
    """An aiohttp app served on 127.0.0.1:<free port> by an event loop in a background thread."""

    def __init__(self, app: web.Application):
        self.app = app
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.runner = web.AppRunner(app)
        self.port = 0

    def _run(self, coro) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    def start(self) -> "ServerThread":
        self.thread.start()

        async def up():
            await self.runner.setup()
            site = web.TCPSite(self.runner, "127.0.0.1", 0)
            await site.start()
            return self.runner.addresses[0][1]

        self.port = self._run(up())
        return self

    def stop(self) -> None:
        self._run(self.runner.cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@pytest.fixture
def server(tmp_path):
    store = ProjectStore(tmp_path / "db" / "slp.db")
    app = web.Application()
    add_project_routes(app, store, lambda m: m in MODELS)
    srv = ServerThread(app).start()
    srv.store = store
    yield srv
    srv.stop()
    store.close()


def call(srv: ServerThread, method: str, path: str, body: Any = None, *, raw: Optional[bytes] = None,
         content_type: str = "application/json") -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    headers = {"Content-Type": content_type} if data is not None else {}
    conn.request(method, path, body=data, headers=headers)
    resp = conn.getresponse()
    payload = resp.read()
    conn.close()
    return resp.status, json.loads(payload) if payload else None


def assert_error(result: tuple[int, Any], status: int, code: Optional[str] = None, param: Optional[str] = None):
    got_status, body = result
    assert got_status == status, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if code is not None:
        assert error["code"] == code
    if param is not None:
        assert error["param"] == param
    return error


# ----------------------------------------------------------------------------- HTTP

def test_list_and_crud(server):
    status, body = call(server, "GET", "/v1/projects")
    assert status == 200 and body["object"] == "list"
    assert [(p["name"], p["active"], p["is_system"]) for p in body["data"]] == [("general_chat", True, True)]

    status, created = call(server, "POST", "/v1/projects", {
        "name": "notes", "model": "SmolLM2-135M-Instruct-Q4_1", "system_prompt": "Be brief.",
        "params": {"temperature": 0.2, "stop": ["\n"]}})
    assert status == 201
    assert created["object"] == "project" and created["name"] == "notes" and created["active"] is False
    assert created["params"] == {"temperature": 0.2, "stop": ["\n"]}

    assert call(server, "GET", "/v1/projects/notes") == (200, created)
    assert call(server, "GET", f"/v1/projects/{created['id']}") == (200, created)

    status, updated = call(server, "PATCH", "/v1/projects/notes",
                           {"name": "notes2", "params": {"temperature": None, "top_k": 20}})
    assert status == 200 and updated["name"] == "notes2" and updated["params"] == {"stop": ["\n"], "top_k": 20}

    status, active = call(server, "POST", "/v1/projects/notes2/activate")
    assert status == 200 and active["active"] is True
    assert [p["name"] for p in call(server, "GET", "/v1/projects")[1]["data"] if p["active"]] == ["notes2"]

    assert call(server, "DELETE", "/v1/projects/notes2") == (
        200, {"id": created["id"], "object": "project.deleted", "deleted": True})
    assert_error(call(server, "GET", "/v1/projects/notes2"), 404, "project_not_found")
    assert call(server, "GET", "/v1/projects/general_chat")[1]["active"] is True


def test_errors_in_openai_envelope(server):
    call(server, "POST", "/v1/projects", {"name": "dup"})
    assert_error(call(server, "POST", "/v1/projects", {"name": "dup"}), 409, "project_exists", "name")
    assert_error(call(server, "POST", "/v1/projects", {"name": "bad name!"}), 422, param="name")
    assert_error(call(server, "POST", "/v1/projects", {"name": "x", "params": {"temprature": 1}}), 422,
                 param="params.temprature")
    assert_error(call(server, "POST", "/v1/projects", {"name": "x", "params": {"top_p": "high"}}), 422,
                 param="params.top_p")
    assert_error(call(server, "POST", "/v1/projects", {"name": "x", "model": "gpt-9"}), 422,
                 "model_not_found", "model")
    assert_error(call(server, "PATCH", "/v1/projects/dup", {"model": "gpt-9"}), 422, "model_not_found", "model")
    assert_error(call(server, "PATCH", "/v1/projects/dup", {"id": "x"}), 422, param="id")

    assert_error(call(server, "POST", "/v1/projects", raw=b"{not json"), 400, "invalid_json")
    assert_error(call(server, "POST", "/v1/projects", raw=b"[1, 2]"), 400, "invalid_json")
    assert_error(call(server, "POST", "/v1/projects", raw=b"name=x", content_type="text/html"), 415,
                 "unsupported_media_type")
    assert_error(call(server, "POST", "/v1/projects", raw=b"\xff\xfe", ), 400, "invalid_json")

    assert_error(call(server, "DELETE", "/v1/projects/general_chat"), 409, "system_project")
    assert_error(call(server, "PATCH", "/v1/projects/general_chat", {"name": "renamed"}), 409, "system_project")
    for method, path in [("GET", "/v1/projects/nope"), ("PATCH", "/v1/projects/nope"),
                         ("DELETE", "/v1/projects/nope"), ("POST", "/v1/projects/nope/activate"),
                         ("GET", "/v1/projects/nope/usage"), ("GET", "/v1/projects/nope/sessions"),
                         ("GET", "/v1/projects/nope/sessions/s1")]:
        body = {} if method == "PATCH" else None
        assert_error(call(server, method, path, body), 404, "project_not_found")
    assert_error(call(server, "GET", "/v1/projects/dup/sessions/s1"), 404, "session_not_found")
    assert [p["name"] for p in call(server, "GET", "/v1/projects")[1]["data"]] == ["general_chat", "dup"]


def test_usage_and_sessions_routes(server):
    _, project = call(server, "POST", "/v1/projects", {"name": "p", "system_prompt": "SYS"})
    assert call(server, "GET", "/v1/projects/p/usage")[1] == {
        "object": "project.usage", "project_id": project["id"], "project": "p",
        "prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0, "requests": 0}
    assert call(server, "GET", "/v1/projects/p/sessions") == (200, {"object": "list", "data": []})

    first = [{"role": "user", "content": "hi"}]
    server.store.record_usage(project["id"], 5, 2)
    server.store.record_exchange(project["id"], "s1", first, {"role": "assistant", "content": "yo"}, None)

    usage = call(server, "GET", "/v1/projects/p/usage")[1]
    assert (usage["requests"], usage["total_tokens"]) == (1, 7)
    status, sessions = call(server, "GET", "/v1/projects/p/sessions")
    assert status == 200 and [(s["id"], s["message_count"], s["exchange_count"]) for s in sessions["data"]] == [
        ("s1", 2, 1)]
    status, detail = call(server, "GET", "/v1/projects/p/sessions/s1")
    assert status == 200 and detail["messages"] == [*first, {"role": "assistant", "content": "yo"}]
    assert len(detail["exchanges"]) == 1 and detail["object"] == "project.session"


# ----------------------------------------------------------------------------- CLI

def cli_app() -> typer.Typer:
    root = typer.Typer()
    root.add_typer(project_app, name="project")
    root.command("chat")(chat)
    return root


@pytest.fixture
def cli(server, monkeypatch):
    monkeypatch.setenv("SLP_HOST", "127.0.0.1")
    monkeypatch.setenv("SLP_PORT", str(server.port))
    runner, app = CliRunner(), cli_app()

    def invoke(*args: str, input: Optional[str] = None):
        return runner.invoke(app, list(args), input=input)

    return invoke


def test_cli_project_commands(cli, server):
    r = cli("project", "create", "notes", "--model", "SmolLM2-135M-Instruct-Q4_1", "--system", "Be brief.",
            "--description", "my notes", "--param", "temperature=0.2", "--param", 'stop=["\\n"]',
            "--param", "seed=42")
    assert r.exit_code == 0, r.output
    assert "Created project notes" in r.stdout
    project = server.store.get("notes")
    assert project.params.values() == {"temperature": 0.2, "stop": ["\n"], "seed": 42}
    assert project.system_prompt == "Be brief." and project.description == "my notes"

    r = cli("project", "list")
    assert r.exit_code == 0 and "notes" in r.stdout and "general_chat" in r.stdout
    assert [line for line in r.stdout.splitlines() if line.startswith("*")][0].split()[1] == "general_chat"
    r = cli("project", "list", "--json")
    assert [p["name"] for p in json.loads(r.stdout)] == ["general_chat", "notes"]

    r = cli("project", "show", "notes")
    assert r.exit_code == 0 and "SmolLM2-135M-Instruct-Q4_1" in r.stdout and "Be brief." in r.stdout
    assert json.loads(cli("project", "show", "notes", "--json").stdout)["id"] == project.id

    r = cli("project", "update", "notes", "--name", "notes2", "--param", "top_k=40", "--unset-param", "seed",
            "--description", "")
    assert r.exit_code == 0, r.output
    updated = server.store.get("notes2")
    assert updated.params.values() == {"temperature": 0.2, "stop": ["\n"], "top_k": 40}
    assert updated.description == ""

    r = cli("project", "use", "notes2")
    assert r.exit_code == 0 and server.store.active().name == "notes2"
    assert [line for line in cli("project", "list").stdout.splitlines() if line.startswith("*")][0].split()[1] \
        == "notes2"

    server.store.record_usage(project.id, 100, 23)
    r = cli("project", "usage", "notes2")
    assert r.exit_code == 0 and "123" in r.stdout
    r = cli("project", "usage")
    assert r.exit_code == 0 and "general_chat" in r.stdout and "notes2" in r.stdout

    r = cli("project", "delete", "notes2", input="n\n")
    assert r.exit_code == 1 and server.store.get("notes2")
    r = cli("project", "delete", "notes2", "--yes")
    assert r.exit_code == 0 and "Deleted project notes2" in r.stdout
    assert server.store.active().name == "general_chat"


@pytest.mark.parametrize("args, needle", [
    (("project", "create", "bad name!"), "name must be"),
    (("project", "create", "p", "--param", "temprature=1"), "params.temprature"),
    (("project", "create", "p", "--param", "oops"), "KEY=VALUE"),
    (("project", "create", "p", "--model", "gpt-9"), "gpt-9"),
    (("project", "show", "missing"), "no project"),
    (("project", "delete", "general_chat", "--yes"), "cannot be deleted"),
    (("project", "update", "general_chat", "--name", "x"), "cannot be renamed"),
    (("project", "update", "general_chat"), "nothing to update"),
])
def test_cli_user_errors_are_one_line(cli, args, needle):
    r = cli(*args)
    assert r.exit_code == 1
    assert r.stdout == ""
    assert r.stderr.startswith("Error: ") and needle in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert "Traceback" not in r.output


def test_cli_agent_not_running(monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("SLP_HOST", "127.0.0.1")
    monkeypatch.setenv("SLP_PORT", str(port))
    r = CliRunner().invoke(cli_app(), ["project", "list"])
    assert r.exit_code == 1
    assert r.stderr.strip() == f"Error: slp agent is not running at http://127.0.0.1:{port}; start it with: " \
                               "slp agent start"


def test_cli_bad_setting_is_one_line(monkeypatch):
    monkeypatch.setenv("SLP_PORT", "not-a-port")
    r = CliRunner().invoke(cli_app(), ["project", "list"])
    assert r.exit_code == 1 and r.stderr.startswith("Error: invalid setting 'port'")
    assert len(r.stderr.strip().splitlines()) == 1


def test_cli_chat_records_and_resumes_through_the_real_agent(standin_agent):
    """`slp chat` (the real command, in its own process) against a real agent and its proxy; the engine is
    the stand-in, so each reply is known (" w1 w2 w3 w4") and what the engine was sent can be read back."""
    agent = standin_agent
    agent.cli("project", "create", "talk", "--system", "SYS", check=True)
    reply = " w1 w2 w3 w4"
    r = agent.cli("chat", "--project", "talk", input="hello\n\nsecond\n/exit\nignored\n", timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [reply, reply]
    hint = r.stderr.strip().splitlines()[-1]
    assert hint.startswith("slp chat --resume ")
    session_id = hint.split()[-1]

    def sent(last_user: str) -> list[dict]:
        """The messages the engine got for the turn that ended with `last_user`."""
        for path in sorted(agent.record.glob("*.request.json"), key=lambda p: p.stat().st_mtime, reverse=True):
            messages = json.loads(path.read_text())["messages"]
            if messages[-1] == {"role": "user", "content": last_user}:
                return messages
        raise AssertionError(f"the engine never got a turn ending in {last_user!r}")

    assert sent("second") == [{"role": "system", "content": "SYS"}, {"role": "user", "content": "hello"},
                              {"role": "assistant", "content": reply}, {"role": "user", "content": "second"}]
    detail = agent.get(f"/v1/projects/talk/sessions/{session_id}")
    assert [m["content"] for m in detail["messages"]] == ["hello", reply, "second", reply]
    assert agent.get("/v1/projects/talk/usage")["requests"] == 2

    # Resume without --project: the session is found in whichever project holds it; EOF ends the chat.
    r = agent.cli("chat", "--resume", session_id, input="third\n", timeout=60)
    assert r.returncode == 0, r.stderr
    assert f"Resumed session {session_id} of project talk (4 messages)." in r.stderr
    assert r.stdout.splitlines() == [reply]
    assert [m["content"] for m in sent("third")] == ["SYS", "hello", reply, "second", reply, "third"]
    detail = agent.get(f"/v1/projects/talk/sessions/{session_id}")
    assert detail["message_count"] == 6 and detail["exchange_count"] == 3
    assert detail["messages"][0] == {"role": "user", "content": "hello"}  # the caller's messages, unshaped

    r = agent.cli("chat", "--resume", "nosuch", input="x\n", timeout=60)
    assert r.returncode == 1 and r.stderr.startswith("Error: no session 'nosuch'")


def test_cli_sends_api_key(tmp_path, monkeypatch):
    store = ProjectStore(tmp_path / "keyed" / "slp.db")
    app = web.Application(middlewares=[error_middleware, make_auth("sekret", {"/health"})])
    add_project_routes(app, store, lambda m: m in MODELS)
    srv = ServerThread(app).start()
    try:
        monkeypatch.setenv("SLP_HOST", "127.0.0.1")
        monkeypatch.setenv("SLP_PORT", str(srv.port))
        r = CliRunner().invoke(cli_app(), ["project", "list"])
        assert r.exit_code == 1 and r.stderr.startswith("Error: missing or invalid API key")
        monkeypatch.setenv("SLP_API_KEY", "sekret")
        r = CliRunner().invoke(cli_app(), ["project", "create", "keyed"])
        assert r.exit_code == 0, r.output
        assert store.get("keyed").name == "keyed"
        # Under the agent's error middleware the routes still answer in the envelope.
        assert_error(call(srv, "GET", "/v1/projects/x"), 401, "invalid_api_key")
    finally:
        srv.stop()
        store.close()
