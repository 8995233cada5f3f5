"""Client compatibility, differential: whatever a real client sends that a bare llama-server serves, slp
serves too, and the client cannot tell the difference.

Every case runs first against a bare engine (the same binary, model and flags as the agent's own engine:
its command line is copied from the running process) and then through slp. The engine's run must pass
(otherwise the case shows nothing about slp and is wrong); slp's run must then pass too, and observe the
same shape: the same JSON keys, the same kinds of stream events (so no event or field slp added for its
own accounting reaches the client). Answers themselves differ run to run, so they are checked for being
well-formed, not compared. Where slp accounts for a request (tool calls, a stream whose client did not ask
for usage), the project's usage is checked too.

Clients: the official `openai` SDKs for Python and JavaScript (tests/js/compat.mjs), LangChain's
ChatOpenAI, LiteLLM, and raw HTTP (SSE read line by line, HTTP/1.0, Connection: close, Expect:
100-continue, chunked request bodies, curl -d without a Content-Type).
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import psutil
import pytest
from openai import OpenAI
from pydantic import BaseModel, Field

from conftest import REPO, Agent, bare_engine, free_port, kill_all_under, make_agent, wait_for

MODEL = "slp-orchestra-mini"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
WEATHER = [{"role": "user", "content": "What is the weather like in Paris today?"}]
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 16}},
                   "required": ["city"], "additionalProperties": False}}}
CITY_SCHEMA = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 16}},
               "required": ["city"], "additionalProperties": False}
ENGINE_MAX_TOKENS = 48  # SLP_MAX_TOKENS of the agent, --n-predict of both engines: bounds every answer


# ----------------------------------------------------------------------------- the two targets

@dataclass
class Target:
    """Where a case sends its requests: the bare engine, or slp (with its agent, for accounting)."""

    name: str
    url: str
    agent: Optional[Agent] = None

    def openai(self, **kwargs: Any) -> OpenAI:
        return OpenAI(base_url=f"{self.url}/v1", api_key="not-needed", max_retries=0, timeout=120, **kwargs)

    def usage(self) -> Optional[dict]:
        """The active project's accounted usage (slp only; None for the bare engine)."""
        if self.agent is None:
            return None
        project = self.agent.status()["active_project"]["id"]
        return self.agent.get(f"/v1/projects/{project}/usage")


@pytest.fixture(scope="module")
def compat_agent(tmp_path_factory, default_model, engine_binary) -> Agent:
    agent = make_agent(tmp_path_factory.mktemp("compat-agent"), max_tokens=str(ENGINE_MAX_TOKENS))
    agent.start()
    yield agent
    agent.stop()
    kill_all_under(agent.home)


def engine_command_of(agent: Agent) -> list[str]:
    """The command line of the agent's running llama-server (after one request, so it surely runs)."""
    request = urllib.request.Request(f"{agent.url}/v1/chat/completions", method="POST", headers={
        "Content-Type": "application/json"}, data=json.dumps({"messages": QUESTION, "max_tokens": 1}).encode())
    with urllib.request.urlopen(request, timeout=120) as resp:
        assert resp.status == 200
    children = psutil.Process(agent.state()["agent_pid"]).children(recursive=True)
    engines = [p.cmdline() for p in children if Path(p.cmdline()[0]).name == "llama-server"]
    assert engines, "the agent runs no llama-server"
    return engines[0]


@pytest.fixture(scope="module")
def targets(compat_agent, tmp_path_factory) -> dict[str, Target]:
    """The bare engine (same binary, model and flags as the agent's, its own port, no key) and slp."""
    argv = engine_command_of(compat_agent)
    port = free_port()
    argv[argv.index("--port") + 1] = str(port)
    log_path = tmp_path_factory.mktemp("bare-engine") / "engine.log"
    env = {k: v for k, v in os.environ.items() if k != "LLAMA_API_KEY"}
    with bare_engine(argv, port, log_path, env=env):
        yield {"engine": Target("engine", f"http://127.0.0.1:{port}"),
               "slp": Target("slp", compat_agent.url, compat_agent)}


