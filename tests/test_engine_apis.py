"""The engine's other APIs through the agent: Responses, Anthropic Messages, rerank, tokenizer, template."""

from __future__ import annotations

import json
import uuid

import anthropic
import requests
from openai import OpenAI

from conftest import wait_for

QUESTION = "What is the capital of France?"


def new_project(agent, **fields) -> dict:
    resp = requests.post(f"{agent.url}/v1/projects", json={"name": f"api-{uuid.uuid4().hex[:8]}", **fields}, timeout=10)
    assert resp.status_code == 201, resp.text
    return resp.json()


def test_responses_api_through_the_openai_sdk(agent):
    client = OpenAI(base_url=f"{agent.url}/v1", api_key="not-needed")
    response = client.responses.create(model="slp-orchestra-mini", input=QUESTION, max_output_tokens=8)
    assert response.output_text.strip()
    assert 0 < response.usage.output_tokens <= 8


def test_responses_api_streaming(agent):
    client = OpenAI(base_url=f"{agent.url}/v1", api_key="not-needed")
    events = list(client.responses.create(model="slp-orchestra-mini", input=QUESTION, max_output_tokens=8,
                                          stream=True))
    assert events[-1].type == "response.completed"
    assert any(e.type == "response.output_text.delta" for e in events)


def test_anthropic_messages_through_the_anthropic_sdk(agent):
    client = anthropic.Anthropic(base_url=agent.url, api_key="not-needed")
    message = client.messages.create(model="slp-orchestra-mini", max_tokens=8,
                                     messages=[{"role": "user", "content": QUESTION}])
    assert message.role == "assistant" and message.content[0].text.strip()
    assert 0 < message.usage.output_tokens <= 8 and message.usage.input_tokens > 0


def test_anthropic_streaming_and_project_accounting(agent):
    project = new_project(agent, system_prompt="You are terse.")
    client = anthropic.Anthropic(base_url=agent.url, api_key="not-needed",
                                 default_headers={"X-SLP-Project": project["name"]})
    with client.messages.stream(model="slp-orchestra-mini", max_tokens=8,
                                messages=[{"role": "user", "content": QUESTION}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text.strip()
    usage = wait_for(lambda: (u := requests.get(f"{agent.url}/v1/projects/{project['id']}/usage", timeout=10).json())
                     ["requests"] == 1 and u, 10, "the stream to be accounted")
    assert usage["completion_tokens"] == final.usage.output_tokens


def test_anthropic_count_tokens_includes_the_project_prompt(agent):
    client = anthropic.Anthropic(base_url=agent.url, api_key="not-needed")
    plain = client.messages.count_tokens(model="slp-orchestra-mini", messages=[{"role": "user", "content": QUESTION}])
    project = new_project(agent, system_prompt="You answer in French. " * 10)
    prompted = client.messages.count_tokens(model="slp-orchestra-mini",
                                            messages=[{"role": "user", "content": QUESTION}],
                                            extra_headers={"X-SLP-Project": project["id"]})
    assert prompted.input_tokens > plain.input_tokens + 20


def test_tokenize_detokenize_round_trip(agent):
    tokens = requests.post(f"{agent.url}/tokenize", json={"content": QUESTION}, timeout=30).json()["tokens"]
    assert tokens and all(isinstance(t, int) for t in tokens)
    text = requests.post(f"{agent.url}/detokenize", json={"tokens": tokens}, timeout=30).json()["content"]
    assert text.strip() == QUESTION


def test_apply_template_shows_the_project_prompt(agent):
    project = new_project(agent, system_prompt="PROJECT-PROMPT-MARKER")
    prompt = requests.post(f"{agent.url}/apply-template", timeout=30,
                           json={"messages": [{"role": "user", "content": QUESTION}], "project_id": project["id"]}
                           ).json()["prompt"]
    assert "PROJECT-PROMPT-MARKER" in prompt and QUESTION in prompt
    assert "<|im_start|>" in prompt


def test_rerank_without_a_reranking_model_is_a_clear_error(agent):
    resp = requests.post(f"{agent.url}/v1/rerank", timeout=30,
                         json={"query": QUESTION, "documents": ["Paris is in France.", "Bananas are yellow."]})
    assert 400 <= resp.status_code < 600 and resp.status_code != 500
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"].startswith("engine:")


def test_bad_input_to_the_new_routes(agent):
    for path, body in [("/v1/messages", {"messages": [{"role": "user", "content": "x"}]}),  # max_tokens missing
                       ("/v1/responses", {"max_output_tokens": 3}),  # input missing
                       ("/detokenize", {"tokens": [-1]}),
                       ("/tokenize", {"content": 5})]:
        resp = requests.post(f"{agent.url}{path}", json=body, timeout=10)
        assert resp.status_code == 400, (path, resp.text)
        assert json.loads(resp.text)["error"]["param"]


def test_a_long_responses_stream_ends_cleanly_and_is_counted(agent):
    """Responses' final event carries the whole output: past a few KB it must still be seen as the end
    (no error event appended) and its usage still counted."""
    project = agent.get("/v1/status")["active_project"]["id"]
    before = agent.get(f"/v1/projects/{project}/usage")["completion_tokens"]
    # Long words (SmolLM2's 18-19 character tokens, favoured by logit_bias) make a final event of several
    # KB from 300 tokens instead of 1,200.
    long_words = (28475, 27244, 22936, 48688, 42542, 42503, 42409, 35157, 33747, 30279, 28053, 27174)
    resp = requests.post(f"{agent.url}/v1/responses", timeout=300, stream=True, json={
        "model": "slp-orchestra-mini", "input": "Write a very long story about a lighthouse.",
        "max_output_tokens": 300, "ignore_eos": True, "stream": True,
        "logit_bias": {str(token): 30 for token in long_words}})
    body = resp.content
    assert resp.status_code == 200
    final = body.rstrip(b"\n").rsplit(b"\n\n", 1)[-1]
    assert final.startswith(b"event: response.completed") and len(final) > 4096
    assert b"engine_failed" not in body
    after = agent.get(f"/v1/projects/{project}/usage")["completion_tokens"]
    assert after - before == 300
