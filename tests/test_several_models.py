"""Several models at once, with real engines: SmolLM2 (the default) and Gemma 3 270M (the catalog's second).

One agent over the real engines serves the tests that only add load (one stream across two models, a load
shared by concurrent first requests, ps/status/metrics with each engine's own memory and metrics). Tests
that shrink the budget, load and unload models, or kill engines or the agent get their own agent over the
stand-in engine (tests/standin_engine.py, named as such): what the budget admits is computed from the GGUF
files, and eviction, keep-alive, leases, crash isolation and reaping are the agent's doing, whatever runs
as the engine.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import psutil
import pytest
import requests

from conftest import kill_all_under, processes_under, wait_for

A = "slp-orchestra-mini"
B = "gemma-3-270m"


def chat(agent, model: str, **extra) -> requests.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4, **extra}
    return requests.post(f"{agent.url}/v1/chat/completions", json=body, timeout=120)


def engines(agent) -> dict[str, dict]:
    return {row["model"]: row for row in agent.get("/v1/engines")["data"]}


class Stream(threading.Thread):
    """A streamed chat read to its end in the background: its events, and when the first and last came."""

    def __init__(self, agent, model: str, tokens: int = 300, **extra):
        super().__init__(daemon=True)
        self.agent, self.model, self.tokens, self.extra = agent, model, tokens, extra
        self.events: list[bytes] = []
        self.first_at = self.done_at = None
        self.status = None

    def run(self) -> None:
        body = {"model": self.model, "stream": True, "max_tokens": self.tokens, "ignore_eos": True,
                "messages": [{"role": "user", "content": "Count to one thousand."}], **self.extra}
        with requests.post(f"{self.agent.url}/v1/chat/completions", json=body, stream=True, timeout=300) as resp:
            self.status = resp.status_code
            for line in resp.iter_lines():
                if line.startswith(b"data: "):
                    self.events.append(line[6:])
                    self.first_at = self.first_at or time.monotonic()
        self.done_at = time.monotonic()

    def completed(self) -> bool:
        """Ended with [DONE] after `tokens` content events and no error event."""
        if not self.events or self.events[-1] != b"[DONE]":
            return False
        parsed = [json.loads(e) for e in self.events[:-1]]
        if any("error" in e for e in parsed):
            return False
        content = [e for e in parsed if e.get("choices") and e["choices"][0]["delta"].get("content")]
        return len(content) >= self.tokens - 1


@pytest.fixture(scope="module")
def two_models(tmp_path_factory, default_model, second_model, engine_binary):
    from conftest import make_agent

    agent = make_agent(tmp_path_factory.mktemp("two-models"), max_tokens="64", keep_alive="10m")
    agent.start()
    yield agent
    agent.stop()
    kill_all_under(agent.home)


def test_a_stream_on_one_model_runs_on_untouched_while_another_is_loaded_and_used(two_models):
    agent = two_models
    requests.post(f"{agent.url}/v1/models/{B}/unload", timeout=60).raise_for_status()
    a_pid = engines(agent)[A]["pid"]
    stream = Stream(agent, A, tokens=200)
    stream.start()
    wait_for(lambda: len(stream.events) >= 5, 60, "the first events of the stream on A")
    reply = chat(agent, B)
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]["content"] is not None
    stream.join(120)
    assert stream.status == 200 and stream.completed(), f"A's stream was cut: {stream.events[-3:]}"
    rows = engines(agent)
    assert set(rows) >= {A, B}, "both models are loaded at once"
    assert rows[A]["pid"] == a_pid, "A's engine was never restarted"
    assert rows[A]["pid"] != rows[B]["pid"]
    for row in rows.values():
        assert psutil.pid_exists(row["pid"]) and row["state"] == "ready"


def test_concurrent_first_requests_load_a_model_once(two_models):
    agent = two_models
    requests.post(f"{agent.url}/v1/models/{B}/unload", timeout=60).raise_for_status()
    assert B not in engines(agent)
    before = _metric(agent, "slp_engine_loads_total", model=B)
    replies: list[requests.Response] = []
    threads = [threading.Thread(target=lambda: replies.append(chat(agent, B))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert [r.status_code for r in replies] == [200] * 4, [r.text for r in replies]
    assert _metric(agent, "slp_engine_loads_total", model=B) == before + 1, "four first requests, one load"


def test_ps_status_and_metrics_show_every_engine(two_models):
    agent = two_models
    assert chat(agent, A).status_code == 200 and chat(agent, B).status_code == 200
    ps = agent.cli("ps", "--json", check=True)
    rows = {row["model"]: row for row in json.loads(ps.stdout)["data"]}
    assert set(rows) >= {A, B}
    for name, row in rows.items():
        assert row["pid"] and psutil.Process(row["pid"]).is_running()
        assert row["rss_bytes"] > 50_000_000, "each engine's own memory"
        assert row["slots"]["total"] == 4 and row["leases"] == 0 and row["threads"] >= 1
    assert rows[A]["pinned"] is True, "the model the agent started with stays resident"
    assert rows[B]["pinned"] is False and 0 < rows[B]["expires_in_s"] <= 600, "B follows keep_alive (10m)"
    table = agent.cli("ps", check=True).stdout
    for name, row in rows.items():
        assert name in table and str(row["pid"]) in table
    status = agent.status()
    assert {e["model"] for e in status["engines"]} >= {A, B}
    assert status["engine"]["model"] == A, "slp status describes the active project's model"
    text = requests.get(f"{agent.url}/metrics", timeout=30).text
    for name in (A, B):
        assert f'slp_engine_state{{model="{name}",state="ready"}} 1.0' in text
        assert f'slp_engine_rss_bytes{{model="{name}"}}' in text
        assert f'llamacpp:prompt_tokens_total{{model="{name}"}}' in text, "each engine's own metrics, labelled"
    log_lines = (agent.home / "logs" / "requests.jsonl")

    def served() -> set[str]:  # the writer flushes about once a second, so wait for both engines' lines
        text = log_lines.read_text() if log_lines.exists() else ""
        lines = [json.loads(line) for line in text.splitlines() if line]
        models = {line["engine"]["model"] for line in lines if line.get("engine")}
        return models if models >= {A, B} else set()

    assert wait_for(served, 10, "request-log lines naming both engines") >= {A, B}


def test_model_load_unload_commands_and_keep_alive_zero(fresh_standin_agent, second_model):
    agent = fresh_standin_agent()
    agent.start()
    assert chat(agent, B).status_code == 200
    agent.cli("model", "unload", B, check=True)
    assert B not in engines(agent)
    out = agent.cli("model", "load", B, check=True).stdout
    assert f"{B} loaded" in out and engines(agent)[B]["state"] == "ready"
    assert chat(agent, B, keep_alive=0).status_code == 200
    wait_for(lambda: B not in engines(agent), 30, "B unloaded after a keep_alive: 0 reply")
    assert A in engines(agent), "the other engine stays"
    bad = chat(agent, A, keep_alive="soon")
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "keep_alive"
    missing = agent.cli("model", "load", "no-such-model")
    assert missing.returncode != 0 and "Traceback" not in missing.stderr and "no-such-model" in missing.stderr


def test_eviction_under_a_small_budget_never_cuts_a_leased_stream(fresh_standin_agent, second_model):
    # Room for one of the two models at a time (SmolLM2 ~0.26 GB, Gemma ~0.4 GB with their KV caches, as
    # estimated from their GGUF files; the stand-in's own memory is below that, so the estimates count).
    agent = fresh_standin_agent(memory_budget="450MiB", max_tokens="64", cache_ram="0")
    agent.start()
    agent.cli("model", "unload", A, check=True)  # the boot model is pinned; start A unpinned instead
    assert chat(agent, A).status_code == 200
    stream = Stream(agent, A, tokens=150, standin={"token_delay": 0.04})  # 6 s: B asks while A is leased
    stream.start()
    wait_for(lambda: len(stream.events) >= 3, 60, "A streaming")
    reply = chat(agent, B)
    assert reply.status_code == 200, reply.text
    stream.join(120)
    assert stream.completed(), f"A's stream was cut to make room: {stream.events[-3:]}"
    assert reply.elapsed.total_seconds() > 0
    assert set(engines(agent)) == {B}, "A was evicted once its stream ended, then B loaded"
    assert _metric(agent, "slp_engine_unloads_total", model=A, reason="evicted") == 1


def test_a_model_larger_than_the_budget_gets_a_clear_error_at_once(fresh_standin_agent, second_model):
    agent = fresh_standin_agent(memory_budget="330MiB", cache_ram="0")
    agent.start()
    started = time.monotonic()
    reply = chat(agent, B)
    assert time.monotonic() - started < 10, "refused at once, not after a wait"
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert error["code"] == "model_too_large" and error["param"] == "model"
    assert "MiB" in error["message"] and "330.0 MiB" in error["message"] and "SLP_MEMORY_BUDGET" in error["message"]
    assert chat(agent, A).status_code == 200, "the model that fits still serves"


def test_a_crash_of_one_engine_leaves_the_others_serving(fresh_standin_agent, second_model):
    agent = fresh_standin_agent()
    agent.start()
    assert chat(agent, B).status_code == 200
    rows = engines(agent)
    os.kill(rows[B]["pid"], signal.SIGKILL)
    assert chat(agent, A).status_code == 200, "A serves while B restarts"
    assert engines(agent)[A]["pid"] == rows[A]["pid"], "A was not touched"
    wait_for(lambda: engines(agent)[B]["state"] == "ready" and engines(agent)[B]["pid"] != rows[B]["pid"], 60,
             "B restarted")
    assert engines(agent)[B]["last_exit"]["signal"] == "SIGKILL"
    assert chat(agent, B).status_code == 200


@pytest.mark.parametrize("how", ["stop", "sigkill"])
def test_no_engine_is_left_behind(fresh_standin_agent, second_model, how):
    agent = fresh_standin_agent()
    agent.start()
    assert chat(agent, B).status_code == 200
    pids = [row["pid"] for row in engines(agent).values()]
    assert len(pids) == 2
    recorded = {e["pid"] for e in agent.state()["engines"]}
    assert recorded == set(pids), "the state file lists every engine"
    if how == "stop":
        agent.stop()
    else:
        os.kill(agent.state()["agent_pid"], signal.SIGKILL)
    wait_for(lambda: not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
                             for pid in pids), 30, "every engine gone")
    assert not processes_under(agent.home)


def _metric(agent, name: str, **labels: str) -> float:
    text = requests.get(f"{agent.url}/metrics", timeout=30).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total