def differential(targets: dict[str, Target], case: Callable[[Target], Any]) -> Any:
    """Run `case` on the bare engine, then through slp: both must pass and observe the same shape."""
    try:
        expected = case(targets["engine"])
    except Exception as exc:  # noqa: BLE001 - any failure here means the case itself is wrong
        raise AssertionError(f"the case fails on the bare engine itself ({exc!r}), so it shows nothing "
                             "about slp: fix the case") from exc
    got = case(targets["slp"])
    assert got == expected, f"through slp the client sees {got!r}, on the bare engine {expected!r}"
    return got


def keys(obj: dict) -> tuple[str, ...]:
    return tuple(sorted(obj))


def chat_shape(reply: dict) -> tuple:
    """What a client sees of a chat completion, answers aside: its keys, its choices' and usage's keys,
    and the prompt's length in tokens (the same only if the request reached the engine unchanged)."""
    return (keys(reply), len(reply["choices"]), tuple(keys(c) for c in reply["choices"]),
            tuple(keys(c["message"]) for c in reply["choices"]), keys(reply.get("usage") or {}),
            (reply.get("usage") or {}).get("prompt_tokens"))


def event_shapes(events: list[dict]) -> tuple:
    """The kinds of events of a stream (choices count, usage or not, keys), the first and the last."""
    def kind(event: dict) -> tuple:
        return (len(event.get("choices") or ()), event.get("usage") is not None, keys(event))
    kinds = [kind(e) for e in events]
    return tuple(sorted(set(kinds))), kinds[0], kinds[-1]


def assert_accounted(target: Target, before: Optional[dict], requests: int, completion_tokens: Optional[int],
                     at_most: Optional[int] = None) -> None:
    """slp counted `requests` more requests and exactly `completion_tokens` more (or 1..`at_most`)."""
    if target.agent is None:
        return
    after = wait_for(lambda: (u := target.usage())["requests"] >= before["requests"] + requests and u, 10,
                     "the request to be accounted")
    assert after["requests"] == before["requests"] + requests
    added = after["completion_tokens"] - before["completion_tokens"]
    if completion_tokens is not None:
        assert added == completion_tokens, after
    else:
        assert 0 < added <= at_most, after
    assert after["prompt_tokens"] > before["prompt_tokens"]


# ----------------------------------------------------------------------------- the openai SDK for Python

PY_CASES: dict[str, Callable[[Target], Any]] = {}


def py_case(fn: Callable[[Target], Any]) -> Callable[[Target], Any]:
    PY_CASES[fn.__name__] = fn
    return fn


@py_case
def plain(t: Target) -> tuple:
    raw = t.openai().chat.completions.with_raw_response.create(model=MODEL, messages=QUESTION, max_tokens=4)
    reply = raw.parse()
    assert reply.choices[0].message.role == "assistant" and reply.choices[0].message.content.strip()
    assert 0 < reply.usage.completion_tokens <= 4 and reply.usage.prompt_tokens > 0
    return chat_shape(raw.http_response.json())


@py_case
def stream_without_usage(t: Target) -> tuple:
    """The regression of issue 14: slp asks the engine for usage to count the stream; the client, which
    did not ask, must get no usage-only event (empty `choices`) and no usage field, and reading
    `choices[0]` of every event must work."""
    before = t.usage()
    chunks = list(t.openai().chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=6, stream=True))
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks)
    assert text.strip()
    assert all(chunk.usage is None for chunk in chunks)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert_accounted(t, before, 1, None, at_most=6)
    return event_shapes([chunk.to_dict() for chunk in chunks])


