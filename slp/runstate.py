"""The agent's run state file: which agent runs where, and which engine it owns.

Written atomically (temp file + rename, mode 0600) by the agent; read by the CLI so it is always right
about what runs where. A file whose agent PID is dead, or reused by another process (create time
differs), is stale: readers treat it as absent and the next agent replaces it.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from slp.paths import Paths, ensure_private_dir

if TYPE_CHECKING:
    from slp.settings import Settings

# Kept stdlib-only (no psutil, no pydantic, no urllib.request until used): every quick CLI command asks
# `live_state` whether an agent runs, and pays for what this module imports.

_CLOCK_TICKS: Optional[int] = None


def _proc_create_time(pid: int) -> Optional[float]:
    """Linux: the create time of `pid` as psutil reports it (boot time + start ticks / CLK_TCK, seconds
    since the epoch), from /proc; None if it is gone or a zombie."""
    global _CLOCK_TICKS
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:  # gone (or hidden from us: psutil would say AccessDenied)
        return None
    fields = data[data.rfind(b")") + 2:].split()  # the name, in parentheses, may hold spaces and ')'
    if fields[0] == b"Z":
        return None
    if _CLOCK_TICKS is None:
        _CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
    with open("/proc/stat", "rb") as f:  # read each time, as psutil does: it moves when the clock is set
        boot_time = next(float(line.split()[1]) for line in f if line.startswith(b"btime"))
    return float(fields[19]) / _CLOCK_TICKS + boot_time


def process_matches(pid: Optional[int], create_time: Optional[float]) -> bool:
    """True if `pid` is alive and is the same process (same create time) we recorded, not a reused PID.

    On Linux a read of /proc/PID/stat (no psutil); elsewhere psutil, imported on first use."""
    if not pid:
        return False
    if sys.platform.startswith("linux"):
        started = _proc_create_time(pid) if isinstance(pid, int) and pid > 0 else None
        if started is None:
            return False
        return create_time is None or abs(started - create_time) < 0.01
    import psutil

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return create_time is None or abs(proc.create_time() - create_time) < 0.01
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def wait_exited(proc, timeout: float) -> None:
    """psutil's `Process.wait` for a process that is not our child, which also counts a zombie as gone:
    it has exited, and its reaping is its parent's business (in a container, PID 1 may take its time).
    Raises psutil.TimeoutExpired when it still runs after `timeout` seconds."""
    import psutil

    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.NoSuchProcess:
            return
        if time.monotonic() >= deadline:
            raise psutil.TimeoutExpired(timeout, proc.pid)
        time.sleep(delay)
        delay = min(delay * 2, 0.02)


def read_state(paths: Paths) -> Optional[dict]:
    """The recorded state, or None when there is none or it is unreadable (corrupt files are ignored)."""
    try:
        data = json.loads(paths.state_file.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def live_state(paths: Paths) -> Optional[dict]:
    """The recorded state if its agent process is still the one that wrote it, else None."""
    state = read_state(paths)
    if state and process_matches(state.get("agent_pid"), state.get("agent_create_time")):
        return state
    return None


def write_state(paths: Paths, state: dict) -> None:
    import tempfile

    ensure_private_dir(paths.state_dir)
    fd, tmp = tempfile.mkstemp(dir=paths.state_dir, prefix=".agent-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(state, f, indent=2)
        os.replace(tmp, paths.state_file)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def clear_state(paths: Paths, agent_pid: Optional[int] = None) -> None:
    """Remove the state file (only if it is still ours when `agent_pid` is given)."""
    state = read_state(paths)
    if agent_pid is not None and state and state.get("agent_pid") != agent_pid:
        return
    paths.state_file.unlink(missing_ok=True)


def agent_url(settings: Settings) -> str:
    """Base URL of the running agent (from the state file), else where settings say it would listen."""
    state = live_state(settings.paths)
    if state:
        return state["url"]
    host = settings.host if settings.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.port}"


def agent_health(url: str, timeout: float = 3.0) -> tuple[int, dict]:
    """(HTTP status, body) of the agent's /health: 200 when its engine is ready, 503 with the engine's
    state and reason otherwise, (0, {}) when nothing answers. /health needs no key."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url.rstrip("/") + "/health", headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read() or b"{}")
        except ValueError:
            return exc.code, {}
    except (OSError, ValueError):
        return 0, {}
