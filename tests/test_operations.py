"""Operations: Prometheus metrics, the request log, config reload, logs.

Metrics, the request log and the logs are read from the shared agent over the real engine (its own metrics
and log lines are part of the claim). Reloads, restart counts, the engine's command line and the agent's
own imports are the agent's doing alone: each such test has its own agent over the stand-in engine
(tests/standin_engine.py, named as such: `fresh_standin_agent`)."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import psutil
import requests
from prometheus_client.parser import text_string_to_metric_families

from conftest import wait_for

CHAT = {"model": "slp-orchestra-mini", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}


def samples(agent) -> dict:
    text = requests.get(f"{agent.url}/metrics", timeout=10).text
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


def value(found: dict, name: str, **labels) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_requests_tokens_and_ttft(agent):
    before = samples(agent)
    response = requests.post(f"{agent.url}/v1/chat/completions", json=CHAT, timeout=60).json()
    with requests.post(f"{agent.url}/v1/chat/completions", json={**CHAT, "stream": True}, stream=True,
                       timeout=60) as resp:
        list(resp.iter_lines())
    after = samples(agent)
    route = "/v1/chat/completions"
    assert value(after, "slp_requests_total", route=route, status="200", project="general_chat") - \
        value(before, "slp_requests_total", route=route, status="200", project="general_chat") == 2
    assert value(after, "slp_tokens_total", direction="out", project="general_chat") - \
        value(before, "slp_tokens_total", direction="out", project="general_chat") >= response["usage"]["completion_tokens"]
    assert value(after, "slp_time_to_first_token_seconds_count", route=route) - \
        value(before, "slp_time_to_first_token_seconds_count", route=route) == 1
    assert value(after, "slp_engine_state", model="slp-orchestra-mini", state="ready") == 1
    assert value(after, "slp_engine_rss_bytes", model="slp-orchestra-mini") > 10_000_000
    assert any(name.startswith("llamacpp:") for name, _ in after), "the engine's own metrics are re-exported"


def test_metrics_count_refusals_by_status(agent):
    before = samples(agent)
    requests.post(f"{agent.url}/v1/chat/completions", json={**CHAT, "model": "nope"}, timeout=10)
    after = samples(agent)
    key = dict(route="/v1/chat/completions", status="404", project="general_chat")
    assert value(after, "slp_requests_total", **key) - value(before, "slp_requests_total", **key) == 1


def test_request_log_has_one_json_line_per_request(agent):
    marker = 7
    started = time.time()  # the line is stamped when the request ends; an earlier test's line is older
    requests.post(f"{agent.url}/v1/chat/completions", json={**CHAT, "max_tokens": marker}, timeout=60)
    log = agent.home / "logs" / "requests.jsonl"

    def line():
        try:
            lines = log.read_text().splitlines()
        except FileNotFoundError:  # not flushed yet
            return None
        for raw in reversed(lines):
            try:
                entry = json.loads(raw)
            except ValueError:  # a line being written
                continue
            if entry["time"] >= started and entry["route"] == "/v1/chat/completions" and entry["status"] == 200:
                return entry
        return None

    entry = wait_for(line, 5, "the request log line")
    assert entry["project"] == "general_chat" and entry["model"] == "slp-orchestra-mini"
    assert 0 < entry["completion_tokens"] <= marker and entry["prompt_tokens"] > 0
    assert entry["latency_ms"] > 0 and entry["client_disconnected"] is False
    assert oct(log.stat().st_mode & 0o777) == "0o600"


def nonblank_lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.strip()]


def test_agent_logs_command(agent):
    """`slp agent logs` prints the agent's log as it is, its last N lines; `--engine` the engine's."""
    agent_log = agent.home / "logs" / "agent.log"
    before = nonblank_lines(agent_log)
    out = agent.cli("agent", "logs", "-n", "3", check=True).stdout.splitlines()  # a started agent logs more than 3
    assert len(out) == 3 and out in (before[-3:], nonblank_lines(agent_log)[-3:]), out
    engine = agent.status()["engine"]
    everything = agent.cli("agent", "logs", "-n", "100000", check=True).stdout
    # The supervisor's line for the engine now serving, in the agent's log format.
    ready = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO slp\.engine: slp-orchestra-mini ready: serving "
                       rf"\S+\.gguf on 127\.0\.0\.1:{engine['port']} \(pid {engine['pid']}\)$", re.M)
    assert ready.search(everything), everything[-2000:]

    engine_log = agent.home / "logs" / "engine.log"
    shown = agent.cli("agent", "logs", "--engine", "-n", "5", check=True).stdout.splitlines()
    assert len(shown) == 5 and shown == nonblank_lines(engine_log)[-5:]
    starts = [line for line in nonblank_lines(engine_log) if line.startswith("--- slp: starting engine at ")]
    assert starts, "slp marks each engine start in the engine's log"
    # The serving engine's start line (other tests on this shared agent load and unload other engines).
    mine = [argv for argv in (line.split(": ", 1)[1].split() for line in starts)
            if argv[argv.index("--port") + 1] == str(engine["port"])]
    assert mine, starts
    argv = mine[-1]
    assert argv[argv.index("--alias") + 1] == "slp-orchestra-mini"
    assert argv[argv.index("--model") + 1] == engine["model_path"]


def test_config_reload_restarts_the_engine_only_when_needed(fresh_standin_agent):
    agent = fresh_standin_agent()
    agent.start()
    config = agent.home / "config" / "config.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    pid = agent.engine_pid()

    config.write_text("health_interval = 7.5\n")
    out = agent.cli("agent", "reload", check=True).stdout
    assert "health_interval" in out
    assert agent.engine_pid() == pid, "an agent-only setting does not restart the engine"

    config.write_text("health_interval = 7.5\nctx_size = 2048\n")
    agent.cli("agent", "reload", check=True)
    wait_for(lambda: agent.status()["engine"]["state"] == "ready" and agent.engine_pid() != pid, 30,
             "the engine to restart with the new context size")
    status = agent.status()
    assert status["context_window"] == 2048
    assert "--ctx-size 2048" in (agent.home / "logs" / "engine.log").read_text()
    assert value(samples(agent), "slp_engine_restarts_total", model="slp-orchestra-mini", reason="config") == 1

    config.write_text('ctx_size = "lots"\n')
    proc = agent.cli("agent", "reload")
    assert proc.returncode == 1 and "ctx_size" in proc.stderr and "Traceback" not in proc.stderr
    assert agent.status()["context_window"] == 2048, "a bad config keeps the old one running"
    assert requests.post(f"{agent.url}/v1/chat/completions", json=CHAT, timeout=60).status_code == 200


def test_sighup_reloads_too(fresh_standin_agent):
    agent = fresh_standin_agent()
    agent.start()
    before = agent.status()["config"]["loaded_at"]
    os.kill(agent.state()["agent_pid"], signal.SIGHUP)
    wait_for(lambda: agent.status()["config"]["loaded_at"] != before, 10, "the reload")
    assert agent.status()["config"]["error"] is None


def test_crash_restarts_are_counted_by_reason(fresh_standin_agent):
    agent = fresh_standin_agent()
    agent.start()
    os.kill(agent.engine_pid(), signal.SIGKILL)
    wait_for(lambda: value(samples(agent), "slp_engine_restarts_total", model="slp-orchestra-mini", reason="crash") == 1, 20, "the crash metric")


def test_every_setting_the_engine_command_reads_restarts_the_engine_on_reload():
    """ENGINE_SETTINGS (what a reload restarts the engine for) is exactly what engine_command reads."""
    from slp.engine.command import ENGINE_SETTINGS, engine_command
    from slp.settings import Settings

    changed = {"ctx_size": 8192, "flash_attn": True, "gpu_layers": 3, "parallel": 2, "threads": 1,
               "max_tokens": 7, "embeddings": True, "poll": 50, "cache_ram": 0, "prompt_cache": False}
    base = engine_command(Settings(), Path("llama-server"), Path("m.gguf"), 1, "k", "a").argv
    readers = {name for name, value in changed.items()
               if engine_command(Settings(**{name: value}), Path("llama-server"), Path("m.gguf"), 1, "k",
                                 "a").argv != base}
    assert readers == set(changed) == set(ENGINE_SETTINGS)


def test_engine_threads_do_not_spin_by_default_and_poll_is_a_setting(fresh_standin_agent):
    """--poll 0 by default: idle engine threads sleep instead of taking the cores the agent needs."""
    from slp.engine.command import engine_command
    from slp.settings import Settings

    argv = engine_command(Settings(), Path("llama-server"), Path("m.gguf"), 1, "k", "a").argv
    assert argv[argv.index("--poll") + 1] == "0"
    argv = engine_command(Settings(poll=50), Path("llama-server"), Path("m.gguf"), 1, "k", "a").argv
    assert argv[argv.index("--poll") + 1] == "50"
    agent = fresh_standin_agent(poll="25")  # the engine's command line, as the agent spawned it
    agent.start()
    engine = psutil.Process(agent.engine_pid())
    cmdline = engine.cmdline()
    assert cmdline[cmdline.index("--poll") + 1] == "25"


def test_agent_reads_a_new_model_s_metadata_without_loading_gguf(fresh_standin_agent, default_model, tmp_path):
    """A model the agent has never seen: status still reports its GGUF facts, parsed in a child process,
    and the agent itself never maps numpy (gguf's dependency) into memory."""
    models = tmp_path / "models"
    models.mkdir()
    try:
        os.link(default_model, models / default_model.name)
    except OSError:
        import shutil

        shutil.copy2(default_model, models / default_model.name)
    agent = fresh_standin_agent(models_dir=str(models))
    agent.start()
    info = agent.status()
    assert info["quantization"] == "Q4_1" and info["model"]["context_length"] == 8192
    assert (models / f".{default_model.name}.meta.json").is_file()
    maps = Path(f"/proc/{agent.state()['agent_pid']}/maps").read_text()
    assert "numpy" not in maps and "_pydantic_core" in maps  # the check would see a mapped extension
