"""Ollama's REST API on the agent (slp/server/ollama.py), driven by Ollama's own clients.

- The official `ollama` Python client, the npm `ollama` client (tests/js/ollama.mjs) and LangChain's
  `ChatOllama` run their documented calls against real agents over the real engine and GGUF.
- Every answer is checked against Ollama's documented shapes, written here from its API reference
  (docs/api.md) independently of slp's own response models.
- The translation is held to the engine's own answers for the same request: the same prompt at
  temperature 0 through /v1/chat/completions and /api/chat gives the same text and token counts.
- The shared `agent` serves chat, generate, show, tags, ps (it is not changed); a module agent of its own
  (a private model store, embeddings on, the tests' Hub stand-in as Hugging Face) serves embed, pull,
  copy and delete; the stand-in engine (named as such) breaks a stream midway on request.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Literal, Optional

import pytest
from pydantic import BaseModel, ConfigDict

from conftest import REPO, free_port, kill_all_under, make_agent, processes_under, wait_for
from hub_standin import HubFile, HubRepo, HubStandIn

MODEL = "slp-orchestra-mini"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
SHORT = {"num_predict": 6, "temperature": 0, "seed": 7}
# CACHED: two answers compared token for token must be computed alike. At temperature 0 llama.cpp's numbers
# for a prompt evaluated whole and for one mostly taken from a slot's cache differ slightly, enough to flip
# a near tie on this tiny model (which depends on what the shared agent served before). So the reference is
# asked twice: its second answer, like the one compared with it, comes from the cached prompt.
HUB_REPO = "slp-test/SmolLM2-135M-Instruct-GGUF"
HUB_FILE = "smollm2-135m-instruct-q4_1.gguf"
HUB_NAME = f"hf.co/{HUB_REPO}:Q4_1"
CITY = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}}, "required": ["city"]}
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


# ----------------------------------------------------------------------------- Ollama's documented shapes
# From Ollama's API reference (docs/api.md), written for these tests: fields it documents, their types.

class Doc(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class DocDetails(Doc):
    parent_model: str
    format: str
    family: str
    families: Optional[list[str]]
    parameter_size: str
    quantization_level: str


class DocTag(Doc):
    name: str
    model: str
    modified_at: str
    size: int
    digest: str
    details: DocDetails


class DocTags(Doc):
    models: list[DocTag]


class DocRunning(Doc):
    name: str
    model: str
    size: int
    digest: str
    details: DocDetails
    expires_at: str
    size_vram: int
    context_length: Optional[int] = None


class DocPs(Doc):
    models: list[DocRunning]


class DocShow(Doc):
    modelfile: str
    parameters: str
    template: str
    details: DocDetails
    model_info: dict[str, Any]
    capabilities: list[str]
    license: Optional[str] = None
    modified_at: Optional[str] = None
    system: Optional[str] = None


class DocFunction(Doc):
    name: str
    arguments: dict[str, Any]
    index: Optional[int] = None


class DocToolCall(Doc):
    function: DocFunction
    id: Optional[str] = None


class DocMessage(Doc):
    role: Literal["assistant"]
    content: str
    thinking: Optional[str] = None
    tool_calls: Optional[list[DocToolCall]] = None
    images: Optional[list[str]] = None


class DocFinal(Doc):
    done_reason: Optional[str] = None
    total_duration: Optional[int] = None
    load_duration: Optional[int] = None
    prompt_eval_count: Optional[int] = None
    prompt_eval_duration: Optional[int] = None
    eval_count: Optional[int] = None
    eval_duration: Optional[int] = None


class DocChat(DocFinal):
    model: str
    created_at: str
    message: DocMessage
    done: bool


class DocGenerate(DocFinal):
    model: str
    created_at: str
    response: str
    thinking: Optional[str] = None
    done: bool
    context: Optional[list[int]] = None


class DocEmbed(Doc):
    model: str
    embeddings: list[list[float]]
    total_duration: Optional[int] = None
    load_duration: Optional[int] = None
    prompt_eval_count: Optional[int] = None


class DocProgress(Doc):
    status: str
    digest: Optional[str] = None
    total: Optional[int] = None
    completed: Optional[int] = None


class DocError(Doc):
    error: str


COUNTERS = ("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration", "eval_count",
            "eval_duration", "done_reason")


def assert_final(obj: dict) -> None:
    """A generation's last object: done, with every counter Ollama documents, plausible."""
    assert obj["done"] is True
    for key in COUNTERS:
        assert obj.get(key) is not None, f"{key} missing from {obj}"
    assert obj["done_reason"] in ("stop", "length")
    assert obj["prompt_eval_count"] > 0 and obj["eval_count"] > 0
    assert obj["eval_duration"] > 0 and obj["total_duration"] >= obj["load_duration"] >= 0
    assert obj["total_duration"] >= obj["eval_duration"]


