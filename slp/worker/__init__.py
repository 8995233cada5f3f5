"""llama.cpp RPC workers: the `ggml-rpc-server` processes an engine can offload layers to.

`slp worker start` runs one under a small supervisor (slp.worker.runner, `python -m slp.worker`), the
agent probes the ones listed in `SLP_WORKERS` before each engine start (slp.worker.probe) and keeps
an eye on them while the engine runs (slp.worker.pool).

The trust model is llama.cpp's: RPC has no authentication and no encryption; anyone who can reach a
worker's port can read and write its memory buffers and make it compute. So a worker binds loopback
unless told otherwise with `--trusted-network`, and belongs on a private network only.
"""

from __future__ import annotations

import ipaddress
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from slp.settings import Paths, Settings, ensure_private_dir
from slp.worker.probe import DEFAULT_PORT, is_loopback

WORKER_BINARIES = ("ggml-rpc-server", "rpc-server")  # build.py installs the first; older builds the second
TRUST_WARNING = ("llama.cpp RPC has no authentication and no encryption: anyone who can reach the port "
                 "can use this machine's memory and compute. Use it on a trusted private network only.")


class WorkerError(Exception):
    """A user-facing failure: one line that says what went wrong and what to do."""


@dataclass(frozen=True)
class WorkerSpec:
    """How to run one worker: the rpc-server's own options, and whether a non-loopback bind is allowed."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    device: Optional[str] = None
    threads: Optional[int] = None
    cache: bool = False
    trusted_network: bool = False

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def check(self) -> None:
        """Raise WorkerError for a spec the worker would fail on, or one that must not run (open bind)."""
        if not 0 < self.port < 65536:
            raise WorkerError(f"port {self.port} is out of range (1-65535)")
        if self.threads is not None and self.threads < 1:
            raise WorkerError("--threads must be at least 1")
        try:
            ipaddress.IPv4Address(self.host)
        except ValueError:
            raise WorkerError(f"--host must be an IPv4 address of this machine (the RPC worker binds IPv4 "
                              f"literals only), not {self.host!r}")
        if not is_loopback(self.host) and not self.trusted_network:
            raise WorkerError(f"refusing to bind {self.host}: {TRUST_WARNING} Pass --trusted-network if it is.")

    def worker_argv(self, binary: Path) -> list[str]:
        argv = [str(binary), "--host", self.host, "--port", str(self.port)]
        if self.device:
            argv += ["--device", self.device]
        if self.threads is not None:
            argv += ["--threads", str(self.threads)]
        if self.cache:
            argv.append("--cache")
        return argv

    def options(self) -> list[str]:
        """The same spec as `python -m slp.worker` / `slp worker start` options."""
        args = ["--host", self.host, "--port", str(self.port)]
        if self.device:
            args += ["--device", self.device]
        if self.threads is not None:
            args += ["--threads", str(self.threads)]
        if self.cache:
            args.append("--cache")
        if self.trusted_network:
            args.append("--trusted-network")
        return args


def worker_binary(settings: Settings) -> Path:
    """The RPC worker of the same build as the engine (both ends must speak the same protocol)."""
    from slp.engine.binary import EngineNotFound, find_engine

    try:
        engine, _ = find_engine(settings)
    except EngineNotFound as exc:
        raise WorkerError(str(exc))
    for name in WORKER_BINARIES:
        candidate = engine.parent / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise WorkerError(f"no RPC worker ({' or '.join(WORKER_BINARIES)}) next to {engine}; "
                      "rebuild the engine with `python3 build.py --force`")


def state_file(paths: Paths, port: int) -> Path:
    """Run state of the worker supervised on `port` (one worker per port on a machine)."""
    return paths.state_dir / f"worker-{port}.json"


def log_file(paths: Paths, port: int) -> Path:
    return paths.log_dir / f"worker-{port}.log"


def read_worker_state(path: Path) -> Optional[dict]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def live_worker_state(path: Path) -> Optional[dict]:
    """The recorded state if its supervisor is still the process that wrote it, else None (stale)."""
    from slp.engine.process import process_matches

    state = read_worker_state(path)
    if state and process_matches(state.get("supervisor_pid"), state.get("supervisor_create_time")):
        return state
    return None


def all_worker_states(paths: Paths) -> list[tuple[Path, dict]]:
    """Every worker state file here (live or stale), by port."""
    found = []
    if paths.state_dir.is_dir():
        for path in sorted(paths.state_dir.glob("worker-*.json")):
            state = read_worker_state(path)
            if state is not None:
                found.append((path, state))
    return found


def write_worker_state(path: Path, state: dict) -> None:
    ensure_private_dir(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".worker-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(state, f, indent=2)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
