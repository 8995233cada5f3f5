"""Projects applied to real requests: real agent, real engine, real SQLite file. (That the active project
survives a restart is the agent's own state, so that test restarts an agent over the stand-in engine,
tests/standin_engine.py, named as such.)"""

from __future__ import annotations

import json
import re
import uuid

import requests
from openai import OpenAI

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def new_project(agent, **fields) -> dict:
    body = {"name": f"p-{uuid.uuid4().hex[:8]}", **fields}
    resp = requests.post(f"{agent.url}/v1/projects", json=body, timeout=10)
    assert resp.status_code == 201, resp.text
    return resp.json()


def usage_of(agent, project) -> dict:
    return requests.get(f"{agent.url}/v1/projects/{project['id']}/usage", timeout=10).json()


def test_project_max_tokens_default_is_applied(agent):
    project = new_project(agent, params={"max_tokens": 3})
    client = OpenAI(base_url=f"{agent.url}/v1", api_key="not-needed")
    response = client.chat.completions.create(model="slp-orchestra-mini", messages=QUESTION,
                                              extra_body={"project_id": project["name"]})
    assert response.usage.completion_tokens <= 3
    assert response.choices[0].finish_reason == "length"


def test_request_params_override_project_params(agent):
    project = new_project(agent, params={"max_tokens": 3})
    response = requests.post(f"{agent.url}/v1/chat/completions", timeout=60,
                             headers={"X-SLP-Project": project["id"]},
                             json={"messages": QUESTION, "max_tokens": 12, "ignore_eos": True}).json()
    assert response["usage"]["completion_tokens"] == 12


def test_system_prompt_is_merged_and_raises_prompt_tokens(agent):
    plain = new_project(agent)
    prompted = new_project(agent, system_prompt="You are a geography teacher. " * 20)
    counts = []
    for project in (plain, prompted):
        response = requests.post(f"{agent.url}/v1/chat/completions", timeout=60,
                                 json={"messages": QUESTION, "max_tokens": 2, "project_id": project["id"]}).json()
        counts.append(response["usage"]["prompt_tokens"])
    assert counts[1] > counts[0] + 100


def test_usage_sums_match_the_responses(agent):
    project = new_project(agent)
    prompt = completion = 0
    for n in (2, 5):
        response = requests.post(f"{agent.url}/v1/chat/completions", timeout=60,
                                 json={"messages": QUESTION, "max_tokens": n, "project_id": project["name"]}).json()
        prompt += response["usage"]["prompt_tokens"]
        completion += response["usage"]["completion_tokens"]
    # a streamed request is accounted too: the agent asks the engine for usage on streams, and keeps that
    # usage event from this client, which did not ask for it (the same prompt; ignore_eos: exactly 4 tokens)
    with requests.post(f"{agent.url}/v1/chat/completions", stream=True, timeout=60,
                       json={"messages": QUESTION, "max_tokens": 4, "stream": True, "ignore_eos": True,
                             "project_id": project["name"]}) as resp:
        events = [json.loads(l[6:]) for l in resp.iter_lines() if l.startswith(b"data: {")]
    assert events and all(e["choices"] and "usage" not in e for e in events)
    prompt += response["usage"]["prompt_tokens"]
    completion += 4

    def settled():
        usage = usage_of(agent, project)
        return usage if usage["requests"] == 3 else None

    from conftest import wait_for

    usage = wait_for(settled, 10, "usage to be recorded")
    assert usage["prompt_tokens"] == prompt and usage["completion_tokens"] == completion