# ----------------------------------------------------------------------------- helpers

def call(url: str, method: str = "GET", body: Any = None, timeout: float = 120) -> tuple[int, dict, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"} if data is not None else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def lines(raw: bytes) -> list[dict]:
    return [json.loads(line) for line in raw.splitlines() if line.strip()]


def client(agent):
    import ollama

    return ollama.Client(host=agent.url, timeout=120)


@pytest.fixture(scope="module")
def hub(default_model):
    standin = HubStandIn()
    standin.repos[HUB_REPO] = HubRepo(files={HUB_FILE: HubFile(default_model)})
    standin.start()
    yield standin
    standin.stop()


@pytest.fixture(scope="module")
def own_agent(tmp_path_factory, default_model, engine_binary, hub):
    """An agent with a model store of its own (the default model linked in), embeddings on, and the Hub
    stand-in as Hugging Face: pulls, copies and deletes change only this store."""
    root = tmp_path_factory.mktemp("ollama-agent")
    models = root / "models"
    models.mkdir()
    try:
        os.link(default_model, models / default_model.name)
    except OSError:
        os.symlink(default_model, models / default_model.name)
    agent = make_agent(root / "home", embeddings="true", max_tokens="32")
    agent.env.update(SLP_MODELS_DIR=str(models), HF_ENDPOINT=hub.url, HF_HOME=str(root / "hf"),
                     HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_TELEMETRY="1", SLP_MEMORY_BUDGET="2GB")
    agent.models = models
    agent.start()
    yield agent
    agent.stop()
    kill_all_under(agent.home)


# ----------------------------------------------------------------------------- listing and facts

def test_root_version_tags_show_ps_with_the_python_client(agent):
    status, headers, body = call(agent.url + "/")
    assert (status, body) == (200, b"Ollama is running") and headers["Content-Type"].startswith("text/plain")
    req = urllib.request.Request(agent.url + "/", method="HEAD")
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 200

    c = client(agent)
    assert c._client.get("/api/version").json()["version"].count(".") == 2

    listed = c.list()
    names = [m.model for m in listed.models]
    raw = DocTags.model_validate(json.loads(call(agent.url + "/api/tags")[2]))
    default = next(m for m in raw.models if m.name == "SmolLM2-135M-Instruct-Q4_1")
    assert default.name in names
    assert default.details.format == "gguf" and default.details.family == "llama"
    assert default.details.parameter_size == "135M" and default.details.quantization_level == "Q4_1"
    assert default.size == Path(agent.get("/v1/models/" + MODEL)["details"]["path"]).stat().st_size
    assert default.digest == agent.get("/v1/models/" + MODEL)["details"]["sha256"]

    shown = c.show(MODEL)  # an alias works like the name
    assert "<|im_start|>" in shown.template and "completion" in shown.capabilities
    raw_show = DocShow.model_validate(json.loads(call(agent.url + "/api/show", "POST", {"model": MODEL})[2]))
    assert raw_show.model_info["general.architecture"] == "llama"
    assert raw_show.model_info["llama.context_length"] == 8192
    assert raw_show.model_info["tokenizer.ggml.tokens"] is None  # long arrays only with verbose
    assert raw_show.license == "apache-2.0"
    verbose = json.loads(call(agent.url + "/api/show", "POST", {"model": MODEL, "verbose": True})[2])
    assert len(verbose["model_info"]["tokenizer.ggml.tokens"]) == 49152

    c.chat(model=MODEL, messages=QUESTION, options={"num_predict": 1})  # loaded, whatever ran before
    running = DocPs.model_validate(json.loads(call(agent.url + "/api/ps")[2]))
    row = next(m for m in running.models if m.name == "SmolLM2-135M-Instruct-Q4_1")
    assert row.size > 50_000_000 and row.size_vram == 0 and row.context_length == 4096
    assert row.expires_at.startswith("2318")  # the agent's default model is pinned: Ollama's "forever"
    assert [m.model for m in c.ps().models].count("SmolLM2-135M-Instruct-Q4_1") == 1


# ----------------------------------------------------------------------------- chat and generate

def test_chat_matches_the_engine_answer_for_the_same_request(agent):
    """At temperature 0 the text and token counts are the engine's own (through /v1/chat/completions)."""
    from openai import OpenAI

    for _ in range(2):  # twice (see CACHED)
        reference = OpenAI(base_url=agent.url + "/v1", api_key="x", max_retries=0).chat.completions.create(
            model=MODEL, messages=QUESTION, max_tokens=SHORT["num_predict"], temperature=0, seed=7)
    c = client(agent)
    whole = c.chat(model=MODEL, messages=QUESTION, options=SHORT)
    assert whole.message.content == reference.choices[0].message.content
    assert whole.prompt_eval_count == reference.usage.prompt_tokens
    assert whole.eval_count == reference.usage.completion_tokens
    assert whole.done_reason == {"length": "length", "stop": "stop"}[reference.choices[0].finish_reason]
    status, headers, body = call(agent.url + "/api/chat", "POST",
                                 {"model": MODEL, "messages": QUESTION, "options": SHORT, "stream": False})
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    assert_final(DocChat.model_validate(json.loads(body)).model_dump(exclude_none=True))

    parts = list(c.chat(model=MODEL, messages=QUESTION, options=SHORT, stream=True))
    assert "".join(p.message.content for p in parts) == reference.choices[0].message.content
    assert [p.done for p in parts].count(True) == 1 and parts[-1].done
    status, headers, body = call(agent.url + "/api/chat", "POST", {"model": MODEL, "messages": QUESTION,
                                                                   "options": SHORT})
    assert headers["Content-Type"].startswith("application/x-ndjson")  # streaming is Ollama's default
    objects = [DocChat.model_validate(o).model_dump(exclude_none=True) for o in lines(body)]
    assert len(objects) > 2 and not any(o["done"] for o in objects[:-1])
    assert_final(objects[-1])
    assert objects[-1]["prompt_eval_count"] == reference.usage.prompt_tokens


def test_generate_templated_and_raw_match_the_engine(agent):
    from openai import OpenAI

    oa = OpenAI(base_url=agent.url + "/v1", api_key="x", max_retries=0)
    c = client(agent)
    for _ in range(2):  # (twice: see the raw case below)
        templated = oa.chat.completions.create(model=MODEL, max_tokens=6, temperature=0, messages=[
            {"role": "system", "content": "Answer briefly."}, *QUESTION])
    whole = c.generate(model=MODEL, prompt=QUESTION[0]["content"], system="Answer briefly.", options=SHORT)
    assert whole.response == templated.choices[0].message.content
    assert whole.prompt_eval_count == templated.usage.prompt_tokens

    # Asked twice, so the engine answers from its prompt cache, as it will for the same prompt next: at
    # temperature 0 a cached and an uncached prefix can pick different tokens on this tiny model.
    for _ in range(2):
        raw = oa.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=6, temperature=0)
    parts = list(c.generate(model=MODEL, prompt="The capital of France is", raw=True, options=SHORT, stream=True))
    assert "".join(p.response for p in parts) == raw.choices[0].text
    final = DocGenerate.model_validate(parts[-1].model_dump(exclude_none=True)).model_dump(exclude_none=True)
    assert_final(final)
    assert (final["prompt_eval_count"], final["eval_count"]) == (raw.usage.prompt_tokens, raw.usage.completion_tokens)
    body = call(agent.url + "/api/generate", "POST", {"model": MODEL, "prompt": "Hi", "stream": False,
                                                       "options": SHORT})[2]
    assert_final(DocGenerate.model_validate(json.loads(body)).model_dump(exclude_none=True))