@py_case
def stream_with_usage(t: Target) -> tuple:
    before = t.usage()
    chunks = list(t.openai().chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=6, stream=True,
                                                     stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and 0 < chunks[-1].usage.completion_tokens <= 6
    assert all(chunk.choices for chunk in chunks[:-1])
    assert_accounted(t, before, 1, chunks[-1].usage.completion_tokens)
    return event_shapes([chunk.to_dict() for chunk in chunks])


@py_case
def stream_options_without_usage(t: Target) -> tuple:
    """`include_usage: false` said outright: no usage event either (slp still counts the stream)."""
    before = t.usage()
    chunks = list(t.openai().chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=6, stream=True,
                                                     stream_options={"include_usage": False}))
    assert all(chunk.choices and chunk.usage is None for chunk in chunks)
    assert_accounted(t, before, 1, None, at_most=6)
    return event_shapes([chunk.to_dict() for chunk in chunks])


def answered(message: Any) -> bool:
    """An assistant message that says something or calls a tool (whole, with parseable arguments)."""
    calls = message.tool_calls or []
    return bool(message.content or calls) and all(
        c.function.name == "get_weather" and isinstance(json.loads(c.function.arguments), dict) for c in calls)


@py_case
def tools(t: Target) -> tuple:
    """`tools`, `tool_choice` and `parallel_tool_calls` pass untouched (the same prompt tokens as on the
    engine) and the reply is counted. (SmolLM2's chat template describes no tools, so the model answers
    in text; with a tool-calling model the same bytes carry the calls.)"""
    before = t.usage()
    raw = t.openai().chat.completions.with_raw_response.create(
        model=MODEL, messages=WEATHER, tools=[WEATHER_TOOL], tool_choice="auto", parallel_tool_calls=False,
        max_tokens=6, temperature=0)
    reply = raw.parse()
    assert answered(reply.choices[0].message)
    assert_accounted(t, before, 1, reply.usage.completion_tokens)
    return chat_shape(raw.http_response.json())


@py_case
def tools_streamed(t: Target) -> tuple:
    """The same, streamed through the SDK's stream helper (which assembles tool-call deltas)."""
    before = t.usage()
    client = t.openai()
    with client.chat.completions.stream(model=MODEL, messages=WEATHER, tools=[WEATHER_TOOL], tool_choice="auto",
                                        max_tokens=6, temperature=0) as stream:
        events = list(stream)
        final = stream.current_completion_snapshot  # (get_final_completion refuses a "length" finish)
    assert answered(final.choices[0].message)
    chunks = [e.chunk.to_dict() for e in events if e.type == "chunk"]
    assert all(c["choices"] for c in chunks)
    assert_accounted(t, before, 1, None, at_most=6)
    return event_shapes(chunks)


@py_case
def tool_result_round_trip(t: Target) -> tuple:
    """The second leg of a tool call: the assistant's call and the tool's answer go back in."""
    messages = [*WEATHER, {"role": "assistant", "content": None, "tool_calls": [{
        "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 21 degrees."}]
    reply = t.openai().chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER_TOOL], max_tokens=8)
    assert reply.choices[0].message.content is not None or reply.choices[0].message.tool_calls
    return keys(reply.to_dict())


@py_case
def json_object(t: Target) -> tuple:
    raw = t.openai().chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "Give the capital of France as JSON."}],
        response_format={"type": "json_object"}, max_tokens=12, temperature=0)
    reply = raw.parse()
    if reply.choices[0].finish_reason == "stop":  # a cut-off answer is a prefix of valid JSON
        assert isinstance(json.loads(reply.choices[0].message.content), dict)
    assert reply.choices[0].message.content.lstrip().startswith("{")
    return chat_shape(raw.http_response.json())


@py_case
def json_schema(t: Target) -> tuple:
    before = t.usage()
    raw = t.openai().chat.completions.with_raw_response.create(
        model=MODEL, messages=QUESTION, max_tokens=ENGINE_MAX_TOKENS, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "city", "strict": True,
                                                                 "schema": CITY_SCHEMA}})
    reply = raw.parse()
    assert reply.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(reply.choices[0].message.content)["city"], str)
    assert_accounted(t, before, 1, reply.usage.completion_tokens)
    return chat_shape(raw.http_response.json())


