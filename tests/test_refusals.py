"""slp's own refusals: each is made in one place (slp.server.errors), so it reads the same on every route
that raises it, and a request to a proxied route that slp refuses (a bad field, no such model or project,
admission's 429) still gets its request-log line, with its status and the error's code.

Against a real agent whose engine is the stand-in (tests/standin_engine.py, named as such), with one slot
and no queue, so a second request while one streams is refused at admission.
"""

from __future__ import annotations

import json
import uuid

import pytest
import requests

from conftest import Agent, kill_all_under, make_standin_agent, wait_for

CHAT = "/v1/chat/completions"
MODEL = "slp-orchestra-mini"


@pytest.fixture(scope="module")
def one_slot_agent(tmp_path_factory, default_model) -> Agent:
    agent = make_standin_agent(tmp_path_factory.mktemp("refusals"), parallel="1", max_queue="0", max_tokens="4")
    agent.start()
    yield agent
    agent.stop()
    kill_all_under(agent.home)


def log_lines(agent: Agent) -> list[dict]:
    path = agent.home / "logs" / "requests.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.exists() else []


def next_log_line(agent: Agent, before: int) -> dict:
    """The request-log line after the first `before` ones, once its writer (about once a second) wrote it."""
    return wait_for(lambda: (lines := log_lines(agent))[before:] and lines[before], 10, "the request's log line")


def chat(agent: Agent, **body) -> requests.Response:
    return requests.post(agent.url + CHAT, json={"messages": [{"role": "user", "content": "hi"}], **body}, timeout=30)


@pytest.mark.parametrize("body, status, code", [
    ({"temperature": "hot"}, 400, "invalid_request"),  # slp's own validation, before the project and the engine
    ({"keep_alive": "soon"}, 400, "invalid_value"),
    ({"project_id": "no-such-project"}, 404, "project_not_found"),
    ({"model": "no-such-model"}, 404, "model_not_found"),
], ids=["bad-field", "bad-keep-alive", "no-project", "no-model"])
def test_a_request_refused_before_the_engine_gets_a_log_line(one_slot_agent, body, status, code):
    before = len(log_lines(one_slot_agent))
    resp = chat(one_slot_agent, **body)
    assert resp.status_code == status and resp.json()["error"]["code"] == code, resp.text
    line = next_log_line(one_slot_agent, before)
    assert (line["route"], line["status"], line["error_code"]) == (CHAT, status, code), line
    assert line["engine"] is None and line["prompt_tokens"] is None, "the engine never saw it"


def test_a_request_refused_at_admission_gets_a_log_line_with_its_project(one_slot_agent):
    slow = {"model": MODEL, "stream": True, "standin": {"token_delay": 0.5}}
    with requests.post(one_slot_agent.url + CHAT, stream=True, timeout=30,
                       json={"messages": [{"role": "user", "content": "hold the one slot"}], **slow}) as held:
        assert held.status_code == 200
        next(held.iter_lines())  # the stream has begun: its request holds the only admission
        before = len(log_lines(one_slot_agent))
        refused = chat(one_slot_agent, model=MODEL)
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limit_exceeded", refused.text
        line = next_log_line(one_slot_agent, before)
    assert (line["status"], line["error_code"], line["project"], line["model"]) == \
        (429, "rate_limit_exceeded", "general_chat", MODEL), line


def test_an_answered_request_s_log_line_has_no_error_code(one_slot_agent):
    before = len(log_lines(one_slot_agent))
    assert chat(one_slot_agent, model=MODEL).status_code == 200
    line = next_log_line(one_slot_agent, before)
    assert line["status"] == 200 and "error_code" not in line and line["engine"]["model"], line


def test_model_not_found_reads_the_same_on_every_route(one_slot_agent):
    """One mapping: the same message, code and param from the proxy, the model routes and a project's
    `model` (there a 422, like the project's other invalid fields)."""
    url, name = one_slot_agent.url, f"nothing-{uuid.uuid4().hex[:8]}"
    answers = {
        "chat": chat(one_slot_agent, model=name),
        "get": requests.get(f"{url}/v1/models/{name}", timeout=30),
        "load": requests.post(f"{url}/v1/models/{name}/load", timeout=30),
        "project": requests.post(f"{url}/v1/projects", json={"name": "p-" + name, "model": name}, timeout=30),
    }
    statuses = {route: resp.status_code for route, resp in answers.items()}
    assert statuses == {"chat": 404, "get": 404, "load": 404, "project": 422}, statuses
    errors = [resp.json()["error"] for resp in answers.values()]
    assert all(error == errors[0] for error in errors), errors
    assert errors[0]["code"] == "model_not_found" and errors[0]["param"] == "model" and name in errors[0]["message"]

