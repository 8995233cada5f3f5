"""The llama-server child process: how it is spawned, how it is stopped, and how it is tied to us.

The engine runs in its own process group so that a stop reaches everything it started, and on Linux
it receives SIGKILL when the agent dies (PR_SET_PDEATHSIG), so it never outlives an agent that was
killed with SIGKILL. Elsewhere the state file lets the next `slp agent start` reap a leftover.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path
from typing import Optional

import psutil

from slp.engine.launch import EngineCommand, die_with_parent, free_port, open_log, popen_engine, rotate_log
from slp.runstate import process_matches, wait_exited  # "is it still that process", "has it exited": one home

# Spawning lives in slp.engine.launch (stdlib only, for the agent's head start); these names stay here too.
__all__ = ["EngineCommand", "StartedProcess", "free_port", "rotate_log", "spawn", "spawn_now", "terminate"]


async def spawn(command: EngineCommand) -> asyncio.subprocess.Process:
    """Start the engine in a new session (own process group), output appended to its log.

    Raises OSError when the binary cannot be executed (missing, not executable).
    """
    fd = open_log(command)
    try:
        return await asyncio.create_subprocess_exec(
            *command.argv, stdin=asyncio.subprocess.DEVNULL, stdout=fd, stderr=fd,
            env={**os.environ, **command.env}, start_new_session=True, preexec_fn=die_with_parent)
    finally:
        os.close(fd)


class StartedProcess:
    """An engine started before the event loop ran (`spawn_now`), with what the supervisor uses of an
    asyncio subprocess: `pid`, `returncode` and `wait()` (asyncio does not watch it: a pidfd tells the
    loop when it exits, or, where there is none, it is polled)."""

    def __init__(self, popen: subprocess.Popen):
        self._popen = popen
        self.pid = popen.pid

    @property
    def returncode(self) -> Optional[int]:
        return self._popen.poll()

    async def wait(self) -> int:
        if self._popen.poll() is not None:
            return self._popen.returncode
        try:
            pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):  # not Linux 5.3+
            while self._popen.poll() is None:
                await asyncio.sleep(0.05)
            return self._popen.returncode
        loop = asyncio.get_running_loop()
        ended = loop.create_future()
        loop.add_reader(pidfd, lambda: ended.done() or ended.set_result(None))
        try:
            await ended
        finally:
            loop.remove_reader(pidfd)
            os.close(pidfd)
        # Readable means it has exited, but a traced process (a debugger, a tracer that froze it) is
        # reaped by its tracer first: never block the loop in waitpid until that one lets go.
        while self._popen.poll() is None:
            await asyncio.sleep(0.05)
        return self._popen.returncode

    def kill(self) -> None:
        """SIGKILL its group and reap it (an engine nobody took over); waits at most a second."""
        if self._popen.poll() is None:
            signal_group(self.pid, signal.SIGKILL)
            try:
                self._popen.wait(timeout=1)
            except subprocess.TimeoutExpired:
                pass  # stuck in the kernel (a GPU driver, a disk): it dies when it can
        signal_group(self.pid, signal.SIGKILL)


def spawn_now(command: EngineCommand) -> StartedProcess:
    """`spawn` without an event loop, as the agent process does first thing (see slp.server.head_start)."""
    return StartedProcess(popen_engine(command))


def signal_group(pid: int, sig: int) -> None:
    """Send `sig` to the process group led by `pid` (our engine is a session leader)."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


async def terminate(proc: "asyncio.subprocess.Process | StartedProcess", grace: float) -> Optional[int]:
    """SIGTERM to the group, wait up to `grace` seconds, then SIGKILL the group. Returns the exit code."""
    if proc.returncode is None:
        signal_group(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except asyncio.TimeoutError:
            signal_group(proc.pid, signal.SIGKILL)
            await proc.wait()
    # The leader is gone; make sure nothing it spawned lingers in its group.
    signal_group(proc.pid, signal.SIGKILL)
    return proc.returncode


def kill_stale(pid: Optional[int], create_time: Optional[float], grace: float = 3.0) -> bool:
    """Reap an engine left by a dead agent (only if it is really that process). Returns True if killed."""
    if not process_matches(pid, create_time):
        return False
    signal_group(pid, signal.SIGTERM)
    try:
        wait_exited(psutil.Process(pid), grace)
    except psutil.TimeoutExpired:
        signal_group(pid, signal.SIGKILL)
    except psutil.NoSuchProcess:
        pass
    return True


def kill_stale_engines(state: Optional[dict]) -> list[int]:
    """Reap every engine a dead agent's state file names (`engines`, and the older `engine_pid`);
    returns the PIDs killed."""
    if not state:
        return []
    recorded = [(e.get("pid"), e.get("create_time")) for e in state.get("engines") or () if isinstance(e, dict)]
    recorded.append((state.get("engine_pid"), state.get("engine_create_time")))
    killed = []
    for pid, create_time in dict.fromkeys(recorded):
        if kill_stale(pid, create_time):
            killed.append(pid)
    return killed


def memory_of(pid: Optional[int]) -> Optional[dict]:
    """RSS in bytes and as a percentage of system memory, or None if the process is gone."""
    if not pid:
        return None
    try:
        proc = psutil.Process(pid)
        rss = proc.memory_info().rss
        return {"rss_bytes": rss, "percent": round(100.0 * rss / psutil.virtual_memory().total, 1),
                "cpu_seconds": round(sum(proc.cpu_times()[:2]), 2)}
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def tail_lines(path: Path, count: int = 20, max_bytes: int = 16384) -> list[str]:
    """The last `count` lines of a log, read from its end (cheap even for a big file)."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read().decode("utf-8", "replace")
    except OSError:
        return []
    return [line for line in data.splitlines() if line.strip()][-count:]