def test_sessions_are_stored_for_plain_and_streamed_chats(agent):
    project = new_project(agent)
    session = "s-" + uuid.uuid4().hex[:10]
    first = requests.post(f"{agent.url}/v1/chat/completions", timeout=60,
                          json={"messages": QUESTION, "max_tokens": 6, "project_id": project["id"],
                                "session_id": session}).json()
    reply = first["choices"][0]["message"]["content"]
    follow_up = [*QUESTION, {"role": "assistant", "content": reply}, {"role": "user", "content": "And Italy?"}]
    with requests.post(f"{agent.url}/v1/chat/completions", stream=True, timeout=60,
                       json={"messages": follow_up, "max_tokens": 6, "stream": True, "project_id": project["id"],
                             "session_id": session}) as resp:
        streamed = "".join(
            (c.get("delta") or {}).get("content") or ""
            for l in resp.iter_lines() if l.startswith(b"data: {")
            for c in json.loads(l[6:]).get("choices", []))
    from conftest import wait_for

    detail = wait_for(lambda: (d := requests.get(f"{agent.url}/v1/projects/{project['id']}/sessions/{session}",
                                                 timeout=10)).status_code == 200
                      and len(d.json()["exchanges"]) == 2 and d.json(), 10, "both exchanges stored")
    assert detail["messages"][-1] == {"role": "assistant", "content": streamed}
    assert detail["messages"][:-1] == follow_up
    sessions = requests.get(f"{agent.url}/v1/projects/{project['id']}/sessions", timeout=10).json()
    assert [s["id"] for s in sessions["data"]] == [session]


def test_unknown_project_is_a_404(agent):
    response = requests.post(f"{agent.url}/v1/chat/completions", timeout=10,
                             json={"messages": QUESTION, "project_id": "no-such-project"})
    assert response.status_code == 404 and response.json()["error"]["code"] == "project_not_found"


def test_slp_chat_streams_a_reply_and_a_resumed_chat_continues_the_session(agent):
    proc = agent.cli("chat", input="What is the capital of France?\n/exit\n", timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip(), "the reply is printed"
    match = re.search(r"slp chat --resume (\S+)", proc.stdout + proc.stderr)
    assert match
    session_id = match.group(1)
    again = agent.cli("chat", "--resume", session_id, input="And of Italy?\n/exit\n", timeout=120)
    assert again.returncode == 0, again.stderr
    resumed = re.search(rf"Resumed session {session_id} of project (\S+) \(2 messages\)\.", again.stderr)
    assert resumed, again.stderr
    detail = agent.get(f"/v1/projects/{resumed.group(1)}/sessions/{session_id}")
    messages = detail["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    assert messages[0]["content"] == "What is the capital of France?" and messages[2]["content"] == "And of Italy?"
    assert messages[1]["content"].strip() == proc.stdout.strip(), "the first reply, as printed, is the stored one"
    assert messages[3]["content"].strip() == again.stdout.strip(), "the resumed turn continued the same session"
    assert detail["exchange_count"] == 2


def test_activation_survives_an_agent_restart(fresh_standin_agent):
    agent = fresh_standin_agent()
    agent.start()
    agent.cli("project", "create", "writing", "--system", "You write poems.", check=True)
    agent.cli("project", "use", "writing", check=True)
    agent.stop()
    agent.start()
    assert re.search(r"Active project\s+writing \(id=", agent.cli("status", check=True).stdout)
    listed = agent.cli("project", "list", check=True).stdout
    assert re.search(r"\*\s*writing", listed)


def test_a_project_change_applies_to_the_very_next_request(agent):
    """The proxy caches projects; a PATCH (or activate) must be seen at once, never a stale copy."""
    project = new_project(agent, params={"max_tokens": 2})

    def prompt_tokens() -> int:
        return requests.post(f"{agent.url}/v1/chat/completions", timeout=60,
                             json={"messages": QUESTION, "project_id": project["name"]}).json()["usage"]["prompt_tokens"]

    before = prompt_tokens()
    patched = requests.patch(f"{agent.url}/v1/projects/{project['id']}", timeout=10,
                             json={"system_prompt": "Answer as a pirate would. " * 10})
    assert patched.status_code == 200
    assert prompt_tokens() > before + 40
