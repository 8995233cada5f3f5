"""No one let in: API keys, DNS-rebinding protection, CORS, a private engine, user-only files.

The key, Host and CORS checks are the agent's, made before any request reaches an engine: they run against
an agent of this module's own over the stand-in engine (tests/standin_engine.py, named as such). That the
engine is private (loopback only, its own key, the key not in `ps`) is about llama-server itself, and is
checked on the shared agent over the real engine."""

from __future__ import annotations

import os
import stat

import psutil
import pytest
import requests

from conftest import processes_under

CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
KEY = "s3cret-key-for-tests"


@pytest.fixture(scope="module")
def keyed_agent(tmp_path_factory, default_model):
    """An agent with a key, a CORS origin and an extra Host name, over the stand-in engine."""
    from conftest import kill_all_under, make_standin_agent

    agent = make_standin_agent(tmp_path_factory.mktemp("keyed"), api_key=KEY, cors_origins="http://app.example",
                               allowed_hosts="slp.internal")
    agent.start()
    yield agent
    agent.stop()
    kill_all_under(agent.home)


def test_non_loopback_bind_without_key_is_refused(fresh_standin_agent):
    agent = fresh_standin_agent(host="0.0.0.0")
    proc = agent.cli("agent", "start", timeout=60)
    assert proc.returncode == 1
    assert "without an API key" in proc.stderr and "Traceback" not in proc.stderr
    assert processes_under(agent.home) == []


def test_api_key_is_enforced_on_every_route_but_health(keyed_agent):
    url = keyed_agent.url
    for method, path in [("GET", "/v1/status"), ("GET", "/v1/models"), ("GET", "/v1/projects"),
                         ("POST", "/v1/chat/completions"), ("GET", "/v1/projects/general_chat/usage")]:
        response = requests.request(method, url + path, json=CHAT, timeout=30)
        assert response.status_code == 401, path
        assert response.json()["error"]["code"] == "invalid_api_key"
        wrong = requests.request(method, url + path, json=CHAT, timeout=30, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401, path
    assert requests.get(url + "/health", timeout=10).status_code == 200
    # The docs page and the spec stay readable (a browser cannot send the key when it opens /docs);
    # they hold no data, and every operation they try needs the key (Swagger's Authorize button).
    assert requests.get(url + "/openapi.json", timeout=10).status_code == 200
    ok = requests.post(url + "/v1/chat/completions", json=CHAT, timeout=60, headers={"Authorization": f"Bearer {KEY}"})
    assert ok.status_code == 200


def test_cli_sends_the_key(keyed_agent):
    proc = keyed_agent.cli("status")
    assert proc.returncode == 0, proc.stderr
    assert "Active project" in proc.stdout


def test_openai_sdk_with_the_key(keyed_agent):
    from openai import OpenAI

    client = OpenAI(base_url=f"{keyed_agent.url}/v1", api_key=KEY)
    assert client.chat.completions.create(model="slp-orchestra-mini", messages=CHAT["messages"], max_tokens=1).choices


@pytest.mark.parametrize("host, allowed", [
    ("evil.example", False), ("evil.example:38540", False), ("127.0.0.1.nip.io", False), ("", False),
    ("localhost", True), ("127.0.0.1", True), ("[::1]", True), ("127.0.0.2", True),
])
def test_dns_rebinding_host_check(agent, host, allowed):
    response = requests.get(f"{agent.url}/v1/models", headers={"Host": host}, timeout=10)
    if allowed:
        assert response.status_code == 200
    else:
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "host_not_allowed"


def test_configured_host_is_allowed(keyed_agent):
    response = requests.get(f"{keyed_agent.url}/v1/models", timeout=10,
                            headers={"Host": "slp.internal", "Authorization": f"Bearer {KEY}"})
    assert response.status_code == 200


def test_no_cors_by_default(agent):
    preflight = requests.options(f"{agent.url}/v1/chat/completions", timeout=10, headers={
        "Origin": "http://evil.example", "Access-Control-Request-Method": "POST"})
    assert preflight.status_code == 403
    plain = requests.get(f"{agent.url}/v1/models", headers={"Origin": "http://evil.example"}, timeout=10)
    assert "Access-Control-Allow-Origin" not in plain.headers


def test_cors_for_a_configured_origin(keyed_agent):
    preflight = requests.options(f"{keyed_agent.url}/v1/chat/completions", timeout=10, headers={
        "Origin": "http://app.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert preflight.status_code == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == "http://app.example"
    assert "authorization" in preflight.headers["Access-Control-Allow-Headers"]
    real = requests.get(f"{keyed_agent.url}/v1/models", timeout=10,
                        headers={"Origin": "http://app.example", "Authorization": f"Bearer {KEY}"})
    assert real.headers["Access-Control-Allow-Origin"] == "http://app.example"
    other = requests.options(f"{keyed_agent.url}/v1/models", timeout=10, headers={
        "Origin": "http://other.example", "Access-Control-Request-Method": "GET"})
    assert other.status_code == 403


def test_engine_is_private(agent):
    engine = agent.status()["engine"]
    listening = [c for c in psutil.Process(engine["pid"]).net_connections() if c.status == psutil.CONN_LISTEN]
    assert listening and all(c.laddr.ip == "127.0.0.1" for c in listening)
    base = f"http://127.0.0.1:{engine['port']}"
    assert requests.post(f"{base}/v1/chat/completions", json=CHAT, timeout=10).status_code == 401
    assert requests.get(f"{base}/v1/models", timeout=10).status_code == 401
    cmdline = " ".join(psutil.Process(engine["pid"]).cmdline())
    assert "api-key" not in cmdline, "the engine's key must not be visible in ps"


def test_files_are_user_only(agent):
    home = agent.home
    for path in [home / "run" / "agent.json", home / "data" / "slp.db", home / "logs" / "agent.log",
                 home / "logs" / "engine.log"]:
        assert path.exists(), path
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, f"{path} is {oct(path.stat().st_mode)}"
    for folder in ["run", "data", "logs"]:
        assert stat.S_IMODE((home / folder).stat().st_mode) & 0o077 == 0, folder
    assert os.access(home / "run" / "agent.json", os.R_OK)
