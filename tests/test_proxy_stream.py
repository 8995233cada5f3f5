"""Fast tests of the proxy's stream handling: a real agent (`slp agent start`, real HTTP on loopback) whose
engine is the stand-in (`tests/standin_engine.py`, named as such), so what the engine sends is known to
the byte and it can be told to die, stall or refuse. The same behaviour against the real llama-server
is tested end to end in test_faults.py, test_stall.py and test_client_compat.py.

The stand-in records each request it got and the exact bytes it sent back (`standin_agent.record`), so a
test compares what the client received with what the engine sent.
"""

from __future__ import annotations

import json
import uuid

import pytest
import requests

from conftest import Agent, wait_for


def ask(marker: str, **extra) -> dict:
    """A chat body whose prompt carries `marker`, so the stand-in's record of it can be found."""
    return {"model": "slp-orchestra-mini", "messages": [{"role": "user", "content": f"marker {marker}"}],
            "max_tokens": 5, **extra}


def sent_by_engine(agent: Agent, marker: str) -> tuple[dict, bytes]:
    """The body the engine got for the request carrying `marker`, and the bytes it answered."""
    for request in agent.record.glob("*.request.json"):
        body = json.loads(request.read_text())
        if marker in json.dumps(body["messages"]):
            return body, request.with_name(request.name.replace(".request.json", ".reply")).read_bytes()
    raise AssertionError(f"the engine never got the request marked {marker}")


def events(raw: bytes) -> list[bytes]:
    return [e for e in raw.split(b"\n\n") if e.strip()]


def ready(agent: Agent) -> bool:
    try:
        return agent.get("/health")["status"] == "ok"
    except OSError:
        return False


def project_usage(agent: Agent) -> dict:
    project = agent.status()["active_project"]["id"]
    return agent.get(f"/v1/projects/{project}/usage")


def test_a_stream_passes_through_byte_for_byte(standin_agent):
    marker = uuid.uuid4().hex
    with requests.post(f"{standin_agent.url}/v1/chat/completions", stream=True, timeout=30,
                       json=ask(marker, stream=True, stream_options={"include_usage": True})) as resp:
        assert resp.status_code == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
        received = b"".join(resp.iter_content(chunk_size=None))
    _, sent = sent_by_engine(standin_agent, marker)
    assert received == sent, "the client got exactly the engine's bytes"
    assert events(received)[-1] == b"data: [DONE]" and len(events(received)) == 9  # role, 5 tokens, finish, usage

    marker = uuid.uuid4().hex
    resp = requests.post(f"{standin_agent.url}/v1/chat/completions", json=ask(marker), timeout=30)
    assert resp.status_code == 200 and resp.content == sent_by_engine(standin_agent, marker)[1]


def sent_bytes(agent: Agent, marker: str) -> bytes:
    """The exact bytes of the request carrying `marker`, as the engine received them."""
    for request in agent.record.glob("*.request.json"):
        raw = request.read_bytes()
        if marker.encode() in raw:
            return raw
    raise AssertionError(f"the engine never got the request marked {marker}")


def test_a_request_the_project_leaves_alone_reaches_the_engine_as_the_client_sent_it(standin_agent):
    """Nothing to apply: the client's own bytes are forwarded (not parsed and serialised again). Something
    to apply (here slp's own field, `project_id`): the engine gets the shaped body, without that field."""
    marker = uuid.uuid4().hex
    raw = (b'{ "messages" : [ {"content": "marker %s", "role": "user"} ],\n  "max_tokens": 5,'
           b' "model": "slp-orchestra-mini", "temperature": 0.50 }' % marker.encode())
    resp = requests.post(f"{standin_agent.url}/v1/chat/completions", data=raw, timeout=30,
                         headers={"Content-Type": "application/json"})
    assert resp.status_code == 200, resp.text
    assert sent_bytes(standin_agent, marker) == raw

    marker = uuid.uuid4().hex
    resp = requests.post(f"{standin_agent.url}/v1/chat/completions", timeout=30,
                         json=ask(marker, project_id="general_chat"))
    assert resp.status_code == 200, resp.text
    forwarded = json.loads(sent_bytes(standin_agent, marker))
    assert "project_id" not in forwarded and forwarded["max_tokens"] == 5


def test_a_stream_that_did_not_ask_for_usage_gets_none_and_is_still_accounted(standin_agent):
    before = project_usage(standin_agent)
    marker = uuid.uuid4().hex
    with requests.post(f"{standin_agent.url}/v1/chat/completions", stream=True, timeout=30,
                       json=ask(marker, stream=True)) as resp:
        received = events(b"".join(resp.iter_content(chunk_size=None)))
    forwarded, sent = sent_by_engine(standin_agent, marker)
    assert forwarded["stream_options"] == {"include_usage": True}, "slp asked the engine for the usage"
    usage_event = json.loads(events(sent)[-2][len(b"data: "):])
    assert usage_event["choices"] == [] and usage_event["usage"]["completion_tokens"] == 5
    assert received[-1] == b"data: [DONE]"
    shown = [json.loads(e[len(b"data: "):]) for e in received[:-1]]
    assert all(e["choices"] for e in shown), "no usage event with empty choices reaches the client"
    assert shown[-1]["choices"][0]["finish_reason"] == "length"
    assert shown[-1]["timings"] == usage_event["timings"], "the timings go back on the finish event"
    assert received[:-2] == events(sent)[:-3], "every other event is the engine's, unchanged"

    after = wait_for(lambda: (u := project_usage(standin_agent))["requests"] > before["requests"] and u, 10,
                     "the usage to be recorded")
    assert after["requests"] - before["requests"] == 1
    assert after["completion_tokens"] - before["completion_tokens"] == usage_event["usage"]["completion_tokens"]
    assert after["prompt_tokens"] - before["prompt_tokens"] == usage_event["usage"]["prompt_tokens"]


