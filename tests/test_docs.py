"""GET /openapi.json and GET /docs, against real agents over the real engine, in a real browser.

- the document is valid OpenAPI 3.1 and has exactly the routes `create_app` registers: both come from the
  route table (`slp.server.api.ROUTES`), and a handler's answer must be the model its route documents;
- real responses (a chat completion, its stream, status, errors) match the documented schemas;
- Swagger UI renders from the agent's own files (no other host is contacted) and "Try it out" works,
  also with an API key (Authorize) and behind the Host check;
- schemathesis fuzzes every operation of a live agent from the document: no 5xx, responses conform.

The fuzzing runs against its own agent (with an API key, a tiny context window and short answers), never
the shared one: it creates, changes and deletes projects, the built-in one included.

Known bugs of other modules are listed in KNOWN_BUGS: the fuzz run tolerates exactly those (this file
doubles as its schemathesis hooks file), and each has a strict xfail test that starts failing once the
bug is fixed, so the entry gets removed.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Optional

import pytest

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "tests" / "artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
API_KEY = "sk-slp-docs-test-key"
GEN_CAP = 4  # tokens a fuzzed request may generate: the engine is a tiny model on shared CPU cores
FUZZ_SECONDS = 45  # schemathesis' budget for all its phases (it stops at the deadline; fuzzing takes what is left)
SEED_CHAT = {"model": "slp-orchestra-mini",
             "messages": [{"role": "user", "content": "What is the capital of France?"}]}


# ----------------------------------------------------------------------------- known bugs (other modules)

KNOWN_BUGS: dict[str, tuple] = {
    # id: (method, path regex, status, error message regex, what is wrong and where to fix it)
    # Empty: the bugs the fuzzer found (501s for embeddings/rerank, engine parse failures as 500, an
    # out-of-vocabulary detokenize, PATCH null documented but refused) are fixed and pinned below.
}


def known_bug(method: str, path: str, status: int, message: str) -> Optional[str]:
    for bug_id, (bug_method, bug_path, bug_status, pattern, _why) in KNOWN_BUGS.items():
        if ((method.upper(), status) == (bug_method, bug_status) and re.fullmatch(bug_path, path)
                and re.match(pattern, message)):
            return bug_id
    return None


def error_message(content: bytes) -> str:
    try:
        return str(json.loads(content)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return ""


GENERATING = ("/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/messages")
LENGTH_FIELDS = ("max_tokens", "max_completion_tokens", "n_predict", "max_output_tokens")


STORE_CHANGING = {"/api/delete": ("model", "name"), "/api/copy": ("source",), "/api/pull": ("model", "name")}


def keep_store_intact(path: str, body: Any) -> None:
    """The fuzzed agent shares the tests' model store: fuzzed deletes, copies and pulls name a model that is
    not installed, so they exercise only refusals (tests/test_ollama_api.py covers them on a store of its
    own); Ollama generations are capped like the others."""
    if not isinstance(body, dict):
        return
    for key in STORE_CHANGING.get(path, ()):
        if key in body:
            body[key] = "fuzz-absent-model"
    if path in ("/api/chat", "/api/generate"):
        options = body.get("options")
        if isinstance(options, dict):
            value = options.get("num_predict")
            if isinstance(value, int) and not isinstance(value, bool) and (value > GEN_CAP or value < 0):
                options["num_predict"] = GEN_CAP


def cap_generation(path: str, body: Any) -> None:
    """Keep fuzzed generations short: at most GEN_CAP tokens (values of the wrong type are left alone; a
    request that sets no length gets the agent's default, GEN_CAP)."""
    if path in GENERATING and isinstance(body, dict):
        for key in LENGTH_FIELDS:
            value = body.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and (value > GEN_CAP or value < 0):
                body[key] = GEN_CAP


if __name__ == "_schemathesis_hooks":  # loaded by `schemathesis run` through SCHEMATHESIS_HOOKS
    import schemathesis

    @schemathesis.hook
    def before_call(context, case, kwargs):  # noqa: ANN001
        cap_generation(case.path, case.body)
        keep_store_intact(case.path, case.body)

    @schemathesis.hook
    def filter_failure(context, failure, case, response):  # noqa: ANN001
        bug = known_bug(case.method, case.path, response.status_code, error_message(response.content))
        if bug is not None:
            print(f"tolerated known bug {bug}: {case.method} {case.path} -> {response.status_code}", flush=True)
        return bug is None

else:
    from conftest import kill_all_under, make_agent


# ----------------------------------------------------------------------------- helpers

def request(url: str, method: str = "GET", body: Any = None, headers: Optional[dict] = None,
            timeout: float = 120) -> tuple[int, dict, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={
        **({"Content-Type": "application/json"} if data is not None else {}), **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def schema_validator(spec: dict, name: str):
    """A JSON Schema 2020-12 validator for components/schemas/<name> of `spec`."""
    from jsonschema import Draft202012Validator

    return Draft202012Validator({"$ref": f"#/components/schemas/{name}", "components": spec["components"]})


def assert_valid(spec: dict, name: str, instance: Any) -> None:
    errors = sorted(schema_validator(spec, name).iter_errors(instance), key=str)
    assert not errors, f"{name} does not match:\n" + "\n".join(f"- {e.json_path}: {e.message}" for e in errors[:5])


def spec_operations(spec: dict) -> set[tuple[str, str]]:
    methods = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
    return {(m.upper(), path) for path, item in spec["paths"].items() for m in item if m in methods}


def app_operations(app) -> set[tuple[str, str]]:
    """(METHOD, path) of every route in `app.router`; the HEAD aiohttp adds beside each GET is implied."""
    ops = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter") or info.get("prefix") or route.resource.canonical
        ops.add((route.method.upper(), path))
    return {(m, p) for m, p in ops if not (m == "HEAD" and ("GET", p) in ops)}


def route_drift(app, spec: dict) -> tuple[set, set]:
    """(routes without a spec entry, spec entries without a route)."""
    served, documented = app_operations(app), spec_operations(spec)
    return served - documented, documented - served


@pytest.fixture(scope="module")
def spec(agent) -> dict:
    status, headers, body = request(agent.url + "/openapi.json")
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    return json.loads(body)


@pytest.fixture
def built_app(tmp_path):
    """The app exactly as the runner builds it (not started: no engine runs)."""
    from slp.server import keys
    from slp.server.app import create_app
    from slp.settings import Settings

    app = create_app(Settings(), tmp_path / "llama-server", None)
    yield app
    app[keys.PROJECTS].close()


@pytest.fixture(scope="module")
def keyed_agent(tmp_path_factory, default_model, engine_binary):
    """An agent of this module's own, with an API key, a small context and short default answers."""
    agent = make_agent(tmp_path_factory.mktemp("docs-agent"), api_key=API_KEY, ctx_size="256",
                       max_tokens=str(GEN_CAP))
    agent.start()
    yield agent
    agent.stop()
    kill_all_under(agent.home)


# ----------------------------------------------------------------------------- the document

def test_openapi_document_is_valid_31(spec):
    from openapi_spec_validator import validate

    validate(spec)  # raises with the first problem
    assert spec["openapi"].startswith("3.1")
    assert spec["servers"] == [{"url": "/", "description": "This agent"}]
    assert spec["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http", "scheme": "bearer", "description": "The agent's API key (SLP_API_KEY), when it has one."}
    assert {} in spec["security"]  # no key on this agent: sending one is optional

    chat = spec["paths"]["/v1/chat/completions"]["post"]
    assert chat["requestBody"]["content"]["application/json"]["example"] == SEED_CHAT
    ok = chat["responses"]["200"]["content"]
    assert ok["application/json"]["schema"] == {"$ref": "#/components/schemas/ChatCompletion"}
    event = ok["text/event-stream"]["schema"]  # OpenAPI 3.1: the schema of one event
    assert event["properties"]["data"]["else"]["contentSchema"]["anyOf"][0] == {
        "$ref": "#/components/schemas/ChatCompletionChunk"}
    assert [p["name"] for p in chat["parameters"]] == ["X-SLP-Project"]
    for code in ("429", "503"):
        assert "Retry-After" in chat["responses"][code]["headers"]
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if "requestBody" in op:
                assert "413" in op["responses"], f"{method} {path} does not document 413"
            for code, response in op["responses"].items():
                if code.startswith(("4", "5")) and (method, path, code) != ("get", "/health", "503"):
                    schema = response["content"]["application/json"]["schema"]
                    assert "ErrorResponse" in json.dumps(schema), f"{method} {path} {code}: not the error envelope"
    assert spec["paths"]["/health"]["get"]["responses"]["503"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Health"}  # health answers its probe, with why, not an error


def test_request_schemas_are_the_validating_models(spec):
    """The documented request bodies are the pydantic models the handlers validate with."""
    from slp.projects.schema import DocumentPath, ProjectCreate, ProjectUpdate, SearchQuery
    from slp.server import ollama_schemas, schemas
    from slp.server.api import ROUTES
    from slp.server.openapi import UNKNOWN_FIELDS_NOTE, request_models
    from slp.server.schemas import _Known

    REQUEST_MODELS = request_models(ROUTES)

    components = spec["components"]["schemas"]
    handlers_validate_with = {ProjectCreate, ProjectUpdate, DocumentPath, SearchQuery, *(
        value for module in (schemas, ollama_schemas) for value in vars(module).values()
        if isinstance(value, type) and value.__name__.endswith("Request") and value.__module__ == module.__name__)}
    assert set(REQUEST_MODELS) == handlers_validate_with  # every request model of slp.server.schemas is documented
    for model in REQUEST_MODELS:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, nested in schema.pop("$defs", {}).items():
            assert components[name] == nested, name
        documented = dict(components[model.__name__])
        if issubclass(model, _Known):  # other top-level fields go to the engine: the doc says so
            assert "propertyNames" not in documented
            description = documented.pop("description")
            assert description.startswith(schema.pop("description", "")) and description.endswith(UNKNOWN_FIELDS_NOTE)
        assert documented == schema, model.__name__
    props = components["ChatCompletionRequest"]["properties"]
    assert {"messages", "model", "stream", "project_id", "session_id"} <= set(props)
    assert components["ChatMessage"]["properties"]["role"]["enum"] == ["system", "developer", "user", "assistant",
                                                                        "tool"]
    body = spec["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"] == {"$ref": "#/components/schemas/ChatCompletionRequest"}
    bodies = {}
    for path, item in spec["paths"].items():  # every body is one of them, and its example is valid
        for method, op in item.items():
            if "requestBody" in op:
                media = op["requestBody"]["content"]["application/json"]
                name = media["schema"]["$ref"].rsplit("/", 1)[1]
                assert name in {m.__name__ for m in REQUEST_MODELS}, (method, path)
                assert_valid(spec, name, media["example"])
                bodies[(method.upper(), path)] = name
    # Route by route, not as a set: a route that took another route's model would still leave the set whole.
    assert bodies == ROUTE_BODIES
    routed = {(r.method, r.path): r.request.__name__ for r in ROUTES if r.request is not None}
    assert routed == ROUTE_BODIES  # the route table: what the forwarded routes validate with, and documents


ROUTE_BODIES = {
    ("POST", "/v1/chat/completions"): "ChatCompletionRequest",
    ("POST", "/v1/completions"): "CompletionRequest",
    ("POST", "/v1/embeddings"): "EmbeddingRequest",
    ("POST", "/v1/responses"): "ResponsesRequest",
    ("POST", "/v1/messages"): "AnthropicMessagesRequest",
    ("POST", "/v1/messages/count_tokens"): "AnthropicCountTokensRequest",
    ("POST", "/v1/rerank"): "RerankRequest",
    ("POST", "/tokenize"): "TokenizeRequest",
    ("POST", "/detokenize"): "DetokenizeRequest",
    ("POST", "/apply-template"): "ApplyTemplateRequest",
    ("POST", "/v1/models/{model}/load"): "LoadModelRequest",
    ("POST", "/v1/projects"): "ProjectCreate",
    ("PATCH", "/v1/projects/{project}"): "ProjectUpdate",
    ("POST", "/v1/projects/{project}/documents"): "DocumentPath",  # or a multipart upload
    ("POST", "/v1/projects/{project}/search"): "SearchQuery",
    ("POST", "/api/show"): "OllamaModelRequest",
    ("POST", "/api/chat"): "OllamaChatRequest",
    ("POST", "/api/generate"): "OllamaGenerateRequest",
    ("POST", "/api/embed"): "OllamaEmbedRequest",
    ("POST", "/api/embeddings"): "OllamaEmbeddingsRequest",
    ("POST", "/api/pull"): "OllamaPullRequest",
    ("DELETE", "/api/delete"): "OllamaModelRequest",
    ("POST", "/api/copy"): "OllamaCopyRequest",
    ("POST", "/api/create"): "OllamaUnsupportedRequest",
    ("POST", "/api/push"): "OllamaUnsupportedRequest",
}


def test_every_route_is_documented_and_every_documented_route_exists(built_app, spec):
    undocumented, unserved = route_drift(built_app, spec)
    assert not undocumented, f"routes served without an entry in slp/server/api.py: {sorted(undocumented)}"
    assert not unserved, f"documented routes the app does not serve: {sorted(unserved)}"
    assert ("POST", "/v1/chat/completions") in spec_operations(spec)
    assert ("GET", "/docs/static/{filename}") in spec_operations(spec)


def test_route_drift_is_detected(built_app, spec):
    """The parity check above really fails on drift, both ways."""
    async def handler(request):  # pragma: no cover - never called
        raise AssertionError

    built_app.router.add_get("/v1/undocumented", handler)
    smaller = json.loads(json.dumps(spec))
    del smaller["paths"]["/v1/status"]
    smaller["paths"]["/v1/ghost"] = {"post": {"responses": {"200": {"description": "x"}}}}
    undocumented, unserved = route_drift(built_app, smaller)
    assert undocumented == {("GET", "/v1/undocumented"), ("GET", "/v1/status")}
    assert unserved == {("POST", "/v1/ghost")}


# ----------------------------------------------------------------------------- the route table (no engine)

def serve(app, scenario):
    """Run `scenario(client)` against `app` on a real loopback socket (aiohttp's test server)."""
    import asyncio

    from aiohttp.test_utils import TestClient, TestServer

    async def run():
        async with TestClient(TestServer(app)) as client:
            await scenario(client)

    asyncio.run(run())


def test_public_paths_come_from_the_table():
    from slp.server.api import PUBLIC_PATHS, ROUTES
    from slp.server.chat_files import STATIC_FILES as CHAT_FILES
    from slp.server.docs_files import STATIC_FILES

    assert {(r.method, r.path) for r in ROUTES if r.public} == {
        ("GET", "/health"), ("GET", "/openapi.json"), ("GET", "/docs"), ("GET", "/docs/static/{filename}"),
        ("GET", "/"), ("GET", "/chat"), ("GET", "/chat/static/{filename}")}
    # A templated public path is public only for the values its parameter lists: any other file name
    # is an unknown path, which needs the key (test_docs_are_public_and_behind_the_host_check).
    assert PUBLIC_PATHS == {"/health", "/openapi.json", "/docs", *(f"/docs/static/{name}" for name in STATIC_FILES),
                            "/", "/chat", *(f"/chat/static/{name}" for name in CHAT_FILES)}


def test_a_handler_answers_only_with_the_model_its_route_documents():
    from aiohttp import web

    from slp.server.middleware import error_middleware
    from slp.server.responses import EngineHealth, Health, UnloadResult
    from slp.server.route_table import Answer, Route, register

    async def documented(request):  # an optional field left out stays out; an extra one is kept
        return Health(status="starting", agent="ok", engine=EngineHealth(state="starting", reason="r", model="m")), 503

    async def other_model(request):
        return UnloadResult(model="m", unloaded=False, state="unloaded")

    async def undocumented_status(request):
        return Health(status="ok", agent="ok", engine=EngineHealth(state="ready", reason="r")), 202

    answers = {200: Answer("ok", Health), 503: Answer("not ready", Health)}
    app = web.Application(middlewares=[error_middleware])
    register(app, [Route("GET", f"/{handler.__name__}", handler.__name__, "s", "Agent", answers, handler=handler)
                   for handler in (documented, other_model, undocumented_status)])

    async def scenario(client):
        resp = await client.get("/documented")
        assert resp.status == 503 and resp.headers["Content-Type"] == "application/json; charset=utf-8"
        assert await resp.json() == {"status": "starting", "agent": "ok",
                                     "engine": {"state": "starting", "reason": "r", "model": "m"}}
        for path in ("/other_model", "/undocumented_status"):
            resp = await client.get(path)
            assert resp.status == 500, path
            assert (await resp.json())["error"]["code"] == "internal_error"

    serve(app, scenario)


def test_a_route_is_served_by_a_handler_or_forwarded_never_both():
    from slp.server.route_table import Answer, Forward, Route

    async def handler(request):  # pragma: no cover - never called
        raise AssertionError

    answers = {200: Answer("ok")}
    with pytest.raises(ValueError, match="give a handler or a Forward"):
        Route("GET", "/x", "x", "s", "Agent", answers, handler=handler, forward=Forward())
    with pytest.raises(ValueError, match="give a handler or a Forward"):
        Route("GET", "/x", "x", "s", "Agent", answers)


def test_status_json_has_every_field_of_before_plus_restarts_and_crashes(tmp_path):
    """/v1/status is built as the documented Status model; its JSON keeps the fields it had as a hand-made
    dict (`slp status` and scripts read them), with `restarts` (every restart) beside `crashes`."""
    from pathlib import Path

    from slp.server.api import ROUTES
    from slp.server.app import create_app
    from slp.server.openapi import build_openapi
    from slp.settings import Settings

    spec = build_openapi(ROUTES)
    app = create_app(Settings(), Path(tmp_path / "llama-server"), None)  # no engine is loaded

    async def scenario(client):
        resp = await client.get("/v1/status")
        assert resp.status == 200
        status = await resp.json()
        assert_valid(spec, "Status", status)
        assert set(status) == {
            "object", "server", "agent", "engine", "engine_build", "model", "quantization", "context_window",
            "flash_attention", "model_size", "memory_usage", "gpu", "restarts", "crashes", "config", "engines",
            "memory_budget", "compute", "workers", "worker_losses", "active_project"}
        assert set(status["engine"]) == {
            "state", "reason", "pid", "port", "model", "model_path", "restarts", "crashes", "uptime_s",
            "last_exit", "log_tail", "memory", "history"}
        assert status["engine"]["state"] == "unloaded" and status["restarts"] == status["crashes"] == 0
        assert status["active_project"]["name"] == "general_chat"
        restarts = spec["components"]["schemas"]["Status"]["properties"]["restarts"]["description"]
        assert "slp_engine_restarts_total" in restarts

    serve(app, scenario)


def test_real_responses_match_the_documented_schemas(agent, spec):
    status, _, body = request(agent.url + "/v1/chat/completions", "POST", {**SEED_CHAT, "max_tokens": 8})
    assert status == 200
    reply = json.loads(body)
    assert_valid(spec, "ChatCompletion", reply)
    assert reply["id"].startswith("chatcmpl-") and reply["choices"][0]["message"]["role"] == "assistant"

    status, headers, body = request(agent.url + "/v1/chat/completions", "POST",
                                    {**SEED_CHAT, "max_tokens": 4, "stream": True,
                                     "stream_options": {"include_usage": True}})
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    events = [line[6:] for line in body.decode().split("\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and len(events) >= 3
    for event in events[:-1]:
        assert_valid(spec, "ChatCompletionChunk", json.loads(event))

    status, _, body = request(agent.url + "/v1/completions", "POST",
                              {"model": "slp-orchestra-mini", "prompt": "The capital of France is", "max_tokens": 4})
    assert status == 200
    assert_valid(spec, "Completion", json.loads(body))

    question = SEED_CHAT["messages"]
    for path, payload, name in (
            ("/v1/responses", {"input": "What is the capital of France?", "max_output_tokens": 2}, "ResponseObject"),
            ("/v1/messages", {"messages": question, "max_tokens": 2}, "AnthropicMessageResponse"),
            ("/v1/messages/count_tokens", {"messages": question}, "TokenCount"),
            ("/tokenize", {"content": "Paris", "with_pieces": True}, "TokenList"),
            ("/detokenize", {"tokens": [1780, 314]}, "DetokenizedText"),
            ("/apply-template", {"messages": question}, "TemplatedPrompt")):
        status, _, body = request(agent.url + path, "POST", payload)
        assert status == 200, (path, body)
        assert_valid(spec, name, json.loads(body))
    status, headers, body = request(agent.url + "/v1/messages", "POST",
                                    {"messages": question, "max_tokens": 2, "stream": True})
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    events = [line[6:] for line in body.decode().split("\n") if line.startswith("data: ")]
    assert json.loads(events[-1])["type"] == "message_stop"
    for event in events:
        assert_valid(spec, "AnthropicStreamEvent", json.loads(event))

    for path, name in (("/v1/status", "Status"), ("/health", "Health"), ("/v1/models", "ModelList"),
                       ("/v1/models/slp-orchestra-mini", "Model"), ("/v1/projects", "ProjectList"),
                       ("/v1/projects/general_chat/usage", "ProjectUsage"),
                       ("/v1/projects/general_chat/sessions", "SessionList")):
        status, _, body = request(agent.url + path)
        assert status == 200, path
        assert_valid(spec, name, json.loads(body))

    for method, path, payload, code in (
            ("POST", "/v1/chat/completions", {**SEED_CHAT, "model": "gpt-nope"}, 404),
            ("POST", "/v1/chat/completions", {"messages": [{"role": "robot", "content": "hi"}]}, 400),
            ("GET", "/v1/projects/no-such-project", None, 404),
            ("DELETE", "/v1/projects/general_chat", None, 409)):
        status, _, body = request(agent.url + path, method, payload)
        assert status == code, (path, body)
        error = json.loads(body)
        assert_valid(spec, "ErrorResponse", error)
        assert set(error["error"]) == {"message", "type", "param", "code"}


def test_huge_body_is_a_documented_413(agent, spec):
    from slp.settings import Settings

    limit = Settings.model_fields["max_body_bytes"].default  # the shared agent runs with the default
    head, tail = b'{"messages": [{"role": "user", "content": "', b'"}]}'
    huge = head + b"a" * (limit + 1 - len(head) - len(tail)) + tail  # one byte over: all of it gets read
    conn = http.client.HTTPConnection("127.0.0.1", agent.port, timeout=60)
    try:
        conn.request("POST", "/v1/chat/completions", body=huge, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        status, body = resp.status, resp.read()
    finally:
        conn.close()
    assert status == 413
    assert "413" in spec["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert_valid(spec, "ErrorResponse", json.loads(body))


def test_docs_are_public_and_behind_the_host_check(keyed_agent):
    auth = {"Authorization": f"Bearer {API_KEY}"}
    for path in ("/docs", "/openapi.json", "/docs/static/swagger-ui-bundle.js", "/docs/static/swagger-ui.css"):
        status, _, _ = request(keyed_agent.url + path)
        assert status == 200, path
    # Only Swagger UI's files are public; any other name is an unknown path like any other.
    assert request(keyed_agent.url + "/docs/static/index.html")[0] == 401
    status, _, body = request(keyed_agent.url + "/docs/static/index.html", headers=auth)
    assert status == 404 and json.loads(body)["error"]["code"] == "not_found"
    assert request(keyed_agent.url + "/v1/status")[0] == 401
    assert request(keyed_agent.url + "/v1/status", headers=auth)[0] == 200

    spec = json.loads(request(keyed_agent.url + "/openapi.json")[2])
    assert spec["security"] == [{"bearerAuth": []}]
    for path in ("/health", "/docs", "/openapi.json", "/docs/static/{filename}"):
        assert spec["paths"][path]["get"]["security"] == []

    for host, expected in ((f"localhost:{keyed_agent.port}", 200), (f"evil.example:{keyed_agent.port}", 403)):
        conn = http.client.HTTPConnection("127.0.0.1", keyed_agent.port, timeout=30)
        try:
            conn.request("GET", "/docs", headers={"Host": host})
            resp = conn.getresponse()
            assert resp.status == expected, host
            body = resp.read()
            if expected == 403:
                assert json.loads(body)["error"]["code"] == "host_not_allowed"
        finally:
            conn.close()


# ----------------------------------------------------------------------------- the browser

def open_docs(playwright, url: str):
    """Chromium (Debian's, never a downloaded one) on `url`/docs; returns (browser, page, foreign requests)."""
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    page = browser.new_page(viewport={"width": 1280, "height": 1400})
    foreign: list[str] = []

    def guard(route):
        if route.request.url.startswith(url + "/"):
            route.continue_()
        else:
            foreign.append(route.request.url)
            route.abort()

    page.route("**/*", guard)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(url + "/docs")
    page.wait_for_selector(".opblock-summary-path", timeout=60_000)
    return browser, page, foreign, errors


def try_it_out(page, block_id: str) -> str:
    """Expand an operation, press "Try it out" then "Execute"; returns the response code shown."""
    block = page.locator(f"#{block_id}")
    block.locator(".opblock-summary").first.click()
    block.locator("button.try-out__btn").click()
    block.locator("button.execute").click()
    code = block.locator(".live-responses-table tr.response .response-col_status").first
    code.wait_for(timeout=60_000)
    return code.inner_text().strip()


def test_swagger_ui_renders_and_try_it_out_works(agent):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser, page, foreign, errors = open_docs(p, agent.url)
        try:
            paths = set(page.locator(".opblock-summary-path").evaluate_all(
                "els => els.map(e => e.getAttribute('data-path'))"))
            assert {"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models", "/v1/status",
                    "/v1/projects", "/v1/projects/{project}/sessions/{session_id}", "/health"} <= paths
            assert page.locator("button.authorize").count() == 1
            assert try_it_out(page, "operations-Agent-getStatus") == "200"
            body = page.locator("#operations-Agent-getStatus .live-responses-table tr.response "
                                ".response-col_description")
            assert '"slp.status"' in body.first.inner_text()
            page.locator("#operations-Agent-getStatus .live-responses-table").first.scroll_into_view_if_needed()
            page.screenshot(path=str(ARTIFACTS / "docs.png"))
        finally:
            browser.close()
    assert not foreign, f"/docs fetched from other hosts: {foreign}"
    assert not errors, f"JavaScript errors on /docs: {errors}"


def test_swagger_ui_authorize_with_api_key(keyed_agent):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser, page, foreign, errors = open_docs(p, keyed_agent.url)
        try:
            assert try_it_out(page, "operations-Agent-getStatus") == "401"
            page.locator("button.authorize").first.click()
            page.locator(".modal-ux input").first.fill(API_KEY)
            page.locator(".modal-ux .auth-btn-wrapper button.authorize").click()
            page.locator(".modal-ux button.btn-done").click()
            page.locator("#operations-Agent-getStatus button.execute").click()
            page.wait_for_function(
                "() => document.querySelector('#operations-Agent-getStatus .live-responses-table "
                "tr.response .response-col_status')?.innerText.trim() === '200'", timeout=60_000)
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "docs-authorized.png"))
        finally:
            browser.close()
    assert not foreign and not errors


# ----------------------------------------------------------------------------- fuzzing

CHECKS = ["not_a_server_error", "status_code_conformance", "content_type_conformance",
          "response_headers_conformance", "response_schema_conformance", "negative_data_rejection",
          "missing_required_header", "unsupported_method", "allow_header_conformance", "use_after_free",
          "ensure_resource_availability", "ignored_auth"]


def test_schemathesis_fuzzing_finds_no_server_error_and_no_nonconforming_response(keyed_agent, tmp_path):
    """Every operation, from the document: examples, coverage, random and stateful (links) phases."""
    report = ARTIFACTS / "schemathesis"
    report.mkdir(parents=True, exist_ok=True)
    cmd = [str(Path(sys.executable).parent / "schemathesis"), "run", keyed_agent.url + "/openapi.json",
           "--checks", ",".join(CHECKS), "--max-time", str(FUZZ_SECONDS), "--max-examples", "2",
           "--seed", "20260501", "--workers", "1", "--phases", "examples,coverage,fuzzing,stateful",
           "--request-timeout", "120", "--header", f"Authorization: Bearer {API_KEY}",
           "--generation-database", "none", "--suppress-health-check", "all", "--no-color",
           "--output-sanitize", "false", "--report", "junit", "--report-junit-path", str(report / "junit.xml")]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": str(Path(__file__).resolve()), "PYTHONPATH": str(REPO / "tests")}
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=FUZZ_SECONDS + 240)
    took = time.monotonic() - started
    (report / "output.txt").write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, \
        f"schemathesis failed after {took:.0f}s:\n{proc.stdout[-12000:]}\n{proc.stderr[-3000:]}"
    selected = re.search(r"Selected: (\d+)/(\d+)", proc.stdout)
    tested = re.search(r"Tested: (\d+)", proc.stdout)
    assert selected and tested and selected[1] == selected[2] == tested[1], proc.stdout[-3000:]
    tolerated = sorted(set(re.findall(r"tolerated known bug (\S+):", proc.stdout)))
    print(f"schemathesis: {tested[1]} operations in {took:.0f}s; known bugs met: {tolerated}")


# ----------------------------------------------------------------------------- regressions (found by fuzzing)

@pytest.mark.parametrize("path, body", [
    ("/v1/embeddings", {"model": "slp-orchestra-mini", "input": "The capital of France is Paris."}),
    ("/v1/rerank", {"query": "What is the capital of France?", "documents": ["Paris.", "Bananas."]}),
], ids=["embeddings", "rerank"])
def test_regression_engine_features_off_are_a_400_not_501(keyed_agent, path, body):
    status, _, reply = request(keyed_agent.url + path, "POST", body, headers={"Authorization": f"Bearer {API_KEY}"})
    assert status == 400, reply
    assert json.loads(reply)["error"]["code"] == "not_supported"


def test_regression_detokenize_out_of_vocabulary_is_a_400(keyed_agent):
    status, _, reply = request(keyed_agent.url + "/detokenize", "POST", {"tokens": [2147483646]},
                               headers={"Authorization": f"Bearer {API_KEY}"})
    assert status == 400, reply


@pytest.mark.parametrize("change", [
    {"messages": [{"role": "user", "content": "hi", "name": None}]},
    {"messages": [{"role": "user", "content": [{"type": "text"}]}]},
    {"messages": [{"role": "user"}]},
    {"tools": 0},
    {"repeat_penalty": 0},
], ids=["null-name", "text-part-without-text", "user-without-content", "tools-not-an-array", "zero-repeat-penalty"])
def test_regression_inputs_the_engine_cannot_parse_are_refused_first(keyed_agent, change):
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1, **change}
    status, _, reply = request(keyed_agent.url + "/v1/chat/completions", "POST", body,
                               headers={"Authorization": f"Bearer {API_KEY}"})
    assert status == 400, reply
    assert not json.loads(reply)["error"]["message"].startswith("engine:"), "refused by the agent, not the engine"


@pytest.mark.parametrize("field", ["name", "model"])
def test_regression_patch_null_is_not_documented_and_refused(keyed_agent, field):
    auth = {"Authorization": f"Bearer {API_KEY}"}
    spec = json.loads(request(keyed_agent.url + "/openapi.json")[2])
    assert not schema_validator(spec, "ProjectUpdate").is_valid({field: None})
    status, _, body = request(keyed_agent.url + "/v1/projects", "POST", {"name": f"patch-null-{field}"}, headers=auth)
    assert status == 201, body
    status, _, body = request(keyed_agent.url + f"/v1/projects/patch-null-{field}", "PATCH", {field: None},
                              headers=auth)
    assert status == 422, (status, body)