class City(BaseModel):
    city: str = Field(max_length=16)


@py_case
def structured_parse(t: Target) -> str:
    """The SDK's `parse()` helper: a strict json_schema from a pydantic model, parsed back."""
    reply = t.openai().chat.completions.parse(model=MODEL, messages=QUESTION, response_format=City,
                                              max_tokens=ENGINE_MAX_TOKENS, temperature=0)
    assert isinstance(reply.choices[0].message.parsed, City)
    return type(reply.choices[0].message.parsed).__name__


@py_case
def logprobs(t: Target) -> tuple:
    reply = t.openai().chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=4, logprobs=True,
                                               top_logprobs=2)
    content = reply.choices[0].logprobs.content
    assert content and all(len(item.top_logprobs) == 2 for item in content)
    return keys(reply.choices[0].logprobs.content[0].to_dict())


@py_case
def n_choices(t: Target) -> tuple:
    reply = t.openai().chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=4, n=2, temperature=1)
    assert sorted(c.index for c in reply.choices) == [0, 1]
    assert all(c.message.content is not None for c in reply.choices)
    return keys(reply.to_dict()), len(reply.choices)


@py_case
def seed(t: Target) -> bool:
    client = t.openai()
    answers = [client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=4, seed=1234,
                                              temperature=1.0).choices[0].message.content for _ in range(2)]
    assert answers[0].strip() and answers[0] == answers[1]  # the same seed, the same sampling
    return True


@py_case
def max_completion_tokens(t: Target) -> tuple:
    reply = t.openai().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Write a long story about a lighthouse."}],
        max_completion_tokens=3)
    assert reply.usage.completion_tokens == 3 and reply.choices[0].finish_reason == "length"
    return keys(reply.to_dict())


@py_case
def newer_openai_fields(t: Target) -> tuple:
    """Fields newer SDKs send (`prompt_cache_key`, `safety_identifier`, ...) and llama.cpp's own ones."""
    raw = t.openai().chat.completions.with_raw_response.create(
        model=MODEL, messages=QUESTION, max_tokens=4, prompt_cache_key="user-42", safety_identifier="u-42",
        store=False, metadata={"k": "v"}, user="someone", extra_body={"cache_prompt": True, "min_p": 0.05})
    reply = raw.parse()
    assert reply.choices[0].message.content is not None
    return chat_shape(raw.http_response.json())


@py_case
def legacy_completions(t: Target) -> tuple:
    reply = t.openai().completions.create(model=MODEL, prompt="The capital of France is", max_tokens=5, logprobs=2,
                                          temperature=0)
    assert reply.choices[0].text and reply.usage.completion_tokens <= 5
    chunks = list(t.openai().completions.create(model=MODEL, prompt="The capital of France is", max_tokens=5,
                                                stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices)
    return keys(reply.to_dict()), event_shapes([c.to_dict() for c in chunks])


@py_case
def models(t: Target) -> bool:
    ids = [m.id for m in t.openai().models.list()]
    assert MODEL in ids, ids
    return True


@py_case
def raw_response_headers(t: Target) -> tuple:
    raw = t.openai().chat.completions.with_raw_response.create(model=MODEL, messages=QUESTION, max_tokens=2)
    assert raw.http_response.status_code == 200 and raw.parse().choices
    with t.openai().chat.completions.with_streaming_response.create(model=MODEL, messages=QUESTION, max_tokens=2,
                                                                    stream=True) as streamed:
        lines = [line for line in streamed.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    return (raw.headers["content-type"].split(";")[0], streamed.headers["content-type"].split(";")[0])


@py_case
def stream_broken_off_then_a_new_request(t: Target) -> bool:
    """A client that leaves a long stream after two events: the next request is served at once."""
    client = t.openai()
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Write a long story about a lighthouse."}],
        max_tokens=ENGINE_MAX_TOKENS, stream=True, extra_body={"ignore_eos": True})
    for _, _chunk in zip(range(2), stream):
        pass
    stream.close()
    started = time.monotonic()
    reply = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=4)
    assert reply.choices[0].message.content is not None and time.monotonic() - started < 30
    return True


