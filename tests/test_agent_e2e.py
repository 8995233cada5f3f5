"""The seed, word for word, against one real shared agent over the real engine and model."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import uuid

import openai
import pytest
from openai import OpenAI

from conftest import REPO, expected_gpu_row, wait_for

SEED_QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def client(agent) -> OpenAI:
    return OpenAI(base_url=f"{agent.url}/v1", api_key="not-needed")


def test_seed_python_example(client):
    response = client.chat.completions.create(model="slp-orchestra-mini", messages=SEED_QUESTION)
    assert response.id.startswith("chatcmpl-")
    assert response.object == "chat.completion"
    assert response.choices[0].message.role == "assistant"
    assert isinstance(response.choices[0].message.content, str) and response.choices[0].message.content.strip()
    assert response.choices[0].finish_reason in ("stop", "length")
    assert response.usage.prompt_tokens > 0 and response.usage.completion_tokens > 0


def test_seed_python_example_streaming(client):
    stream = client.chat.completions.create(model="slp-orchestra-mini", messages=SEED_QUESTION, stream=True,
                                            max_tokens=16)
    chunks = list(stream)
    assert len(chunks) > 3, "a stream must arrive as several events"
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    assert any(c.choices and c.choices[0].finish_reason for c in chunks)


def test_seed_multi_turn_conversation(client):
    response = client.chat.completions.create(
        model="slp-orchestra-mini",
        messages=[
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "My name is Alice."},
            {"role": "assistant", "content": "Hello Alice! How can I help you today?"},
            {"role": "user", "content": "What's my name?"},
        ],
        max_tokens=24,
    )
    assert response.choices[0].message.content.strip()
    # The whole history reached the model: the prompt is longer than the last question alone.
    assert response.usage.prompt_tokens > 30


def test_model_served_under_its_own_name_too(client):
    response = client.chat.completions.create(model="SmolLM2-135M-Instruct-Q4_1", messages=SEED_QUESTION,
                                              max_tokens=4)
    assert response.choices[0].message.content is not None


def test_seed_curl_example(agent):
    assert shutil.which("curl"), "curl is needed for the seed's cURL example"
    proc = subprocess.run(
        ["curl", "-sS", f"{agent.url}/v1/chat/completions", "-H", "Content-Type: application/json", "-d",
         '{\n"model": "slp-orchestra-mini",\n"messages": [\n{"role": "user", "content": "What is the capital of France?"}\n]\n}'],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    body = json.loads(proc.stdout)
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["choices"][0]["message"]["content"]


def test_seed_javascript_example(agent):
    node = shutil.which("node")
    assert node, "node is needed for the seed's JavaScript example (make test installs it)"
    assert (REPO / "tests" / "js" / "node_modules" / "openai").is_dir(), "run `npm ci --prefix tests/js` (make test does)"
    proc = subprocess.run([node, str(REPO / "tests" / "js" / "seed.mjs")], capture_output=True, text=True,
                          timeout=120, env={"SLP_BASE_URL": f"{agent.url}/v1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()


def test_unknown_model_is_a_404_in_openai_shape(client):
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-nonexistent", messages=SEED_QUESTION)
    error = info.value.body
    assert error["code"] == "model_not_found" and error["type"] == "invalid_request_error"
    assert "gpt-nonexistent" in error["message"]


def test_models_list_has_the_alias_and_the_file_name(client):
    ids = {m.id for m in client.models.list()}
    assert {"slp-orchestra-mini", "SmolLM2-135M-Instruct-Q4_1"} <= ids


def test_completions_route(client):
    response = client.completions.create(model="slp-orchestra-mini", prompt="The capital of France is",
                                         max_tokens=4)
    assert response.choices[0].text is not None and response.usage.completion_tokens <= 4


def test_slp_status_table_has_the_seed_rows(agent, engine_binary):
    proc = agent.cli("status", check=True)
    rows = {}
    for line in proc.stdout.splitlines()[2:]:
        key, _, value = line.partition("  ")
        rows[key.strip()] = value.strip()
    assert list(rows) == ["Server", "PID", "Quantization", "Context window", "Flash attention", "Model size",
                          "Memory usage", "GPU", "Active project"]
    state = agent.state()
    assert rows["Server"] == agent.url == state["url"]
    assert rows["PID"] == str(state["agent_pid"])
    assert rows["Quantization"] == "Q4_1"
    assert rows["Context window"] == "4096"
    assert rows["Flash attention"] == "False"
    assert rows["Model size"] == "98.4 MB"
    assert re.fullmatch(r"\d+(\.\d)?%", rows["Memory usage"])
    assert rows["GPU"] == expected_gpu_row(engine_binary)
    match = re.fullmatch(r"general_chat \(id=([0-9a-f-]{36})\)", rows["Active project"])
    assert match and uuid.UUID(match.group(1)).version == 4


def test_slp_status_json_and_agent_status(agent, engine_binary):
    info = json.loads(agent.cli("status", "--json", check=True).stdout)
    gpu_bytes = (info["memory_usage"]["gpu_bytes"], info["engine"]["memory"]["gpu_bytes"])
    if expected_gpu_row(engine_binary) == "None (CPU only)":
        assert gpu_bytes == (None, None)
    else:
        assert gpu_bytes[0] == gpu_bytes[1] > 0
    assert info["engine"]["state"] == "ready" and info["engine"]["pid"] > 0
    assert info["model"]["context_length"] == 8192 and info["context_window"] == 4096
    assert info["memory_usage"]["rss_bytes"] > 10_000_000
    out = agent.cli("agent", "status", check=True).stdout
    assert agent.url in out and "ready" in out


def test_agent_start_when_running_says_so(agent):
    proc = agent.cli("agent", "start")
    assert proc.returncode == 0
    assert "already running" in proc.stdout and agent.url in proc.stdout


def test_health(agent):
    assert agent.get("/health")["status"] == "ok"


def test_client_disconnect_mid_stream_stops_generation(agent):
    """Closing the client's connection cancels the engine's task long before max_tokens."""
    log = agent.home / "logs" / "engine.log"
    before = log.read_text()
    body = json.dumps({"model": "slp-orchestra-mini", "stream": True, "max_tokens": 3000, "ignore_eos": True,
                       "messages": [{"role": "user", "content": "Tell me a very long story."}]}).encode()
    sock = socket.create_connection(("127.0.0.1", agent.port))
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    received = b""
    while received.count(b"data: ") < 5:
        received += sock.recv(65536)
    sock.close()

    def cancelled():
        new = log.read_text()[len(before):]
        released = re.findall(r"release: .*stop processing: n_tokens = (\d+)", new)
        return "cancel task" in new and released and int(released[-1])

    n_tokens = wait_for(cancelled, 20, "the engine to cancel the task after the client left")
    assert n_tokens < 1000, f"the engine generated {n_tokens} tokens after the client left"
