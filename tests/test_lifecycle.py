"""slp.lifecycle: cleaning up after a dead agent, and the readiness wait's outcomes, in seconds.

Real processes throughout: `sleep` in its own session stands in for an engine a dead agent left behind
(only its PID, create time and process group matter here), a Python child that has exited is the dead
agent, and the detached start runs the real `python -m slp.server`, refused by its security check.
"""

from __future__ import annotations

import subprocess
import sys

import psutil
import pytest

from conftest import wait_for

from slp.lifecycle import (
    AgentError,
    clean_up_after_dead_agent,
    start_detached,
    stop_agent_process,
    wait_for_detached,
    wait_until_ready,
)
from slp.runstate import read_state, write_state
from slp.settings import Settings


def dead_process() -> tuple[int, float]:
    """The PID and create time of a process that has exited (and been reaped)."""
    proc = psutil.Popen([sys.executable, "-c", "pass"])
    create_time = proc.create_time()
    proc.wait(30)
    return proc.pid, create_time


@pytest.fixture
def left_engine():
    """A stand-in for an engine left behind: `sleep`, leading its own process group as engines do."""
    proc = subprocess.Popen(["sleep", "120"], start_new_session=True)
    yield proc
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


def test_clean_up_after_dead_agent_kills_its_engines_and_removes_its_state(left_engine):
    paths = Settings().paths
    agent_pid, agent_created = dead_process()
    engine_created = psutil.Process(left_engine.pid).create_time()
    write_state(paths, {"agent_pid": agent_pid, "agent_create_time": agent_created, "url": None,
                        "engines": [{"model": "m", "pid": left_engine.pid, "create_time": engine_created}]})

    assert clean_up_after_dead_agent(paths) == [left_engine.pid]
    wait_for(lambda: left_engine.poll() is not None, 10, "the left engine to be killed")
    assert not paths.state_file.exists()


def test_clean_up_leaves_a_newer_agents_state_file(left_engine):
    """The state read before stopping an agent is cleaned up after it; a new agent's file, written in
    between, stays."""
    paths = Settings().paths
    old_pid, old_created = dead_process()
    old = {"agent_pid": old_pid, "agent_create_time": old_created, "engine_pid": left_engine.pid,
           "engine_create_time": psutil.Process(left_engine.pid).create_time()}
    newer = {"agent_pid": old_pid + 1, "agent_create_time": 1.0, "url": "http://127.0.0.1:1"}
    write_state(paths, newer)

    assert clean_up_after_dead_agent(paths, old) == [left_engine.pid]
    assert read_state(paths) == newer


def test_clean_up_spares_a_process_that_reused_the_engines_pid(left_engine):
    """A recorded PID whose create time differs is another program now: it is not killed."""
    paths = Settings().paths
    agent_pid, agent_created = dead_process()
    write_state(paths, {"agent_pid": agent_pid, "agent_create_time": agent_created,
                        "engine_pid": left_engine.pid, "engine_create_time": 1.0})

    assert clean_up_after_dead_agent(paths) == []
    assert left_engine.poll() is None and not paths.state_file.exists()


def test_stop_without_a_running_agent_cleans_up_and_says_so(left_engine):
    paths = Settings().paths
    agent_pid, agent_created = dead_process()
    write_state(paths, {"agent_pid": agent_pid, "agent_create_time": agent_created,
                        "engine_pid": left_engine.pid,
                        "engine_create_time": psutil.Process(left_engine.pid).create_time()})

    assert stop_agent_process(paths, stop_grace=1) is False
    wait_for(lambda: left_engine.poll() is not None, 10, "the left engine to be killed")
    assert not paths.state_file.exists()


def test_wait_until_ready_names_what_ended_it():
    paths = Settings().paths
    with pytest.raises(AgentError, match="^it stopped$"):
        wait_until_ready(paths, 30, lambda: "it stopped")
    with pytest.raises(AgentError, match=r"^the service did not become ready within 0s; see here$"):
        wait_until_ready(paths, 0, lambda: None, name="the service", hint="see here")


def test_wait_until_ready_asks_a_costly_ended_at_most_as_often_as_told():
    calls = []
    with pytest.raises(AgentError, match="did not become ready"):
        wait_until_ready(Settings().paths, 0.5, lambda: calls.append(1), ended_every=10, poll=0.05)
    assert len(calls) == 1


def test_detached_agent_that_exits_reports_its_error_line(monkeypatch):
    """The real agent process, refused at once: the wait ends when it exits, with the line from its log."""
    monkeypatch.setenv("SLP_HOST", "0.0.0.0")
    monkeypatch.delenv("SLP_API_KEY", raising=False)
    settings = Settings()
    proc = start_detached(settings.paths)
    try:
        with pytest.raises(AgentError) as caught:
            wait_for_detached(proc, settings.paths, 60)
        assert str(caught.value).startswith("the agent exited during start-up: ")
        assert "refusing to listen on 0.0.0.0 without an API key" in str(caught.value)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