def test_engine_death_mid_stream_ends_with_one_error_event_and_no_done(standin_agent):
    crashes = standin_agent.status()["engine"]["crashes"]
    marker = uuid.uuid4().hex
    with requests.post(f"{standin_agent.url}/v1/chat/completions", stream=True, timeout=30,
                       json=ask(marker, stream=True, max_tokens=50, standin={"die_after": 4})) as resp:
        assert resp.status_code == 200
        received = events(b"".join(resp.iter_content(chunk_size=None)))
    _, sent = sent_by_engine(standin_agent, marker)
    assert len(events(sent)) == 4 and received[:4] == events(sent), "what the engine sent, then the error"
    assert len(received) == 5 and b"[DONE]" not in b"".join(received)
    error = json.loads(received[4][len(b"data: "):])
    assert set(error) == {"error"} and set(error["error"]) == {"message", "type", "param", "code"}
    assert error["error"]["type"] == "server_error" and error["error"]["code"] == "engine_failed"
    assert error["error"]["param"] is None and "crash" in error["error"]["message"], error
    wait_for(lambda: ready(standin_agent), 20, "the engine to be back")
    engine = standin_agent.status()["engine"]
    assert engine["crashes"] == crashes + 1 and engine["last_exit"]["signal"] == "SIGKILL"


def test_a_stalled_engine_ends_the_stream_with_an_error_naming_the_stall(standin_agent):
    marker = uuid.uuid4().hex
    with requests.post(f"{standin_agent.url}/v1/chat/completions", stream=True, timeout=30,
                       json=ask(marker, stream=True, max_tokens=50, standin={"stall_after": 3})) as resp:
        received = events(b"".join(resp.iter_content(chunk_size=None)))
    assert len(received) == 4 and b"[DONE]" not in b"".join(received)
    error = json.loads(received[-1][len(b"data: "):])["error"]
    assert error["code"] == "engine_failed" and "stall" in error["message"], error
    wait_for(lambda: ready(standin_agent), 20, "the engine to be back")
    assert standin_agent.status()["engine"]["last_exit"]["reason"] == "stall"


@pytest.mark.parametrize("engine_status, status, code, type_", [
    (400, 400, "invalid_request_error", "invalid_request_error"),  # llama-server's code is an int: type stands in
    (501, 400, "not_supported", "invalid_request_error"),  # a feature this engine does not serve
    (503, 503, "unavailable_error", "unavailable_error"),
])
@pytest.mark.parametrize("stream", [False, True])
def test_an_engine_error_status_becomes_an_openai_error(standin_agent, engine_status, status, code, type_, stream):
    marker = uuid.uuid4().hex
    told = {"status": engine_status, "message": f"refused {marker}", "type": type_ if engine_status != 501 else
            "not_supported_error"}
    resp = requests.post(f"{standin_agent.url}/v1/chat/completions", timeout=30,
                         json=ask(marker, stream=stream, standin=told))
    assert resp.status_code == status and resp.headers["Content-Type"].startswith("application/json")
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"] == f"engine: refused {marker}" and error["code"] == code and error["type"] == type_
    assert resp.headers["X-SLP-Unknown-Fields"] == "standin", "a refusal names the unknown fields too"


def engine_processing(agent: Agent) -> float:
    """The engine's own `requests_processing` gauge, as the agent re-exports it."""
    text = requests.get(f"{agent.url}/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith('llamacpp:requests_processing{model="slp-orchestra-mini"}'):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError("the engine's metrics are not re-exported")


def test_a_client_that_hangs_up_stops_the_engine_s_generation(standin_agent):
    marker = uuid.uuid4().hex
    body = ask(marker, stream=True, max_tokens=200, standin={"token_delay": 0.05})  # 10 s if read to the end
    with requests.post(f"{standin_agent.url}/v1/chat/completions", stream=True, timeout=30, json=body) as resp:
        lines = resp.iter_lines()
        first = [line for line, _ in zip((line for line in lines if line), range(3))]
        assert engine_processing(standin_agent) == 1, "the engine is generating for this client"
    assert len(first) == 3 and all(line.startswith(b"data: ") for line in first)
    wait_for(lambda: engine_processing(standin_agent) == 0, 5, "the engine to stop generating for the gone client")
    _, sent = sent_by_engine(standin_agent, marker)
    assert b"[DONE]" not in sent and len(events(sent)) < 100, "the generation was cut short"
