"""The agent's head start (slp/server/head_start.py): its default engine is spawned before the agent's own
imports and adopted by the supervisor; one that nobody adopts is killed. Real agent; the engine is the
stand-in (tests/standin_engine.py, named as such): when the engine is spawned, who adopts it, who kills it
and who reaps it are the agent's doing, whatever the engine binary is."""

from __future__ import annotations

import socket
import subprocess
import sys
from datetime import datetime

import psutil

from conftest import SLP, processes_under, wait_for


def engine_starts(agent) -> list[str]:
    return [line for line in (agent.home / "logs" / "engine.log").read_text().splitlines()
            if line.startswith("--- slp: starting engine")]


def test_the_default_engine_is_the_head_start_adopted_once(fresh_standin_agent):
    agent = fresh_standin_agent()
    agent.start()
    status = agent.status()
    engine = psutil.Process(status["engine"]["pid"])
    assert engine.ppid() == agent.state()["agent_pid"], "the agent itself started the engine (pdeathsig, reaping)"
    assert len(engine_starts(agent)) == 1, "one engine was started, not a head start plus the supervisor's own"
    listening = next(line for line in (agent.home / "logs" / "agent.log").read_text().splitlines()
                     if "listening on" in line)
    listening_at = datetime.strptime(listening[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
    assert engine.create_time() < listening_at, "the engine was spawned before the agent had even bound its port"
    assert status["engine"]["state"] == "ready" and status["engine"]["restarts"] == 0
    # The adopted engine is supervised like any other: killed, it is noticed and replaced.
    engine.kill()
    wait_for(lambda: agent.status()["engine"]["crashes"] == 1 and agent.status()["engine"]["state"] == "ready",
             30, "the adopted engine's crash to be noticed and the engine replaced")
    assert "SIGKILL" in agent.status()["engine"]["last_exit"]["detail"]
    assert len(engine_starts(agent)) == 2


def test_a_head_start_nobody_adopts_is_killed_while_the_agent_serves(fresh_standin_agent):
    """The default model does not fit the memory budget: the load refuses it after the head start had
    spawned its engine; that engine goes, the agent stays (and says why)."""
    agent = fresh_standin_agent(memory_budget="10MB")
    agent.start()
    assert len(engine_starts(agent)) == 1, "the head start did spawn an engine"
    agent_pid = agent.state()["agent_pid"]
    engines = lambda: [p for p in processes_under(agent.home) if p.pid != agent_pid]  # noqa: E731
    wait_for(lambda: not engines(), 10, "the unadopted engine to be killed")
    assert psutil.pid_exists(agent.state()["agent_pid"]) and agent.status()["engine"]["state"] == "unloaded"
    assert "did not load" in (agent.home / "logs" / "agent.log").read_text()


def test_no_head_start_when_the_agent_will_refuse(fresh_standin_agent):
    """Its port is taken: the agent refuses to start, and no engine was spawned for nothing."""
    agent = fresh_standin_agent()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", agent.port))
        taken.listen()
        proc = subprocess.run([sys.executable, "-m", "slp.server"], env=agent.env, capture_output=True, text=True,
                              timeout=120)
    assert proc.returncode == 1 and "already in use" in proc.stderr, proc.stderr
    log = agent.home / "logs" / "engine.log"
    assert not log.exists() or not engine_starts(agent)
    assert not processes_under(agent.home) and not (agent.home / "run" / "agent.json").exists()
