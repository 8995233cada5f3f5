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

from conftest import processes_under, wait_for


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


def serving_argv(agent) -> list[str]:
    """The serving engine's argv as slp started it (the engine log's start line for its port)."""
    import re

    port = str(agent.status()["engine"]["port"])
    for line in reversed(engine_starts(agent)):
        argv = re.match(r"--- slp: starting engine at [\d-]+ [\d:]+: (.*)", line).group(1).split(" ")
        if argv[argv.index("--port") + 1] == port:
            return argv
    raise AssertionError(f"no start line for port {port}")


def without_port(argv: list[str]) -> list[str]:
    argv = list(argv)
    argv[argv.index("--port") + 1] = "?"
    return argv


PLANNED = """
import json, sys
from slp.server.head_plan import spawn_planned
planned = spawn_planned()
print(json.dumps({"spawned": planned is not None, "pydantic": "pydantic" in sys.modules,
                  "aiohttp": "aiohttp" in sys.modules, "argv": planned.command.argv if planned else None}))
if planned:
    planned.kill()
"""


def planned(agent, **env: str) -> dict:
    import json

    proc = subprocess.run([sys.executable, "-c", PLANNED], env={**agent.env, **env}, capture_output=True, text=True,
                          timeout=60, check=True)
    return json.loads(proc.stdout)


def test_the_next_start_spawns_the_last_engine_from_its_plan_before_any_other_import(fresh_standin_agent):
    agent = fresh_standin_agent()
    agent.start()
    first = serving_argv(agent)
    agent.stop()
    plan = planned(agent)
    assert plan["spawned"] and not plan["pydantic"] and not plan["aiohttp"], plan
    assert without_port(plan["argv"]) == without_port(first)
    before = len(engine_starts(agent))
    agent.start()
    assert without_port(serving_argv(agent)) == without_port(first)
    assert len(engine_starts(agent)) == before + 1, "the planned engine was adopted, none other spawned"
    # A setting the plan was made from changed: no planned engine; the agent starts the new command.
    agent.stop()
    assert not planned(agent, SLP_CTX_SIZE="2048")["spawned"]
    agent.env["SLP_CTX_SIZE"] = "2048"
    agent.start()
    argv = serving_argv(agent)
    assert argv[argv.index("--ctx-size") + 1] == "2048"


def test_a_planned_engine_that_is_not_the_one_wanted_is_killed_and_the_right_one_served(fresh_standin_agent):
    """What the fingerprint cannot see (here: the plan itself names another alias) is caught when the head
    start compares the planned command with the one it works out: the planned engine goes."""
    import json

    agent = fresh_standin_agent()
    agent.start()
    right = serving_argv(agent)
    agent.stop()
    plan_file = agent.home / "run" / "head-plan.json"
    plan = json.loads(plan_file.read_text())
    plan["argv"][plan["argv"].index("--alias") + 1] = "not-the-one"
    plan_file.write_text(json.dumps(plan))
    agent.start()
    assert without_port(serving_argv(agent)) == without_port(right)
    starts = engine_starts(agent)
    assert len(starts) == 3 and "not-the-one" in starts[1] and "not-the-one" not in starts[2]
    agent_pid = agent.state()["agent_pid"]
    engines = [p for p in processes_under(agent.home) if p.pid != agent_pid]
    assert [p.pid for p in engines] == [agent.status()["engine"]["pid"]], "the planned engine is gone"


def test_a_model_that_is_not_installed_and_cannot_be_fetched_is_one_line_and_leaves_nothing(fresh_standin_agent,
                                                                                           tmp_path):
    """`slp agent start` starts the agent at once with --no-fetch; an agent whose model is missing ends with
    status 3, and the CLI tries to fetch it itself (with a progress bar) before it says why it cannot."""
    empty = tmp_path / "no-models"
    empty.mkdir()
    agent = fresh_standin_agent(models_dir=str(empty), model="no-such-model")
    direct = subprocess.run([sys.executable, "-m", "slp.server", "--no-fetch"], env=agent.env, capture_output=True,
                            text=True, timeout=120)
    assert direct.returncode == 3 and "no-such-model" in direct.stderr and "not installed" in direct.stderr
    proc = agent.cli("agent", "start", timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "no-such-model" in proc.stderr, proc.stderr
    assert not processes_under(agent.home) and not (agent.home / "run" / "agent.json").exists()