def test_format_schema_options_and_unknown_fields(agent):
    """`format` becomes the engine's JSON schema constraint: the same answer as OpenAI's `response_format`
    through the agent, and raw text that follows the schema. (Short: constrained decoding on this tiny
    model is slow once the object is complete.)"""
    from openai import OpenAI

    question = [{"role": "user", "content": "Name a city in France."}]
    reference = OpenAI(base_url=agent.url + "/v1", api_key="x", max_retries=0).chat.completions.create(
        model=MODEL, messages=question, max_tokens=8, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "format", "schema": CITY}})
    c = client(agent)
    reply = c.chat(model=MODEL, messages=question, format=CITY, options={"num_predict": 8, "temperature": 0})
    assert reply.message.content == reference.choices[0].message.content
    free = c.chat(model=MODEL, messages=question, options={"num_predict": 8, "temperature": 0})
    assert free.message.content != reply.message.content  # the constraint changed the answer
    reply = c.generate(model=MODEL, prompt="The best city in France, as JSON:", format=CITY, raw=True,
                       options={"num_predict": 8, "temperature": 0})
    assert reply.response.replace(" ", "").replace("\n", "").startswith('{"city":"')
    # stop maps onto the engine's stop strings; engine-sizing and unknown options are named, not lost
    status, headers, body = call(agent.url + "/api/generate", "POST", {
        "model": MODEL, "prompt": "1, 2, 3, 4,", "raw": True, "stream": False,
        "options": {"num_predict": 12, "temperature": 0, "stop": [" 6"], "num_ctx": 2048, "typo_option": 1}})
    answer = json.loads(body)
    assert status == 200 and " 6" not in answer["response"] and answer["done_reason"] == "stop"
    assert headers["X-SLP-Unknown-Fields"] == "options.typo_option, options.num_ctx"


