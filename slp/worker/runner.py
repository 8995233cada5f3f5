"""The worker supervisor: keeps one `ggml-rpc-server` running (`python -m slp.worker`, and what
`slp worker start` detaches or a service runs).

Readiness is an answer, not an exit code: the rpc-server exits 0 even when it cannot bind its port, so
the worker is ready only once a TCP connection to it gets the RPC hello back (slp.worker.probe). A
worker that exits is restarted with exponential backoff; more than MAX_RESTARTS exits within
RESTART_WINDOW leave it `failed` and end the supervisor with status 1, as does a first start that never
became ready (a port taken, a bad device), so whoever started it sees why at once. The crash window and
the backoff are the engine supervisor's (`CrashWindow`), with the worker's own numbers; its states are
the engine's (`EngineState`), written as their values.

One owner: `run()` alone changes the state; signal handlers only record that a stop was asked. The
state file (run/worker-<port>.json) says what runs: the supervisor's and the worker's PIDs and create
times, the state and why, restarts and the last exit. The worker runs in its own process group and
dies with the supervisor (Linux parent-death signal).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from pathlib import Path
from typing import Optional

import psutil

from slp.engine.launch import die_with_parent, rotate_log
from slp.engine.process import tail_lines, terminate
from slp.engine.supervisor import CrashWindow, EngineState, describe_exit
from slp.settings import Settings
from slp.worker import (
    WorkerError,
    WorkerSpec,
    live_worker_state,
    log_file,
    state_file,
    worker_binary,
    write_worker_state,
)
from slp.worker.probe import probe_worker

log = logging.getLogger("slp.worker")

READY_TIMEOUT = 120.0  # device initialisation (a GPU backend) can take a while
BACKOFF_FIRST = 1.0  # longer than the engine's first backoff: its restart sees the loss before the worker is back
BACKOFF_MAX = 30.0
MAX_RESTARTS = 5
RESTART_WINDOW = 120.0
STOP_GRACE = 5.0

# What the rpc-server prints before it gives up (and exits 0): turned into one line a user can act on.
_FAILURES = (
    ("Failed to create server socket", "cannot listen on {address}: the port is taken, or {host} is not "
                                       "an address of this machine"),
    ("Invalid host address", "{host} is not a valid IPv4 address"),
    ("unknown device", "unknown device {device!r}; the worker log lists the devices this build has"),
    ("No devices found", "this build of the worker found no device to serve"),
)


def _create_time(pid: Optional[int]) -> Optional[float]:
    try:
        return psutil.Process(pid).create_time() if pid else None
    except psutil.Error:
        return None


async def spawn_worker(argv: list[str], log_path: Path) -> asyncio.subprocess.Process:
    """Start the rpc-server like an engine (own process group, dies with us, output to its log), but with
    SIGPIPE ignored: the rpc-server writes without MSG_NOSIGNAL, so a client that sent the hello and hung
    up before the answer (a probe that timed out while the worker served an engine) killed it with
    SIGPIPE once it got to that connection. Ignored, the write fails and it goes on to the next client.
    No gdb backtrace on an abort either: it would delay the restart by seconds."""
    log_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    rotate_log(log_path)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, f"--- slp: starting worker at {time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(argv)}\n".encode())
        # restore_signals=False keeps Python's SIG_IGN for SIGPIPE across exec (ignored dispositions survive it).
        return await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=fd, stderr=fd, env={**os.environ, "GGML_NO_BACKTRACE": "1"},
            start_new_session=True, restore_signals=False, preexec_fn=die_with_parent)
    finally:
        os.close(fd)


def _listens(pid: int, port: int) -> bool:
    """True when process `pid` has a TCP socket listening on `port`."""
    try:
        return any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port
                   for c in psutil.Process(pid).net_connections(kind="tcp4"))
    except psutil.Error:
        return False


class WorkerRunner:
    """Runs one worker for `spec` until asked to stop or it fails for good."""

    def __init__(self, spec: WorkerSpec, settings: Settings, binary: Path):
        self.spec = spec
        self.binary = binary
        self.state_path = state_file(settings.paths, spec.port)
        self.log_path = log_file(settings.paths, spec.port)
        self.state = EngineState.STARTING
        self.reason = "starting"
        self.restarts = 0
        self.worker_pid: Optional[int] = None
        self.ready_at: Optional[float] = None
        self.version: Optional[str] = None
        self.memory: Optional[dict] = None
        self.last_exit: Optional[dict] = None
        self.started_at = time.time()
        self._stop = asyncio.Event()
        from slp.service.notify import ServiceNotifier

        self._notifier = ServiceNotifier()

    # ------------------------------------------------------------------ state

    def _record(self, state: EngineState, reason: str) -> None:
        self.state, self.reason = state, reason
        log.info("worker %s %s: %s", self.spec.address, state.value, reason)
        me = os.getpid()
        write_worker_state(self.state_path, {
            "supervisor_pid": me, "supervisor_create_time": _create_time(me),
            "worker_pid": self.worker_pid, "worker_create_time": _create_time(self.worker_pid),
            "host": self.spec.host, "port": self.spec.port, "address": self.spec.address,
            "options": self.spec.options(), "binary": str(self.binary), "log": str(self.log_path),
            "state": state.value, "reason": reason, "restarts": self.restarts, "started_at": self.started_at,
            "ready_at": self.ready_at, "version": self.version, "memory": self.memory,
            "last_exit": self.last_exit, "updated_at": time.time(),
        })
        self._notifier.status(f"worker {state.value}: {reason}")

    def request_stop(self) -> None:
        self._stop.set()

    # ------------------------------------------------------------------ the owner

    async def run(self) -> int:
        """Supervise until stopped (returns 0) or failed for good (returns 1, the state file says why)."""
        crashes = CrashWindow(window=RESTART_WINDOW, max_restarts=MAX_RESTARTS, backoff_first=BACKOFF_FIRST,
                              backoff_max=BACKOFF_MAX)
        ever_ready = False
        try:
            while not self._stop.is_set():
                self._record(EngineState.RESTARTING if self.restarts else EngineState.STARTING,
                             f"starting {self.binary.name}")
                try:
                    proc = await spawn_worker(self.spec.worker_argv(self.binary), self.log_path)
                except OSError as exc:
                    self._record(EngineState.FAILED, f"cannot run {self.binary}: {exc.strerror or exc}")
                    return 1
                self.worker_pid = proc.pid
                exited = asyncio.ensure_future(proc.wait())
                try:
                    why = await self._until_ready(proc, exited)
                    if why is None and not self._stop.is_set():
                        ever_ready = True
                        self._notifier_ready()
                        stopper = asyncio.ensure_future(self._stop.wait())
                        await asyncio.wait({exited, stopper}, return_when=asyncio.FIRST_COMPLETED)
                        stopper.cancel()
                        if exited.done():
                            why = self._describe(proc, "exited")
                finally:
                    if proc.returncode is None:
                        self._record(EngineState.STOPPING, "stopping the worker")
                        await terminate(proc, STOP_GRACE)
                    exited.cancel()
                    self.worker_pid, self.ready_at = None, None
                if self._stop.is_set():
                    break
                self.last_exit = {"detail": why, "code": proc.returncode, "at": time.time(),
                                  "log_tail": tail_lines(self.log_path, 10)}
                if not ever_ready:
                    self._record(EngineState.FAILED, why or "did not start")
                    return 1
                self.restarts += 1
                recent = crashes.failed()
                if crashes.exhausted:
                    self._record(EngineState.FAILED, f"{why} ({recent} failures in {crashes.window:.0f}s; giving up)")
                    return 1
                delay = crashes.backoff()
                self._record(EngineState.RESTARTING, f"{why}; restarting in {delay:.1f}s")
                try:
                    await asyncio.wait_for(self._stop.wait(), delay)
                except asyncio.TimeoutError:
                    pass
        finally:
            if self.state is not EngineState.FAILED:
                self.state_path.unlink(missing_ok=True)
        return 0

    def _notifier_ready(self) -> None:
        if self._notifier.enabled and not self._notifier.ready_sent:
            self._notifier.ready_sent = True
            from slp.service.notify import notify

            notify(self._notifier.socket_path, READY=1, STATUS=f"worker ready on {self.spec.address}")

    async def _until_ready(self, proc: asyncio.subprocess.Process, exited: asyncio.Future) -> Optional[str]:
        """None once the worker answers the hello; else why it never did (it exited, or time ran out)."""
        deadline = time.monotonic() + READY_TIMEOUT
        while not self._stop.is_set():
            if exited.done():
                return self._describe(proc, "exited before it was ready")
            # Only a socket the worker itself listens on counts: whatever holds the port when it cannot bind
            # would accept our connection too.
            probe = (await asyncio.to_thread(probe_worker, self.spec.address, 1.0)
                     if _listens(proc.pid, self.spec.port) else None)
            if probe is not None and (probe.ok or probe.state == "not-answering"):
                # not-answering: it listens, and a client (an engine) got there first.
                self.ready_at = time.time()
                self.version, self.memory = probe.version, probe.memory
                self._record(EngineState.READY, f"listening on {self.spec.address} (pid {proc.pid}"
                             + (f", RPC protocol {probe.version})" if probe.version else ", serving a client)"))
                return None
            if probe is not None and probe.state in ("incompatible", "invalid"):
                return f"{self.spec.address} answered, but not as this build's worker: {probe.detail}"
            if time.monotonic() > deadline:
                return f"not answering the RPC hello within {READY_TIMEOUT:.0f}s"
            stopper = asyncio.ensure_future(self._stop.wait())
            await asyncio.wait({exited, stopper}, timeout=0.1, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
        return None

    def _describe(self, proc: asyncio.subprocess.Process, what: str) -> str:
        _, _, words = describe_exit(proc.returncode)
        text = "\n".join(tail_lines(self.log_path, 40))
        for needle, message in _FAILURES:
            if needle in text:
                return message.format(address=self.spec.address, host=self.spec.host, device=self.spec.device)
        return f"{what}: {words}"


def run_foreground(spec: WorkerSpec, settings: Settings) -> int:
    """Run the supervisor in this process until SIGTERM/SIGINT; the exit status of `WorkerRunner.run`.

    Raises WorkerError (before anything starts) for a spec that must not run, a missing binary, or a
    worker already supervised on this port.
    """
    spec.check()
    binary = worker_binary(settings)
    path = state_file(settings.paths, spec.port)
    running = live_worker_state(path)
    if running and running.get("supervisor_pid") != os.getpid():
        raise WorkerError(f"a worker already runs on port {spec.port} (supervisor pid {running['supervisor_pid']}); "
                          "`slp worker stop --port " + str(spec.port) + "` first")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    runner = WorkerRunner(spec, settings, binary)

    async def main() -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(sig, runner.request_stop)
        try:
            return await runner.run()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)

    return asyncio.run(main())
