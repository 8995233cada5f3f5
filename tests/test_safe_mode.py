"""Safe mode seen from outside: a real agent whose engine (the stand-in, tests/standin_engine.py, named as
such) dies by SIGSEGV while loading unless it is given `--no-repack`, as llama-server does on Xeons with
AMX (llama.cpp #20824). Everywhere a user looks must say the engine is degraded, and why: /v1/status,
`slp status`, `slp ps`, /metrics and the agent's log. The state machine itself is tested in
test_supervisor.py.
"""

from __future__ import annotations

import json
import re

import pytest
import requests
from jsonschema import Draft202012Validator

from conftest import kill_all_under, make_standin_agent

REASON = "crashed twice at load, killed by SIGSEGV"


@pytest.fixture(scope="module")
def crashing_agent(tmp_path_factory, default_model):
    """A real agent in front of the stand-in, set to crash at load without `--no-repack` (the engines
    inherit the agent's environment); otherwise as conftest's `standin_agent`."""
    agent = make_standin_agent(tmp_path_factory.mktemp("safe-mode-agent"), max_tokens="4", health_interval="0.2",
                               health_timeout="1")
    agent.env["STANDIN_CRASH_AT_LOAD"] = "1"
    agent.start()
    yield agent
    agent.stop()
    kill_all_under(agent.home)


def test_a_degraded_engine_says_so_everywhere_a_user_looks(crashing_agent):
    agent = crashing_agent
    status = agent.status()
    engine = status["engine"]
    assert engine["state"] == "ready" and engine["degraded"]["reason"] == REASON, engine
    assert engine["degraded"]["args"] == ["--no-repack", "--flash-attn", "off"]
    assert engine["last_exit"]["reason"] == "crash-at-load" and engine["last_exit"]["signal"] == "SIGSEGV"
    assert status["flash_attention"] is False, "the engine runs with flash attention off, whatever the setting"
    assert [row["degraded"] for row in status["engines"]] == [engine["degraded"]]
    with open(f"/proc/{engine['pid']}/cmdline", "rb") as f:
        assert f.read().split(b"\0")[-4:-1] == [b"--no-repack", b"--flash-attn", b"off"]

    spec = agent.get("/openapi.json")  # documented, and what the agent answers matches the document
    schemas = spec["components"]["schemas"]
    for name in ("EngineStatus", "EngineRow"):
        assert "safe mode" in schemas[name]["properties"]["degraded"]["description"], name
        assert "lingering" in schemas[name]["properties"], name
    errors = list(Draft202012Validator({"$ref": "#/components/schemas/Status",
                                        "components": spec["components"]}).iter_errors(status))
    assert not errors, errors[:3]

    table = agent.cli("status", check=True).stdout
    assert re.search(r"^Engine mode\s+safe mode \(--no-repack, flash attention off\): crashed twice at load, "
                     r"killed by SIGSEGV$", table, re.M), table
    assert re.search(r"^Flash attention\s+False$", table, re.M), table

    ps = agent.cli("ps", check=True).stdout
    assert re.search(rf"^{re.escape(engine['model'])}\s.*\s{engine['pid']}\s+ready \(safe mode\)\s", ps, re.M), ps
    assert f"safe mode (--no-repack --flash-attn off): {REASON}" in ps
    rows = json.loads(agent.cli("ps", "--json", check=True).stdout)["data"]
    assert [row["degraded"]["reason"] for row in rows] == [REASON]

    metrics = requests.get(f"{agent.url}/metrics", timeout=10).text
    assert f'slp_engine_degraded{{model="{engine["model"]}",reason="crash-at-load"}} 1.0' in metrics, \
        [line for line in metrics.splitlines() if "degraded" in line]
    assert f'slp_engine_restarts_total{{model="{engine["model"]}",reason="crash-at-load"}} 2.0' in metrics

    log = (agent.home / "logs" / "agent.log").read_text()
    assert re.search(rf"^\S+ \S+ WARNING slp\.engine: {re.escape(engine['model'])} degraded: serving in safe mode "
                     rf"\(--no-repack, flash attention off\): {REASON}$", log, re.M), log[-3000:]

    reply = requests.post(f"{agent.url}/v1/chat/completions", timeout=30,
                          json={"model": engine["model"], "messages": [{"role": "user", "content": "hi"}]})
    assert reply.status_code == 200, "a degraded engine serves"


def test_a_model_loaded_again_starts_in_safe_mode_without_crashing_again(crashing_agent):
    """The agent remembers which model needed safe mode: unloaded and loaded again (keep-alive expiry,
    eviction, `slp model unload`), its engine starts in safe mode at once instead of crashing twice more."""
    agent = crashing_agent
    model = agent.status()["engine"]["model"]
    old_pid = agent.status()["engine"]["pid"]
    agent.cli("model", "unload", model, check=True)
    agent.cli("model", "load", model, check=True, timeout=120)
    engine = agent.status()["engine"]
    assert engine["state"] == "ready" and engine["pid"] != old_pid, engine
    assert engine["degraded"]["reason"] == REASON and engine["crashes"] == 0, engine
    with open(f"/proc/{engine['pid']}/cmdline", "rb") as f:
        assert f.read().split(b"\0")[-4:-1] == [b"--no-repack", b"--flash-attn", b"off"]
    metrics = requests.get(f"{agent.url}/metrics", timeout=10).text
    assert f'slp_engine_restarts_total{{model="{model}",reason="crash-at-load"}} 2.0' in metrics, "no new crash"