def test_tools_round_trip_with_the_python_client(agent):
    """Tools and an earlier call with its tool answer reach the engine as the same OpenAI request would
    (the same prompt tokens); SmolLM2's template describes no tools, so it answers in text."""
    from openai import OpenAI

    call_args = {"city": "Paris"}
    ours = [{"role": "user", "content": "What is the weather in Paris?"},
            {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get_weather",
                                                                               "arguments": call_args}}]},
            {"role": "tool", "content": "Sunny, 21 degrees.", "tool_name": "get_weather"}]
    theirs = [ours[0], {"role": "assistant", "content": "", "tool_calls": [{
        "id": "call_1_0", "type": "function", "function": {"name": "get_weather", "arguments": json.dumps(call_args)}}]},
        {"role": "tool", "content": "Sunny, 21 degrees.", "tool_call_id": "call_1_0", "name": "get_weather"}]
    for _ in range(2):  # twice (see CACHED)
        reference = OpenAI(base_url=agent.url + "/v1", api_key="x", max_retries=0).chat.completions.create(
            model=MODEL, messages=theirs, tools=[WEATHER_TOOL], max_tokens=6, temperature=0)
    reply = client(agent).chat(model=MODEL, messages=ours, tools=[WEATHER_TOOL], options=SHORT)
    assert reply.prompt_eval_count == reference.usage.prompt_tokens
    assert reply.message.content == reference.choices[0].message.content


