"""The agent's life seen from outside it: start it detached, wait until it serves, stop it, and clean up
after one that died. The CLI (`slp agent ...`), the agent itself (`slp.server.runner`) and the service
package (`slp.service`) all go through here, so each step is written once.

It sits below the CLI, the server and the service package (it imports none of them) and stays quick to
import: the CLI loads it for every `slp agent` command.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from typing import Callable, Optional

from slp.paths import Paths, ensure_private_dir
from slp.runstate import agent_health, clear_state, live_state, read_state, wait_exited


def port_free(host: str, port: int) -> bool:
    """Whether an agent could listen on host:port now (bound as the agent's own listener is: SO_REUSEADDR)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True

# psutil and slp.engine.process (asyncio, ctypes) are imported where they are used: `slp agent start`
# needs neither unless a dead agent left engines behind or the start fails.

SHUTDOWN_GRACE = 10.0  # seconds in-flight responses get to finish on stop
STOPPING_GRACE = 5.0  # seconds an engine's stop may first spend saving its projects' prompts (the prompt cache)


class AgentError(Exception):
    """The agent cannot start (or did not): one line that says why and what to do."""


def clean_up_after_dead_agent(paths: Paths, state: Optional[dict] = None) -> list[int]:
    """Kill the engines a dead agent's state file names and remove that file; returns the PIDs killed.

    `state` is what the caller already read (say, before it stopped that agent); by default the file is
    read now. The file goes only while it still names that agent, so a new agent's is never removed.
    Callers make sure the agent is dead: its engines are killed whatever it is doing.
    """
    if state is None:
        state = read_state(paths)
    killed = []
    if state:
        from slp.engine.process import kill_stale_engines

        killed = kill_stale_engines(state)
    clear_state(paths, agent_pid=state.get("agent_pid") if state else None)
    return killed


# `python -m slp.server --no-fetch` exits with this status, before it serves, when the model it would start
# with is not installed: the CLI fetches it (with a progress bar the detached agent cannot show) and starts
# the agent again.
MODEL_NOT_INSTALLED = 3


def start_detached(paths: Paths, fetch: bool = True) -> subprocess.Popen:
    """Start `python -m slp.server` in its own session, output appended to the agent log; returns at once
    (see `wait_until_ready`). With `fetch=False` an agent whose model is not installed exits with
    MODEL_NOT_INSTALLED instead of fetching it."""
    ensure_private_dir(paths.log_dir)
    fd = os.open(paths.agent_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}  # not a service's child
        return subprocess.Popen([sys.executable, "-m", "slp.server", *(() if fetch else ("--no-fetch",))],
                                stdin=subprocess.DEVNULL, stdout=fd, stderr=fd, start_new_session=True,
                                close_fds=True, env=env)
    finally:
        os.close(fd)


def exit_reason(paths: Paths) -> str:
    """Why a detached agent ended during start-up, from its log: the last error line, else the last line."""
    from slp.engine.process import tail_lines

    lines = tail_lines(paths.agent_log, 30)
    lines = [line for line in lines if "Error" in line or "error" in line] or lines[-3:]
    return lines[-1].removeprefix("Error: ") if lines else f"see {paths.agent_log}"


def wait_until_ready(paths: Paths, timeout: float, ended: Callable[[], Optional[str]], *,
                     name: str = "the agent", hint: str = "see `slp agent logs`",
                     engine_failed: str = "the engine failed to start", ended_every: float = 0.0,
                     poll: float = 0.02) -> dict:
    """Block until the agent has written its run state and its /health says the engine is ready; returns
    that state. At least one look is taken, however short `timeout`.

    `ended()` says, in one line, why the agent is no longer running (None while it runs); it is asked only
    while the agent is not healthy, and at most every `ended_every` seconds (asking a service manager
    costs a subprocess). `name`, `hint` and `engine_failed` word the errors.
    Raises AgentError when the agent ended, its engine failed for good, or `timeout` ran out. An agent
    whose state file gives a longer `start_timeout` (+ 30 s) gets that long.
    """
    started = time.monotonic()
    deadline = started + timeout
    asked = float("-inf")
    while True:
        state = live_state(paths)
        if state and isinstance(state.get("start_timeout"), (int, float)):
            deadline = max(deadline, started + state["start_timeout"] + 30)
            timeout = deadline - started
        if state and state.get("url"):
            code, body = agent_health(state["url"], timeout=2)
            if code == 200:
                return state
            engine = body.get("engine") if isinstance(body, dict) else None
            if isinstance(engine, dict) and engine.get("state") == "failed":
                raise AgentError(f"{engine_failed}: {engine.get('reason')}; see `slp agent logs --engine`")
        now = time.monotonic()
        if now - asked >= ended_every:
            asked = now
            why = ended()
            if why is not None:
                raise AgentError(why)
        if now >= deadline:
            raise AgentError(f"{name} did not become ready within {timeout:.0f}s; {hint}")
        time.sleep(poll)


def wait_for_detached(proc: subprocess.Popen, paths: Paths, timeout: float) -> dict:
    """`wait_until_ready` for an agent started here with `start_detached`: its exit ends the wait at once,
    with the error line from its log."""

    def ended() -> Optional[str]:
        if proc.poll() is None:
            return None
        return f"the agent exited during start-up: {exit_reason(paths)}"

    return wait_until_ready(paths, timeout, ended)


def stop_agent_process(paths: Paths, stop_grace: Optional[float] = None) -> bool:
    """Stop the agent the state file names (SIGTERM; SIGKILL once it has had time to drain requests and
    stop its engines, `SHUTDOWN_GRACE + STOPPING_GRACE + stop_grace`), then clean up whatever it left. Blocks until then.
    True if one was running; a stale state file is cleaned up either way. `stop_grace`: the engine's
    SIGTERM grace, else the one the agent wrote in its state file (the CLI then loads no settings)."""
    state = live_state(paths)
    if not state:
        clean_up_after_dead_agent(paths)
        return False
    if stop_grace is None:
        grace = state.get("stop_grace")
        stop_grace = float(grace) if isinstance(grace, (int, float)) else 5.0
    import psutil

    try:
        agent = psutil.Process(state["agent_pid"])
        agent.send_signal(signal.SIGTERM)
        wait_exited(agent, SHUTDOWN_GRACE + STOPPING_GRACE + stop_grace + 5)
    except psutil.TimeoutExpired:
        agent.kill()
    except psutil.NoSuchProcess:
        pass
    clean_up_after_dead_agent(paths, state)
    return True
