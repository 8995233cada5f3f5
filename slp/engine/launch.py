"""Starting an engine process, and nothing more: stdlib only and quick to import, so the agent can spawn
its engine before it imports anything else (`slp.server.head_plan`). `slp.engine.process` builds the
supervisor's view of the child (asyncio, stopping, reaping) on top of this.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

LOG_ROTATE_BYTES = 10 * 1024 * 1024
LOG_BACKUPS = 3


@dataclass(frozen=True)
class EngineCommand:
    """Everything needed to start one engine: argv, extra environment, where its output goes."""

    argv: list[str]
    env: dict[str, str]
    log_path: Path


def die_with_parent() -> None:  # runs in the child between fork and exec
    """On Linux the engine gets SIGKILL when the agent dies (PR_SET_PDEATHSIG)."""
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def rotate_log(path: Path, max_bytes: int = LOG_ROTATE_BYTES, backups: int = LOG_BACKUPS) -> None:
    """Shift `path` to `path.1` … when it has grown past max_bytes (done before each spawn)."""
    try:
        if path.stat().st_size < max_bytes:
            return
    except FileNotFoundError:
        return
    for i in range(backups - 1, 0, -1):
        older = path.with_name(f"{path.name}.{i}")
        if older.exists():
            os.replace(older, path.with_name(f"{path.name}.{i + 1}"))
    os.replace(path, path.with_name(f"{path.name}.1"))


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now, for the engine's private loopback socket."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def open_log(command: EngineCommand) -> int:
    """The engine's log, rotated and opened for appending, with a line that says what starts now. The
    folders the command names exist first (llama-server refuses a `--slot-save-path` that does not)."""
    command.log_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if "--slot-save-path" in command.argv[:-1]:
        Path(command.argv[command.argv.index("--slot-save-path") + 1]).mkdir(parents=True, exist_ok=True, mode=0o700)
    rotate_log(command.log_path)
    fd = os.open(command.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.write(fd, f"--- slp: starting engine at {time.strftime('%Y-%m-%d %H:%M:%S')}: "
                 f"{' '.join(command.argv)}\n".encode())
    return fd


def popen_engine(command: EngineCommand) -> subprocess.Popen:
    """Start the engine in a new session (own process group), output appended to its log, without an
    event loop. Raises OSError when the binary cannot be executed."""
    fd = open_log(command)
    try:
        return subprocess.Popen(command.argv, stdin=subprocess.DEVNULL, stdout=fd, stderr=fd,
                                env={**os.environ, **command.env}, start_new_session=True,
                                preexec_fn=die_with_parent)
    finally:
        os.close(fd)