def test_streamed_tool_call_deltas_become_one_ollama_tool_call():
    """llama-server streams a call's arguments in pieces (OpenAI's deltas); Ollama sends the call whole,
    arguments as an object, in one object before the last. (The translation alone: no tool-calling model
    in the tests' store.)"""
    from slp.server.ollama import Reply

    reply = Reply("m", "chat", native=False, started=time.perf_counter())
    events = [
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": None}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "c1", "type": "function",
                                                             "function": {"name": "get_weather", "arguments": ""}}]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}],
         "timings": {"prompt_n": 9, "prompt_ms": 5.0, "predicted_n": 4, "predicted_ms": 8.0}},
        {"choices": [], "usage": {"prompt_tokens": 30, "completion_tokens": 4}},
    ]
    out = [obj for event in events for obj in reply.feed(event)]
    assert len(out) == 1 and out[0]["done"] is False
    DocChat.model_validate(out[0])
    assert out[0]["message"]["tool_calls"] == [{"function": {"name": "get_weather", "arguments": {"city": "Paris"},
                                                             "index": 0}, "id": "c1"}]
    final = reply.final()
    assert (final["done_reason"], final["prompt_eval_count"], final["eval_count"]) == ("stop", 30, 4)
    assert (final["prompt_eval_duration"], final["eval_duration"]) == (5_000_000, 8_000_000)
    whole = reply.whole()
    assert whole["message"]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}


def test_keep_alive_zero_unloads_and_an_empty_chat_loads(agent, second_model):
    c = client(agent)
    loaded = c.chat(model="gemma-3-270m", messages=[])
    assert (loaded.done, loaded.done_reason, loaded.message.content) == (True, "load", "")
    assert "gemma-3-270m-Q4_K_M" in [m.model for m in c.ps().models]
    c.generate(model="gemma-3-270m", prompt="Hi", options={"num_predict": 1}, keep_alive=0)
    wait_for(lambda: "gemma-3-270m-Q4_K_M" not in [m.model for m in c.ps().models], 30, "gemma to unload")
    c.chat(model="gemma-3-270m", messages=[], keep_alive=-1)
    row = next(m for m in c.ps().models if m.model == "gemma-3-270m-Q4_K_M")
    assert row.expires_at.year == 2318  # kept loaded for good, as Ollama says it
    unloaded = c.generate(model="gemma-3-270m", prompt="", keep_alive=0)
    assert unloaded.done_reason == "unload"
    assert "gemma-3-270m-Q4_K_M" not in [m.model for m in c.ps().models]


def test_a_project_name_is_a_model_with_its_prompt_and_usage(agent):
    from openai import OpenAI

    status, _, body = call(agent.url + "/v1/projects", "POST", {
        "name": "ollama-proj", "system_prompt": "You answer in French.", "params": {"temperature": 0}})
    assert status == 201, body
    project = json.loads(body)
    try:
        for _ in range(2):  # twice: the reply below is then computed from the same cached prompt (see CACHED)
            reference = OpenAI(base_url=agent.url + "/v1", api_key="x", max_retries=0).chat.completions.create(
                model=MODEL, messages=QUESTION, max_tokens=4, extra_body={"project_id": "ollama-proj"})
        before = agent.get(f"/v1/projects/{project['id']}/usage")
        reply = client(agent).chat(model="ollama-proj", messages=QUESTION, options={"num_predict": 4})
        assert reply.model == "ollama-proj"
        assert reply.message.content == reference.choices[0].message.content  # its prompt and temperature
        assert reply.prompt_eval_count == reference.usage.prompt_tokens
        after = wait_for(lambda: (u := agent.get(f"/v1/projects/{project['id']}/usage"))["requests"]
                         > before["requests"] and u, 10, "the usage to be recorded")
        assert after["prompt_tokens"] - before["prompt_tokens"] == reply.prompt_eval_count
        assert after["completion_tokens"] - before["completion_tokens"] == reply.eval_count
        shown = DocShow.model_validate(json.loads(call(agent.url + "/api/show", "POST", {"model": "ollama-proj"})[2]))
        assert shown.system == "You answer in French." and "temperature" in shown.parameters
    finally:
        call(agent.url + f"/v1/projects/{project['id']}", "DELETE")