@pytest.mark.parametrize("name", list(PY_CASES))
def test_openai_python_sdk(targets, name):
    differential(targets, PY_CASES[name])


# ----------------------------------------------------------------------------- the openai SDK for JavaScript

JS_CASES = ["plain", "stream_without_usage", "stream_with_usage", "tools", "tools_streamed", "json_object",
            "json_schema", "logprobs", "n_choices", "seed", "max_completion_tokens", "legacy_completions", "models",
            "raw_response_headers", "stream_aborted_then_a_new_request"]


@pytest.fixture(scope="module")
def js_results(targets) -> dict[str, dict]:
    """tests/js/compat.mjs run once per target: {target: {case: {"ok", "shape" | "error"}}}."""
    node = shutil.which("node")
    assert node, "node is needed for the JavaScript SDK (make test installs it)"
    assert (REPO / "tests" / "js" / "node_modules" / "openai").is_dir(), "run `npm ci --prefix tests/js`"
    results = {}
    for name, target in targets.items():
        proc = subprocess.run([node, str(REPO / "tests" / "js" / "compat.mjs"), target.url], capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        results[name] = json.loads(proc.stdout)
        assert sorted(results[name]) == sorted(JS_CASES)
    return results


@pytest.mark.parametrize("name", JS_CASES)
def test_openai_javascript_sdk(js_results, name):
    engine, slp = js_results["engine"][name], js_results["slp"][name]
    assert engine["ok"], f"the case fails on the bare engine itself: fix it\n{engine['error']}"
    assert slp["ok"], slp["error"]
    assert slp["shape"] == engine["shape"]


# ----------------------------------------------------------------------------- LangChain

def chat_openai(t: Target, **kwargs: Any):
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(model=MODEL, base_url=f"{t.url}/v1", api_key="not-needed", max_retries=0, timeout=120,
                      **{"max_tokens": 6, **kwargs})


def lc_invoke(t: Target) -> tuple:
    message = chat_openai(t).invoke("What is the capital of France?")
    assert isinstance(message.content, str) and message.content.strip()
    assert message.usage_metadata["output_tokens"] > 0
    return keys(message.response_metadata)


def lc_stream(t: Target) -> tuple:
    before = t.usage()
    chunks = list(chat_openai(t).stream("What is the capital of France?"))
    assert "".join(c.content for c in chunks).strip()
    assert_accounted(t, before, 1, None, at_most=6)
    return tuple(c.usage_metadata is not None for c in chunks[-2:])


def lc_stream_usage(t: Target) -> int:
    chunks = list(chat_openai(t, stream_usage=True).stream("What is the capital of France?"))
    total = sum((c.usage_metadata or {}).get("output_tokens", 0) for c in chunks)
    assert 0 < total <= 6
    return sum(c.usage_metadata is not None for c in chunks)


def lc_batch(t: Target) -> int:
    answers = chat_openai(t, max_tokens=6).batch(["What is the capital of France?", "Name a colour."])
    assert len(answers) == 2 and all(isinstance(a.content, str) for a in answers)
    return len(answers)


def get_weather(city: str) -> str:
    """Get the current weather in a city."""
    return f"Sunny in {city}"


def lc_tools(t: Target) -> tuple:
    message = chat_openai(t, max_tokens=6, temperature=0).bind_tools([get_weather], tool_choice="auto").invoke(
        "What is the weather like in Paris today?")
    assert message.content or message.tool_calls
    assert all(call["name"] == "get_weather" for call in message.tool_calls)
    return message.usage_metadata["input_tokens"], keys(message.response_metadata)


def lc_structured_json_schema(t: Target) -> str:
    city = chat_openai(t, max_tokens=ENGINE_MAX_TOKENS, temperature=0).with_structured_output(
        City, method="json_schema").invoke("What is the capital of France?")
    assert isinstance(city, City)
    return type(city).__name__


def lc_structured_json_mode(t: Target) -> str:
    reply = chat_openai(t, max_tokens=ENGINE_MAX_TOKENS, temperature=0).with_structured_output(
        CITY_SCHEMA, method="json_mode", include_raw=True).invoke(
        "Give the capital of France as JSON with the key city.")
    assert reply["raw"].content.lstrip().startswith("{")
    return type(reply["raw"]).__name__


LC_CASES = {f.__name__: f for f in (lc_invoke, lc_stream, lc_stream_usage, lc_batch, lc_tools,
                                     lc_structured_json_schema, lc_structured_json_mode)}


@pytest.mark.parametrize("name", list(LC_CASES))
def test_langchain_chat_openai(targets, name):
    differential(targets, LC_CASES[name])


# ----------------------------------------------------------------------------- LiteLLM as a client

def litellm_module():
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no fetch from the network on import
    import litellm

    litellm.telemetry = False
    return litellm


def litellm_args(t: Target) -> dict:
    return {"model": f"openai/{MODEL}", "api_base": f"{t.url}/v1", "api_key": "not-needed", "num_retries": 0,
            "timeout": 120}


def litellm_plain(t: Target) -> bool:
    reply = litellm_module().completion(messages=QUESTION, max_tokens=4, **litellm_args(t))
    assert reply.choices[0].message.content.strip() and reply.usage.completion_tokens > 0
    return True


def litellm_stream(t: Target) -> bool:
    before = t.usage()
    chunks = list(litellm_module().completion(messages=QUESTION, max_tokens=4, stream=True, **litellm_args(t)))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip()
    assert_accounted(t, before, 1, None, at_most=4)
    return True


def litellm_tools(t: Target) -> int:
    reply = litellm_module().completion(messages=WEATHER, tools=[WEATHER_TOOL], tool_choice="auto",
                                        max_tokens=6, temperature=0, **litellm_args(t))
    message = reply.choices[0].message
    assert message.content or message.tool_calls
    return reply.usage.prompt_tokens


LITELLM_CASES = {f.__name__: f for f in (litellm_plain, litellm_stream, litellm_tools)}


@pytest.mark.parametrize("name", list(LITELLM_CASES))
def test_litellm_client(targets, name):
    differential(targets, LITELLM_CASES[name])


# ----------------------------------------------------------------------------- raw HTTP

def host_port(t: Target) -> tuple[str, int]:
    host, port = t.url.removeprefix("http://").split(":")
    return host, int(port)


def chat_body(**extra: Any) -> bytes:
    return json.dumps({"model": MODEL, "messages": QUESTION, "max_tokens": 6, **extra}).encode()


def read_sse_lines(resp: http.client.HTTPResponse) -> list[dict]:
    """A stream read line by line as a minimal client does: every line is `data: …` or blank, the last
    event `[DONE]`; returns the JSON events."""
    events, done = [], False
    while True:
        line = resp.readline()
        if not line:
            break
        line = line.rstrip(b"\r\n")
        if not line:
            continue
        assert line.startswith(b"data: ") and not done, line
        if line == b"data: [DONE]":
            done = True
            continue
        events.append(json.loads(line[6:]))
    assert done and events
    return events


def raw_sse_line_by_line(t: Target) -> tuple:
    conn = http.client.HTTPConnection(*host_port(t), timeout=120)
    conn.request("POST", "/v1/chat/completions", body=chat_body(stream=True), headers={
        "Content-Type": "application/json", "Accept": "text/event-stream"})
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("Content-Type").startswith("text/event-stream")
    events = read_sse_lines(resp)
    conn.close()
    assert all(event["choices"] for event in events)  # a reader taking choices[0] of each event
    return event_shapes(events)


def exchange(t: Target, head: bytes, body: bytes) -> tuple[int, dict, bytes]:
    """Send a request by hand and read the answer until the server closes the connection."""
    with socket.create_connection(host_port(t), timeout=120) as sock:
        sock.sendall(head + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    header, _, payload = data.partition(b"\r\n\r\n")
    lines = header.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    return status, headers, payload


def raw_http10(t: Target) -> tuple:
    body = chat_body()
    status, headers, payload = exchange(t, b"POST /v1/chat/completions HTTP/1.0\r\nHost: 127.0.0.1\r\n"
                                        b"Content-Type: application/json\r\nContent-Length: "
                                        + str(len(body)).encode() + b"\r\n\r\n", body)
    assert status == 200 and "chunked" not in headers.get("transfer-encoding", "")
    return chat_shape(json.loads(payload))


def raw_connection_close(t: Target) -> tuple:
    body = chat_body()
    status, headers, payload = exchange(t, b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                        b"Connection: close\r\nContent-Type: application/json\r\nContent-Length: "
                                        + str(len(body)).encode() + b"\r\n\r\n", body)
    assert status == 200
    if headers.get("transfer-encoding") == "chunked":
        raise AssertionError("a one-shot JSON reply is expected with a length")
    return chat_shape(json.loads(payload))


def raw_expect_100_continue(t: Target) -> tuple:
    body = chat_body()
    with socket.create_connection(host_port(t), timeout=120) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                     b"Content-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: "
                     + str(len(body)).encode() + b"\r\n\r\n")
        interim = b""
        while b"\r\n\r\n" not in interim:
            interim += sock.recv(65536)
        assert interim.startswith(b"HTTP/1.1 100"), interim  # the server asks for the body before it is sent
        sock.sendall(body)
        data = interim.split(b"\r\n\r\n", 1)[1]
        while chunk := sock.recv(65536):
            data += chunk
    head, _, payload = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return chat_shape(json.loads(payload))


def raw_chunked_request_body(t: Target) -> tuple:
    body = chat_body()
    conn = http.client.HTTPConnection(*host_port(t), timeout=120)
    conn.request("POST", "/v1/chat/completions", body=iter([body[:10], body[10:40], body[40:]]),
                 headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"}, encode_chunked=True)
    resp = conn.getresponse()
    payload = resp.read()
    conn.close()
    assert resp.status == 200, payload
    return chat_shape(json.loads(payload))


def raw_curl_without_content_type(t: Target) -> tuple:
    """`curl URL -d '{…}'`: curl labels the body a form; the engine reads it as JSON, so slp does too."""
    curl = shutil.which("curl")
    assert curl, "curl is needed (make test installs it)"
    proc = subprocess.run([curl, "-sS", "--fail-with-body", f"{t.url}/v1/chat/completions", "-d", chat_body().decode()],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return chat_shape(json.loads(proc.stdout))


def raw_nulls_for_optional_fields(t: Target) -> tuple:
    """Wrapper code sends null for what it does not set: the engine reads null as "not set"."""
    body = chat_body(stream=None, stream_options=None, temperature=None, top_p=None, n=None, stop=None, seed=None,
                     tools=None, tool_choice=None, response_format=None, logprobs=None, top_logprobs=None,
                     presence_penalty=None, frequency_penalty=None, logit_bias=None, user=None, max_tokens=None,
                     max_completion_tokens=4)
    conn = http.client.HTTPConnection(*host_port(t), timeout=120)
    conn.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    payload = resp.read()
    conn.close()
    assert resp.status == 200, payload
    reply = json.loads(payload)
    assert reply["usage"]["completion_tokens"] <= 4
    return chat_shape(reply)


def raw_unknown_fields_pass(t: Target) -> tuple:
    """A field nobody defines goes to the engine (which ignores it); slp names it in a header."""
    conn = http.client.HTTPConnection(*host_port(t), timeout=120)
    conn.request("POST", "/v1/chat/completions", body=chat_body(my_custom_field={"a": 1}, max_token=3),
                 headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    payload = resp.read()
    conn.close()
    assert resp.status == 200, payload
    if t.agent is not None:
        assert resp.getheader("X-SLP-Unknown-Fields") == "my_custom_field, max_token"
    return chat_shape(json.loads(payload))


def dechunk(payload: bytes) -> bytes:
    out = b""
    while payload:
        size_line, _, payload = payload.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out, payload = out + payload[:size], payload[size + 2:]
    return out


def raw_http10_stream(t: Target) -> tuple:
    """A streaming reply to an HTTP/1.0 client, read until the server closes the connection. (llama-server
    answers it with chunked encoding, which HTTP/1.0 does not have; slp sends the plain stream. The
    case reads either.)"""
    body = chat_body(stream=True)
    status, headers, payload = exchange(t, b"POST /v1/chat/completions HTTP/1.0\r\nHost: 127.0.0.1\r\n"
                                        b"Content-Type: application/json\r\nContent-Length: "
                                        + str(len(body)).encode() + b"\r\n\r\n", body)
    assert status == 200
    if headers.get("transfer-encoding") == "chunked":
        payload = dechunk(payload)
    lines = [line for line in payload.split(b"\n") if line.strip()]
    assert lines[-1] == b"data: [DONE]"
    return event_shapes([json.loads(line[6:]) for line in lines[:-1]])


RAW_CASES = {f.__name__: f for f in (raw_sse_line_by_line, raw_http10, raw_http10_stream, raw_connection_close,
                                      raw_expect_100_continue, raw_chunked_request_body, raw_curl_without_content_type,
                                      raw_nulls_for_optional_fields, raw_unknown_fields_pass)}


@pytest.mark.parametrize("name", list(RAW_CASES))
def test_raw_http(targets, name):
    differential(targets, RAW_CASES[name])


def test_the_engine_never_crashed(targets):
    """None of the above crashed or hung the agent's engine (last: it ran them all)."""
    assert targets["slp"].agent.status()["engine"]["crashes"] == 0


# ----------------------------------------------------------------------------- the usage filter, alone (fast)

FINISH_EVENT = (b'data: {"choices":[{"delta":{},"finish_reason":"stop","index":0}],"created":1,"id":"c",'
                b'"model":"m","object":"chat.completion.chunk","system_fingerprint":"b"}')
USAGE_EVENT = (b'data: {"choices":[],"created":1,"id":"c","model":"m","object":"chat.completion.chunk",'
               b'"system_fingerprint":"b","timings":{"predicted_n":2},"usage":{"completion_tokens":2}}')
DELTA_EVENT = b'data: {"choices":[{"delta":{"content":"\\"choices\\":[]"},"finish_reason":null,"index":0}]}'


@pytest.mark.parametrize("size", [1, 2, 7, 64, 10_000])
def test_hidden_usage_drops_the_added_event_however_the_bytes_are_cut(size):
    """The filter the proxy applies when it added `include_usage`: the usage event goes, its timings move
    to the finish event (where the engine puts them without a usage event), nothing else changes."""
    from slp.server.proxy import HiddenUsage

    stream = b"".join(e + b"\n\n" for e in (DELTA_EVENT, FINISH_EVENT, USAGE_EVENT, b"data: [DONE]"))
    hidden, out = HiddenUsage(), b""
    for start in range(0, len(stream), size):
        out += hidden.feed(stream[start:start + size])
    out += hidden.flush()
    assert out == b"".join(e + b"\n\n" for e in (
        DELTA_EVENT, FINISH_EVENT[:-1] + b',"timings":{"predicted_n":2}}', b"data: [DONE]"))


def test_hidden_usage_passes_whole_events_at_once():
    """Content events go out as they come (no added latency); only a finish event waits for the next bytes."""
    from slp.server.proxy import HiddenUsage

    hidden = HiddenUsage()
    assert hidden.feed(DELTA_EVENT + b"\n\n") == DELTA_EVENT + b"\n\n"
    assert hidden.feed(FINISH_EVENT + b"\n\n") == b""
    assert hidden.feed(b"data: [DONE]\n\n") == FINISH_EVENT + b"\n\ndata: [DONE]\n\n"
    assert hidden.flush() == b""
