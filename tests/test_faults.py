"""Faults with real processes and signals: each test breaks its own agent, never the shared one.

Claims about the agent alone (restarts, the watchdog, reaping, state files, stopping, refusals at start)
run over the stand-in engine (tests/standin_engine.py, named as such: `fresh_standin_agent`), a real
process that can be killed, stopped and reaped like llama-server, in a fraction of its start time. What
depends on llama-server itself stays on it (`fresh_agent`): a stream cut by its death, and its exit on a
file that is not a model. (The missing binary names its own engine: none runs.)"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time

import psutil
import pytest
import requests

from conftest import kill_all_under, processes_under, wait_for

CHAT = {"model": "slp-orchestra-mini", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4}


def chat(agent, **extra):
    return requests.post(f"{agent.url}/v1/chat/completions", json={**CHAT, **extra}, timeout=60)


def engine_ready(agent):
    try:
        return agent.get("/health")["status"] == "ok"
    except OSError:
        return False


def test_engine_sigkill_is_restarted_and_status_says_why(fresh_standin_agent):
    agent = fresh_standin_agent()
    agent.start()
    old_pid = agent.engine_pid()
    os.kill(old_pid, signal.SIGKILL)
    wait_for(lambda: agent.status()["engine"]["crashes"] >= 1 and engine_ready(agent), 20, "engine restart")
    status = agent.status()
    assert status["engine"]["pid"] != old_pid
    assert status["engine"]["last_exit"]["signal"] == "SIGKILL"
    assert status["engine"]["last_exit"]["reason"] == "crash"
    assert chat(agent).status_code == 200
    assert agent.state()["engine_pid"] == status["engine"]["pid"], "the state file follows the new engine"


def test_engine_killed_mid_stream_ends_the_stream_with_an_error(fresh_agent):
    agent = fresh_agent()
    agent.start()
    pid = agent.engine_pid()
    events = []
    with requests.post(f"{agent.url}/v1/chat/completions", stream=True, timeout=30,
                       json={**CHAT, "stream": True, "max_tokens": 3000, "ignore_eos": True}) as resp:
        assert resp.status_code == 200
        started = None
        for line in resp.iter_lines():
            if not line.startswith(b"data: "):
                continue
            events.append(line[6:])
            if len(events) == 5:
                os.kill(pid, signal.SIGKILL)
                started = time.monotonic()
        ended = time.monotonic()
    assert started is not None and ended - started < 5, "the stream must end promptly, not hang"
    last = json.loads(events[-1])
    assert last["error"]["code"] == "engine_failed"
    assert b"[DONE]" not in events[-1]
    wait_for(lambda: engine_ready(agent), 20, "the engine to be back")
    assert chat(agent).status_code == 200


def test_hung_engine_is_detected_and_replaced(fresh_standin_agent):
    agent = fresh_standin_agent(health_interval="0.5", health_timeout="0.5")
    agent.start()
    pid = agent.engine_pid()
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_for(lambda: agent.status()["engine"]["crashes"] >= 1, 20, "the watchdog to notice the hang")
    finally:
        if psutil.pid_exists(pid):
            os.kill(pid, signal.SIGKILL)
    assert agent.status()["engine"]["last_exit"]["reason"] == "hang"
    # Killed with SIGKILL and reaped in the background (the supervisor does not wait for it): gone soon.
    wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, 10,
             "the hung engine to be gone")
    wait_for(lambda: engine_ready(agent), 20, "a new engine")
    assert chat(agent).status_code == 200


def test_crash_loop_ends_in_failed_with_the_reason(fresh_agent, tmp_path):
    """A model file that is not a GGUF: the engine exits at once, every time."""
    models = tmp_path / "models"
    models.mkdir()
    (models / "broken.gguf").write_bytes(b"GGUF" + b"\0" * 64)
    agent = fresh_agent(models_dir=str(models), model="broken", max_restarts="2", start_timeout="10")
    proc = agent.cli("agent", "start", timeout=120)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and proc.stderr.strip().count("\n") == 0
    assert "fail" in proc.stderr
    health = requests.get(f"{agent.url}/health", timeout=5)
    assert health.status_code == 503 and health.json()["engine"]["state"] == "failed"
    status = agent.status()
    assert status["engine"]["state"] == "failed" and "giving up" in status["engine"]["reason"]
    assert status["engine"]["log_tail"], "status shows the engine's last log lines"
    response = chat(agent, model="broken")
    assert response.status_code == 503 and response.json()["error"]["code"] == "engine_unavailable"


def test_missing_engine_binary_is_a_clear_failure(fresh_agent, tmp_path):
    agent = fresh_agent(engine_bin=str(tmp_path / "no-such-llama-server"), max_restarts="1")
    proc = agent.cli("agent", "start", timeout=60)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    status = agent.status()
    assert status["engine"]["state"] == "failed"
    assert "cannot run the engine" in status["engine"]["reason"]


def test_agent_sigkill_takes_the_engine_with_it_and_next_start_works(fresh_standin_agent):
    agent = fresh_standin_agent()
    agent.start()
    state = agent.state()
    engine = psutil.Process(agent.engine_pid())
    os.kill(state["agent_pid"], signal.SIGKILL)
    engine.wait(10)  # raises TimeoutExpired if the engine outlives its agent
    agent.start()
    assert agent.state()["agent_pid"] != state["agent_pid"]
    assert chat(agent).status_code == 200


def test_agent_stop_leaves_no_process_behind(fresh_standin_agent):
    agent = fresh_standin_agent()
    agent.start()
    assert len(processes_under(agent.home)) == 2  # the agent and its engine
    out = agent.cli("agent", "stop", check=True).stdout
    assert "stopped" in out
    assert processes_under(agent.home) == []
    assert not (agent.home / "run" / "agent.json").exists()
    again = agent.cli("agent", "stop", check=True).stdout
    assert "not running" in again


def test_port_in_use_is_one_clear_line(fresh_standin_agent):
    agent = fresh_standin_agent()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", agent.port))
        squatter.listen()
        proc = agent.cli("agent", "start", timeout=60)
    assert proc.returncode == 1
    assert f"port {agent.port}" in proc.stderr and "already in use" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert processes_under(agent.home) == []


@pytest.mark.parametrize("content", ["{not json", json.dumps({"agent_pid": 1, "agent_create_time": 1.0,
                                                               "url": "http://127.0.0.1:1"})])
def test_corrupt_or_stale_state_file_is_replaced(fresh_standin_agent, content):
    """Garbage, or a PID that is alive but is another process (pid 1, wrong create time)."""
    agent = fresh_standin_agent()
    (agent.home / "run").mkdir(parents=True)
    (agent.home / "run" / "agent.json").write_text(content)
    status = agent.cli("status")
    assert status.returncode == 1 and "not running" in status.stderr
    agent.start()
    assert agent.state()["agent_pid"] != 1
    assert chat(agent).status_code == 200


def test_invalid_config_file_is_one_clear_line(fresh_standin_agent):
    agent = fresh_standin_agent()
    (agent.home / "config").mkdir(parents=True)
    (agent.home / "config" / "config.toml").write_text('ctx_size = "huge"\n')
    proc = agent.cli("agent", "start", timeout=60)
    assert proc.returncode == 1
    assert "ctx_size" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0


def test_graceful_stop_lets_an_inflight_stream_finish(fresh_standin_agent):
    agent = fresh_standin_agent()
    agent.start()
    agent_pid = agent.state()["agent_pid"]
    lines: list[bytes] = []
    streaming = threading.Event()

    def consume():
        with requests.post(f"{agent.url}/v1/chat/completions", stream=True, timeout=60,
                           json={**CHAT, "stream": True, "max_tokens": 60, "ignore_eos": True,
                                 "standin": {"token_delay": 0.05}}) as resp:  # 3 s: still streaming at SIGTERM
            for line in resp.iter_lines():
                if line.startswith(b"data: "):
                    lines.append(line)
                    streaming.set()

    reader = threading.Thread(target=consume)
    reader.start()
    assert streaming.wait(30), "the stream started"
    os.kill(agent_pid, signal.SIGTERM)
    reader.join(60)
    assert lines and lines[-1] == b"data: [DONE]", "the in-flight stream completed"
    psutil.Process(agent_pid).wait(20) if psutil.pid_exists(agent_pid) else None
    assert processes_under(agent.home) == []
    kill_all_under(agent.home)