def test_errors_have_ollamas_shape(agent):
    import ollama

    with pytest.raises(ollama.ResponseError) as caught:
        client(agent).chat(model="no-such-model", messages=QUESTION)
    assert caught.value.status_code == 404 and "no-such-model" in caught.value.error
    cases = [
        ("/api/chat", {"model": MODEL, "messages": QUESTION, "options": {"temperature": "hot"}}, 400),
        ("/api/chat", {"messages": QUESTION}, 400),
        ("/api/chat", {"model": MODEL, "messages": [{"role": "robot", "content": "x"}]}, 400),
        ("/api/generate", {"model": MODEL, "prompt": "x", "images": ["aGk="], "stream": False}, 400),
        ("/api/chat", {"model": MODEL, "messages": QUESTION, "think": True}, 400),
        ("/api/chat", {"model": MODEL, "messages": QUESTION, "format": {"type": 5}, "stream": False}, 400),
        ("/api/show", {"model": "no-such-model"}, 404),
        ("/api/create", {"model": "x", "from": MODEL}, 400),
        ("/api/push", {"model": "x"}, 400),
    ]
    for path, body, expected in cases:
        status, headers, raw = call(agent.url + path, "POST", body)
        assert status == expected, (path, body, raw)
        assert headers["Content-Type"].startswith("application/json")
        DocError.model_validate(json.loads(raw))
    status, _, raw = call(agent.url + "/api/chat", "POST", None)
    assert status == 400 and DocError.model_validate(json.loads(raw))


def test_a_stream_that_fails_midway_ends_with_an_error_object(standin_agent):
    """The stand-in engine (named as such) kills itself after two events: the NDJSON stream ends with an
    error object, never a cut connection or a `done` object."""
    body = {"model": MODEL, "messages": QUESTION, "options": {"num_predict": 4, "standin": {"die_after": 2}}}
    status, headers, raw = call(standin_agent.url + "/api/chat", "POST", body)
    assert status == 200 and headers["Content-Type"].startswith("application/x-ndjson")
    objects = lines(raw)
    assert "error" in objects[-1] and not any(o.get("done") for o in objects), objects
    DocError.model_validate(objects[-1])
    wait_for(lambda: call(standin_agent.url + "/health")[0] == 200, 30, "the engine to be back")
    dying = {**body, "stream": False, "options": {"num_predict": 4, "standin": {"die_after": 0}}}
    status, _, raw = call(standin_agent.url + "/api/chat", "POST", dying)  # dies before its answer
    assert status in (500, 503) and DocError.model_validate(json.loads(raw)), raw


# ----------------------------------------------------------------------------- LangChain

def test_langchain_chat_ollama_invokes_and_streams(agent):
    from langchain_ollama import ChatOllama

    llm = ChatOllama(model=MODEL, base_url=agent.url, num_predict=6, temperature=0, seed=7)
    for _ in range(2):  # twice (see CACHED)
        direct = client(agent).chat(model=MODEL, messages=QUESTION, options=SHORT)
    message = llm.invoke(QUESTION[0]["content"])
    assert message.content == direct.message.content
    assert message.usage_metadata["input_tokens"] == direct.prompt_eval_count
    assert message.usage_metadata["output_tokens"] == direct.eval_count
    chunks = list(llm.stream(QUESTION[0]["content"]))
    assert len(chunks) > 2 and "".join(c.content for c in chunks) == direct.message.content


# ----------------------------------------------------------------------------- embed, pull, copy, delete

def test_embed_matches_the_engine_embeddings(own_agent):
    c = client(own_agent)
    texts = ["The capital of France is Paris.", "Bananas are yellow."]
    answer = c.embed(model=MODEL, input=texts)
    raw = DocEmbed.model_validate(json.loads(call(own_agent.url + "/api/embed", "POST",
                                                  {"model": MODEL, "input": texts})[2]))
    engine = json.loads(call(own_agent.url + "/v1/embeddings", "POST", {"model": MODEL, "input": texts})[2])
    assert len(answer.embeddings) == 2 and raw.prompt_eval_count == engine["usage"]["prompt_tokens"]
    for ours, theirs in zip(raw.embeddings, (d["embedding"] for d in engine["data"])):
        assert max(abs(a - b) for a, b in zip(ours, theirs)) < 1e-6
    single = c.embeddings(model=MODEL, prompt=texts[0])
    assert max(abs(a - b) for a, b in zip(single.embedding, engine["data"][0]["embedding"])) < 1e-6


def test_pull_copy_delete_with_the_python_client(own_agent, hub):
    c = client(own_agent)
    progress = list(c.pull(HUB_NAME, stream=True))
    statuses = [p.status for p in progress]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    files = [p for p in progress if p.digest == HUB_FILE]
    assert files and files[-1].completed == files[-1].total == Path(own_agent.models / "SmolLM2-135M-Instruct-Q4_1.gguf").stat().st_size
    status, _, raw = call(own_agent.url + "/api/pull", "POST", {"model": HUB_NAME})
    for obj in lines(raw):
        DocProgress.model_validate(obj)
    assert c.pull(HUB_NAME).status == "success"  # stream false: one object

    pulled = "smollm2-135m-instruct-q4_1"
    assert pulled in [m.model for m in c.list().models]
    assert c.show(HUB_NAME).details.quantization_level == "Q4_1"  # Ollama's name for it works
    reply = c.chat(model=HUB_NAME, messages=QUESTION, options={"num_predict": 2})
    assert reply.done and reply.eval_count > 0

    assert c.copy(pulled, "my-copy").status == "success"
    assert "my-copy" in [m.model for m in c.list().models]
    assert c.delete("my-copy").status == "success"
    assert "my-copy" not in [m.model for m in c.list().models]
    blob = Path(own_agent.get("/v1/models/" + pulled)["details"]["path"])
    assert blob.is_file()  # deleting the copy left the files
    assert c.delete(HUB_NAME).status == "success"
    assert pulled not in [m.model for m in c.list().models] and not blob.exists()

    import ollama

    for bad in (lambda: c.delete("my-copy"), lambda: c.copy("no-such-model", "x"), lambda: c.pull("no/such/file.gguf")):
        with pytest.raises(ollama.ResponseError) as caught:
            bad()
        assert caught.value.status_code in (400, 404)


def test_the_npm_ollama_client(own_agent):
    """tests/js/ollama.mjs: the npm client's documented calls (list, show, ps, version, chat and generate
    streamed and not, embed, format, tools, pull, copy, delete, keep_alive 0), each checked there."""
    js = REPO / "tests" / "js"
    assert (js / "node_modules" / "ollama").is_dir(), "run: npm ci --prefix tests/js"
    proc = subprocess.run(["node", str(js / "ollama.mjs"), own_agent.url], capture_output=True, text=True,
                          timeout=240, cwd=js)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    failed = {name: r for name, r in results.items() if not r["ok"]}
    assert not failed, failed
    assert set(results) == {"version", "list", "show", "ps", "chat", "chat_stream", "generate", "generate_stream",
                            "embed", "format", "tools", "pull", "copy_delete", "keep_alive_0"}


def test_a_second_listener_on_ollamas_port(fresh_standin_agent):
    """SLP_OLLAMA_PORT: the same API on a second port, for tools with Ollama's port hard-coded; a port that
    is taken is one clear line, and no agent or engine is left behind."""
    port = free_port()
    agent = fresh_standin_agent(ollama_port=str(port))
    agent.start()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as resp:
        assert resp.read() == b"Ollama is running"
    status, _, raw = call(f"http://127.0.0.1:{port}/api/chat", "POST", {
        "model": "slp-orchestra-mini", "stream": False, "messages": [{"role": "user", "content": "hi"}]})
    assert status == 200 and json.loads(raw)["done"] is True and json.loads(raw)["message"]["content"], raw
    assert agent.state()["ollama_url"] == f"http://127.0.0.1:{port}"
    assert f"ollama: also at http://127.0.0.1:{port}" in agent.cli("agent", "status", check=True).stdout
    agent.stop()

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        second = fresh_standin_agent(ollama_port=str(busy))
        proc = second.cli("agent", "start", timeout=120)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
        assert f"port {busy} on 127.0.0.1 (SLP_OLLAMA_PORT) is already in use" in proc.stderr, proc.stderr
        wait_for(lambda: not processes_under(second.home), 30, "the refused agent and its engine to be gone")
