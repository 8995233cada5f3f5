"""The engine's lifecycle, owned by one asyncio task.

Only `_run` changes the state. Callers express intent (`start`, `stop`, `restart`, `use_model`) by
setting what they want and waking the owner; they never check the state first, and every verb is
idempotent. Readiness races the health probe against the process exiting, a deadline and new intent;
once ready, a watchdog treats a process that exists but does not answer as hung and replaces it.
Crashes restart with exponential backoff until more than `max_restarts` happen within `restart_window`; then
the state is `failed` (with the exit code/signal and the log tail) until someone asks again.

Liveness is judged by progress, not only by `/health`: llama.cpp can wedge mid-decode while its HTTP
threads still answer `/health`. The pool's lease reports work (`work_begin`/`work_end`) and the proxy
every byte the engine sends back (`progress`); the watchdog also counts the engine's CPU time as progress, which is how a long
prompt being processed (no bytes yet, cores busy) is told apart from a wedge (no bytes, cores idle). Work
in flight with neither for `stall_timeout` seconds is a stall: the engine is killed and restarted.

A stalled or hung engine is killed (SIGKILL to its group) and replaced at once, and its owner is told
(`on_kill`) so the requests in flight end now: a process frozen by a tracer or stuck in a driver (a GPU
hang, D state) may keep its sockets open and not be reaped for minutes. It is reaped in the background
and listed in `lingering` until it is gone.

Safe mode: an engine that dies by a fault signal (SIGSEGV, SIGABRT, ...) while loading, or in its first
decode (a request in flight and no reply sent yet), twice in a row, is started once more with
SAFE_MODE_ARGS appended (llama.cpp's parser keeps a repeated flag's last value). On Xeons with AMX,
llama-server dies in its warm-up decode unless weights are left unrepacked (llama.cpp #20824). If safe mode
serves, the engine is `degraded` (status, `slp ps`, the log, slp_engine_degraded) and keeps safe mode for this
supervisor's life, through crash, stall and config restarts; a user's restart or a new model tries normal
mode again. If safe mode fails too, the state is `failed` and the reason points to `slp doctor`. Crashes while
serving never switch to safe mode.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import inspect
import logging
import signal
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Awaitable, Callable, Optional, Union

import aiohttp
import psutil

from slp.engine.process import (
    EngineCommand,
    StartedProcess,
    free_port,
    signal_group,
    spawn,
    tail_lines,
    terminate,
)
from slp.lifecycle import STOPPING_GRACE

log = logging.getLogger("slp.engine")

BACKOFF_FIRST = 0.25
BACKOFF_MAX = 10.0
HANG_PROBES = 2  # consecutive failed health probes that make an idle process "hung" (e.g. SIGSTOP)
# An engine that burns CPU while its HTTP thread is starved (2 cores, every slot decoding) is busy, not
# hung: it gets many more probes before it is replaced, so load never gets a healthy engine killed.
HANG_PROBES_BUSY = 12
BUSY_CPU_SECONDS = 0.05
BUSY_CPU_SHARE = 0.1  # of one core over a watchdog interval: more is work (e.g. prompt processing)
# Appended to the engine's argv in safe mode: no weight repacking (the AMX warm-up crash, llama.cpp #20824)
# and no flash attention (the last `--flash-attn` wins over the command's own).
SAFE_MODE_ARGS = ("--no-repack", "--flash-attn", "off")
SAFE_MODE_WORDS = "safe mode (--no-repack, flash attention off)"
CRASHES_AT_LOAD = 2  # crashes at load in a row that make the next start a safe-mode one
# Signals of a fault in the engine itself. SIGKILL and SIGTERM come from outside (the OOM killer, a user):
# they are crashes, but never "at load" (safe mode would not help).
FAULT_SIGNALS = frozenset({"SIGSEGV", "SIGBUS", "SIGILL", "SIGFPE", "SIGABRT", "SIGSYS", "SIGTRAP"})
KILLED_BY_US = ("stall", "hang")  # exits where the supervisor killed the engine and does not wait for it
LINGER_WAIT = 5.0  # stop(): seconds to wait for killed engines that have not exited yet


class EngineState(str, enum.Enum):
    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    RESTARTING = "restarting"
    FAILED = "failed"
    STOPPING = "stopping"


@dataclass
class ExitInfo:
    """Why an engine ended: `reason` is one of crash, crash-at-load (a fault signal while loading or in
    its first decode), hang, stall, start-timeout, spawn-failed."""

    reason: str
    detail: str
    code: Optional[int] = None
    signal: Optional[str] = None
    at: float = field(default_factory=time.time)
    log_tail: list[str] = field(default_factory=list)


class CrashWindow:
    """The restart rule an engine and an RPC worker share: failures are counted within a sliding window of
    `window` seconds; more than `max_restarts` there means giving up, and each restart before that waits
    `backoff_first` doubled per failure in the window, at most `backoff_max`. The limits may change between
    failures (a config reload); they apply from the next one."""

    def __init__(self, *, window: float, max_restarts: int, backoff_first: float, backoff_max: float):
        self.window, self.max_restarts = window, max_restarts
        self.backoff_first, self.backoff_max = backoff_first, backoff_max
        self._times: deque[float] = deque()

    def failed(self, now: Optional[float] = None) -> int:
        """Count a failure (at `now`, time.monotonic() by default); how many fell within the window, this
        one included."""
        now = time.monotonic() if now is None else now
        self._times.append(now)
        while self._times and now - self._times[0] > self.window:
            self._times.popleft()
        return len(self._times)

    @property
    def recent(self) -> int:
        """Failures in the window as of the last one counted (0 after `clear`)."""
        return len(self._times)

    @property
    def exhausted(self) -> bool:
        return len(self._times) > self.max_restarts

    def backoff(self) -> float:
        """Seconds to wait before the next restart."""
        return min(self.backoff_first * 2 ** max(0, len(self._times) - 1), self.backoff_max)

    def clear(self) -> None:
        """Forget the failures (the engine was replaced on purpose, or someone asked again after giving up)."""
        self._times.clear()


class EngineUnavailable(Exception):
    """The engine cannot serve now. `retry_after` is None when waiting will not help (failed)."""

    def __init__(self, message: str, state: EngineState, retry_after: Optional[int]):
        super().__init__(message)
        self.state = state
        self.retry_after = retry_after


def cpu_seconds(pid: int) -> float:
    try:
        times = psutil.Process(pid).cpu_times()
        return times.user + times.system
    except psutil.Error:
        return 0.0


def describe_exit(code: Optional[int]) -> tuple[Optional[int], Optional[str], str]:
    """(exit code, signal name, words) for an asyncio returncode (negative = killed by a signal)."""
    if code is not None and code < 0:
        name = signal.Signals(-code).name
        return None, name, f"killed by {name}"
    return code, None, f"exited with code {code}"


CommandFactory = Callable[[Path, int], Union[EngineCommand, Awaitable[EngineCommand]]]


class Supervisor:
    """Keeps one llama-server running for `model_path`. Read `snapshot()`; call the verbs."""

    def __init__(self, make_command: CommandFactory, http: aiohttp.ClientSession, *,
                 start_timeout: float, health_interval: float, health_timeout: float,
                 stop_grace: float, max_restarts: int, restart_window: float, log_path: Path,
                 stall_timeout: float = 30.0, name: str = "engine",
                 on_change: Optional[Callable[[EngineState, str], None]] = None,
                 on_restart: Optional[Callable[[str], None]] = None,
                 on_kill: Optional[Callable[[], None]] = None, safe_mode: Optional[str] = None,
                 on_stopping: Optional[Callable[[], Awaitable[None]]] = None):
        """`safe_mode`: why an earlier engine for this model needed safe mode; this one starts in it.
        `on_stopping`: the last step before a ready engine is stopped on purpose (stop, restart), while it
        still serves (the prompt cache saves there); bounded by STOPPING_GRACE, its errors only logged."""
        self._make_command = make_command
        self._http = http
        self.name = name
        self._crashes = CrashWindow(window=restart_window, max_restarts=max_restarts, backoff_first=BACKOFF_FIRST,
                                    backoff_max=BACKOFF_MAX)
        self.configure(start_timeout=start_timeout, health_interval=health_interval, health_timeout=health_timeout,
                       stop_grace=stop_grace, max_restarts=max_restarts, restart_window=restart_window,
                       stall_timeout=stall_timeout)
        self._log_path = log_path
        self._on_change = on_change
        self._on_restart = on_restart
        self._on_kill = on_kill  # the engine was killed (stall, hang): end its requests now, not at its exit
        self._on_stopping = on_stopping
        self._restart_reason = "user"

        self.state = EngineState.STOPPED
        self.reason = "not started"
        self.model_path: Optional[Path] = None
        self.port: Optional[int] = None
        self.pid: Optional[int] = None
        self.started_at: Optional[float] = None  # when the current engine became ready
        self.restarts = 0  # engines replaced, for any reason (as slp_engine_restarts_total counts them)
        self.crashes = 0  # engines that ended without being asked to (exit, failed health, stall)
        self.last_exit: Optional[ExitInfo] = None
        self.history: deque[dict] = deque(maxlen=50)
        self.in_flight = 0  # requests sent to this engine and not yet answered in full
        self.last_progress = time.monotonic()  # last byte from the engine, or last busy watchdog interval
        self.stalls = 0
        self.safe_mode = False  # engines start with SAFE_MODE_ARGS (see the module docstring)
        self.degraded: Optional[dict] = None  # {reason, since, args} while a safe-mode engine serves
        self.lingering: list[dict] = []  # engines killed (stall, hang) that have not exited yet
        self._reapers: set[asyncio.Task] = set()
        self._served = False  # the current engine sent a reply back: it is past its first decode
        self._load_crashes: list[str] = []  # signals of the crashes at load in a row, this far
        self._safe_reason = ""  # why safe mode was entered, e.g. "crashed twice at load, killed by SIGSEGV"
        if safe_mode:  # remembered from an earlier load of the model: no two crashes again
            self.safe_mode, self._safe_reason = True, safe_mode

        self._want_running = False
        self._want_restart = False
        self._wake = asyncio.Event()
        self._changed = asyncio.Event()
        self._task: Optional[asyncio.Task] = None
        self._adopted: Optional[tuple[StartedProcess, int]] = None  # see adopt()

    # ------------------------------------------------------------------ verbs (idempotent)

    def start(self, model_path: Path) -> None:
        """Ask for an engine serving `model_path`; returns at once (see `wait_ready`)."""
        self.use_model(model_path)
        self._want_running = True
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="slp-engine-supervisor")
        self._wake.set()

    def use_model(self, model_path: Path) -> None:
        """Serve another model: the owner restarts the engine with it (no-op for the same model; the first
        model is no restart, so a safe mode the supervisor was made with is kept)."""
        if self.model_path is not None and Path(model_path) == self.model_path:
            return
        replacing, self.model_path = self.model_path is not None, Path(model_path)
        if replacing:
            self.restart("model")

    def restart(self, reason: str = "user") -> None:
        """Replace the engine (also leaves `failed`). `reason` is for metrics: user, config, model."""
        self._restart_reason = reason
        self._want_restart = True
        self._wake.set()

    def configure(self, *, start_timeout: float, health_interval: float, health_timeout: float,
                  stop_grace: float, max_restarts: int, restart_window: float, stall_timeout: float = 30.0) -> None:
        """New timings (config reload); they apply from the next wait, probe or crash on."""
        self._start_timeout, self._health_interval, self._health_timeout = start_timeout, health_interval, health_timeout
        self._stop_grace = stop_grace
        self._crashes.window, self._crashes.max_restarts = restart_window, max_restarts
        self._stall_timeout = stall_timeout

    # ------------------------------------------------------------------ progress (called per request)

    def work_begin(self) -> None:
        """A request was sent to the engine; from now on it must make progress."""
        if self.in_flight == 0:
            self.last_progress = time.monotonic()
        self.in_flight += 1

    def work_end(self) -> None:
        self.in_flight -= 1

    def progress(self) -> None:
        """The engine sent bytes back."""
        self.last_progress = time.monotonic()

    def served(self) -> None:
        """The engine sent back a reply's body (a stream's first event, a whole answer): it got through a
        decode, so a crash from now on is one while serving, never one at load."""
        self._served = True

    async def stop(self) -> None:
        """Stop the engine (SIGTERM, grace, SIGKILL) and the owner task; blocks until both are gone, and
        waits (at most LINGER_WAIT seconds) for engines killed earlier that have not exited yet."""
        self._want_running = False
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None
        if self._reapers:
            await asyncio.wait(set(self._reapers), timeout=LINGER_WAIT)
            for entry in self.lingering:
                log.warning("%s: engine pid %s, killed %.0fs ago (%s), has not exited; it ends when the "
                            "kernel lets it", self.name, entry["pid"], time.time() - entry["killed_at"],
                            entry["reason"])
            for reaper in list(self._reapers):
                reaper.cancel()

    async def wait_ready(self, timeout: float) -> None:
        """Block until the engine is ready. Raises EngineUnavailable when failed, stopped or timed out."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self.state is not EngineState.READY:
            if self.state is EngineState.FAILED and not self._want_restart:  # a restart asked for: wait for it
                raise EngineUnavailable(f"engine failed: {self.reason}", self.state, None)
            if not self._want_running:
                raise EngineUnavailable("engine is stopped", self.state, None)
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise EngineUnavailable(f"engine is {self.state.value}: {self.reason}", self.state, 2)
            changed = self._changed
            try:
                await asyncio.wait_for(changed.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    async def settle(self, timeout: float) -> None:
        """After a request saw the engine fail: wait (briefly) until the owner has noticed it too, so an
        error message can say why (crash, stall) instead of "ready"."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.state is EngineState.READY and loop.time() < deadline:
            try:
                await asyncio.wait_for(self._changed.wait(), deadline - loop.time())
            except asyncio.TimeoutError:
                return

    def describe(self) -> str:
        """The engine's state for an error message: after a crash or a stall, why it ended."""
        if self.state is not EngineState.READY and self.last_exit is not None:
            return f"engine for {self.name} {self.state.value} after {self.last_exit.reason}: {self.last_exit.detail}"
        return f"engine for {self.name} {self.state.value}: {self.reason}"

    async def unavailable(self, detail: str) -> EngineUnavailable:
        """The error for a request this engine just failed. It is made once the owner has seen why (crash,
        stall), so the state it reports is observed, not guessed; retrying helps unless the engine failed
        for good."""
        await self.settle(1.0)
        retry = None if self.state is EngineState.FAILED else 2
        return EngineUnavailable(f"{detail} ({self.describe()})", self.state, retry)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def snapshot(self) -> dict:
        """A JSON-ready view for status, health and metrics."""
        return {
            "state": self.state.value, "reason": self.reason, "pid": self.pid, "port": self.port,
            "model_path": str(self.model_path) if self.model_path else None,
            "restarts": self.restarts, "crashes": self.crashes, "stalls": self.stalls, "in_flight": self.in_flight,
            "uptime_s": round(time.time() - self.started_at, 1) if self.started_at and self.state is EngineState.READY else None,
            "last_exit": asdict(self.last_exit) if self.last_exit else None,
            "degraded": dict(self.degraded) if self.degraded else None,
            "lingering": [dict(entry) for entry in self.lingering],
        }

    # ------------------------------------------------------------------ the owner

    def _set(self, state: EngineState, reason: str) -> None:
        self.state, self.reason = state, reason
        self.history.append({"at": time.time(), "state": state.value, "reason": reason})
        log.info("%s %s: %s", self.name, state.value, reason)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()  # wake every waiter; later waiters wait on the fresh event
        if self._on_change:
            self._on_change(state, reason)

    async def _run(self) -> None:
        crashes = self._crashes
        crashes.clear()  # a new owner task starts with no failures behind it
        try:
            while self._want_running:
                if self._want_restart and self._restart_reason in ("user", "model"):
                    self._leave_safe_mode()  # a user's restart or a new model: normal mode is tried again
                self._want_restart = False
                self._wake.clear()
                self._set(EngineState.RESTARTING if crashes.recent else EngineState.STARTING,
                          f"starting {self.model_path.name if self.model_path else 'engine'}"
                          + (f" in {SAFE_MODE_WORDS}" if self.safe_mode else ""))
                ended = await self._one_engine()
                if ended is None:  # asked to stop or restart: not a crash
                    if self._want_running:  # replaced on purpose (user, config, model)
                        self._restarted(self._restart_reason)
                    crashes.clear()
                    self._load_crashes.clear()
                    continue
                self.last_exit = ended
                self.crashes += 1
                crashes.failed()
                if ended.reason == "crash-at-load":
                    self._load_crashes.append(ended.signal or "a signal")
                else:
                    self._load_crashes.clear()
                entering_safe_mode = (not self.safe_mode and len(self._load_crashes) >= CRASHES_AT_LOAD)
                given_up = None if entering_safe_mode else self._giving_up(ended)
                if given_up is not None:
                    self._set(EngineState.FAILED, given_up)
                    self._killed(ended)
                    await self._wait_for_intent(None)
                    crashes.clear()
                    continue
                if entering_safe_mode:
                    self._enter_safe_mode()
                self._restarted(ended.reason)  # only when a restart follows, not when giving up
                delay = crashes.backoff()
                self._set(EngineState.RESTARTING, f"{ended.reason}: {ended.detail}; restarting"
                          f"{' in ' + SAFE_MODE_WORDS if entering_safe_mode else ''} in {delay:.2f}s")
                self._killed(ended)
                await self._wait_for_intent(delay)
        finally:
            leftover, self._adopted = self._adopted, None
            if leftover is not None:  # stopped before it ran the engine it was to adopt
                await terminate(leftover[0], self._stop_grace)
            self.pid = None
            self._set(EngineState.STOPPED, "stopped")

    def _giving_up(self, ended: ExitInfo) -> Optional[str]:
        """Why the engine is `failed` now, or None to restart it: safe mode failed too (at load, or before
        it ever became ready), or too many failures in the restart window."""
        if self.safe_mode and (ended.reason == "crash-at-load" or self.degraded is None):
            self.degraded = None
            return (f"{self._safe_reason}, then in {SAFE_MODE_WORDS} too ({ended.detail}); giving up: "
                    "run `slp doctor`")
        if self._crashes.exhausted:
            return (f"{ended.reason}: {ended.detail} ({self._crashes.recent} failures in "
                    f"{self._crashes.window:.0f}s; giving up)")
        return None

    def _enter_safe_mode(self) -> None:
        count = {2: "twice", 3: "three times"}.get(len(self._load_crashes), f"{len(self._load_crashes)} times")
        self.safe_mode = True
        self._safe_reason = f"crashed {count} at load, killed by {', '.join(dict.fromkeys(self._load_crashes))}"
        log.warning("%s %s; starting it once more in %s", self.name, self._safe_reason, SAFE_MODE_WORDS)

    def _leave_safe_mode(self) -> None:
        self._load_crashes.clear()
        if self.safe_mode:
            log.info("%s: leaving %s, trying normal mode again (%s restart)", self.name, SAFE_MODE_WORDS,
                     self._restart_reason)
        self.safe_mode, self.degraded = False, None

    def _killed(self, ended: ExitInfo) -> None:
        """After the state says why: an engine the watchdog killed may never close its sockets, so its
        owner ends the requests in flight now (the proxy answers them as for a dead engine)."""
        if ended.reason in KILLED_BY_US and self._on_kill is not None:
            self._on_kill()

    def _restarted(self, reason: str) -> None:
        self.restarts += 1
        if self._on_restart:
            self._on_restart(reason)

    async def _wait_for_intent(self, delay: Optional[float]) -> None:
        try:
            await asyncio.wait_for(self._wake.wait(), delay)
        except asyncio.TimeoutError:
            pass

    def _intent_changed(self) -> bool:
        return not self._want_running or self._want_restart

    def adopt(self, process: StartedProcess, port: int) -> None:
        """Take over an engine already started on `port` (the agent's head start) as the next one to run,
        instead of spawning it; call before `start`."""
        self._adopted = (process, port)

    async def _one_engine(self) -> Optional[ExitInfo]:
        """Run one engine process to its end. None: ended on purpose; ExitInfo: it failed."""
        adopted, self._adopted = self._adopted, None
        self._served = False
        if adopted is not None:
            proc, self.port = adopted
        else:
            self.port = free_port()
            try:
                command = self._make_command(self.model_path, self.port)
                if inspect.isawaitable(command):  # a factory that must ask something first (RPC workers)
                    command = await command
                if self.safe_mode:
                    command = dataclasses.replace(command, argv=[*command.argv, *SAFE_MODE_ARGS])
                proc = await spawn(command)
            except OSError as exc:
                return ExitInfo("spawn-failed", f"cannot run the engine: {exc}", log_tail=tail_lines(self._log_path))
        self.pid = proc.pid
        exited = asyncio.ensure_future(proc.wait())
        ended: Optional[ExitInfo] = None
        try:
            ended = await self._serve(proc, exited)
            if ended is None and self.state is EngineState.READY and not exited.done():
                await self._stopping()
            return ended
        finally:
            if proc.returncode is None and ended is not None and ended.reason in KILLED_BY_US:
                self._linger(proc, exited, ended.reason)  # SIGKILLed already: the next one starts now
            else:
                if proc.returncode is None:
                    self._set(EngineState.STOPPING, "stopping engine")
                    await terminate(proc, self._stop_grace)
                exited.cancel()
            self.pid = None
            self.started_at = None

    async def _stopping(self) -> None:
        """Run `on_stopping` before a ready engine is stopped on purpose, within STOPPING_GRACE."""
        if self._on_stopping is None:
            return
        try:
            await asyncio.wait_for(self._on_stopping(), STOPPING_GRACE)
        except asyncio.TimeoutError:
            log.warning("%s: the steps before stopping took over %gs; stopping anyway", self.name, STOPPING_GRACE)
        except Exception:  # noqa: BLE001 - a save that fails must never keep an engine from stopping
            log.exception("%s: the steps before stopping failed; stopping anyway", self.name)

    def _linger(self, proc: "asyncio.subprocess.Process | StartedProcess", exited: asyncio.Future,
                reason: str) -> None:
        """List a killed engine in `lingering` until it has exited, reaped by a task of its own: a process
        frozen by a tracer or stuck in a driver can take minutes to go, and nothing should wait for it."""
        entry = {"pid": proc.pid, "killed_at": time.time(), "reason": reason}
        self.lingering.append(entry)

        async def reap() -> None:
            try:
                await exited
            finally:
                self.lingering.remove(entry)
            took = time.time() - entry["killed_at"]
            if took > 1:
                log.info("%s: engine pid %s, killed after a %s, exited %.0fs later", self.name, proc.pid, reason, took)

        reaper = asyncio.ensure_future(reap())
        self._reapers.add(reaper)
        reaper.add_done_callback(self._reapers.discard)

    async def _serve(self, proc: asyncio.subprocess.Process, exited: asyncio.Future) -> Optional[ExitInfo]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._start_timeout
        while not await self._probe(min(1.0, self._health_timeout)):
            if self._intent_changed():
                return None
            if exited.done():
                return self._crashed(proc, ready=False)
            if loop.time() > deadline:
                return ExitInfo("start-timeout", f"not healthy within {self._start_timeout:g}s",
                                log_tail=tail_lines(self._log_path))
            self._wake.clear()
            waker = asyncio.ensure_future(self._wake.wait())
            await asyncio.wait({exited, waker}, timeout=0.02, return_when=asyncio.FIRST_COMPLETED)
            waker.cancel()
        self.started_at = time.time()
        if self.safe_mode and self.degraded is None:
            self.degraded = {"reason": self._safe_reason, "since": self.started_at, "args": list(SAFE_MODE_ARGS)}
            log.warning("%s degraded: serving in %s: %s", self.name, SAFE_MODE_WORDS, self._safe_reason)
        self._set(EngineState.READY, f"serving {self.model_path.name} on 127.0.0.1:{self.port} (pid {proc.pid})"
                  + (f" in {SAFE_MODE_WORDS}" if self.safe_mode else ""))
        failures = 0
        cpu_before, checked = cpu_seconds(proc.pid), loop.time()
        self.last_progress = time.monotonic()
        while True:
            self._wake.clear()
            if self._intent_changed():
                return None
            waker = asyncio.ensure_future(self._wake.wait())
            await asyncio.wait({exited, waker}, timeout=self._health_interval,
                               return_when=asyncio.FIRST_COMPLETED)
            waker.cancel()
            if exited.done():
                return self._crashed(proc, ready=True)
            if self._intent_changed():
                return None
            cpu_now = cpu_seconds(proc.pid)
            busy = cpu_now - cpu_before > max(BUSY_CPU_SECONDS, BUSY_CPU_SHARE * (loop.time() - checked))
            cpu_before, checked = cpu_now, loop.time()
            if busy:
                self.last_progress = time.monotonic()
            stalled = self._stalled()
            if stalled:
                self.stalls += 1
                signal_group(proc.pid, signal.SIGKILL)  # no wait: it is reaped in the background (_linger)
                return ExitInfo("stall", stalled, log_tail=tail_lines(self._log_path))
            if await self._probe(self._health_timeout):
                failures = 0
                continue
            failures += 1
            if failures >= (HANG_PROBES_BUSY if busy else HANG_PROBES):
                signal_group(proc.pid, signal.SIGKILL)  # a hung (e.g. stopped) process, the same
                return ExitInfo("hang", f"no answer to {failures} health probes "
                                f"({self._health_timeout:g}s timeout); killed", signal=None,
                                log_tail=tail_lines(self._log_path))

    def _stalled(self) -> Optional[str]:
        """Why the engine counts as stalled now, or None: work in flight, no byte and no CPU for too long."""
        quiet = time.monotonic() - self.last_progress
        if self.in_flight > 0 and quiet > self._stall_timeout:
            return (f"no progress for {quiet:.0f}s with {self.in_flight} request(s) in flight (no bytes, CPU idle; "
                    f"stall timeout {self._stall_timeout:g}s); killed")
        return None

    def _crashed(self, proc: "asyncio.subprocess.Process | StartedProcess", ready: bool) -> ExitInfo:
        """Why an engine that exited on its own ended. A fault signal while loading, or in its first decode
        (after ready, a request in flight and no reply sent back yet), is a crash at load (see safe mode)."""
        code, sig, words = describe_exit(proc.returncode)
        tail = tail_lines(self._log_path)
        if sig in FAULT_SIGNALS and not ready:
            return ExitInfo("crash-at-load", f"crashed while loading: {words}", code=code, signal=sig, log_tail=tail)
        if sig in FAULT_SIGNALS and not self._served and self.in_flight > 0:
            return ExitInfo("crash-at-load", f"crashed in its first decode: {words}", code=code, signal=sig,
                            log_tail=tail)
        return ExitInfo("crash", f"{'exited' if ready else 'exited while starting'}: {words}", code=code, signal=sig,
                        log_tail=tail)

    async def _probe(self, timeout: float) -> bool:
        """True when the engine's /health answers 200 within `timeout`."""
        try:
            async with self._http.get(f"{self.base_url}/health",
                                      timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
                await resp.read()
                return resp.status == 200
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
            return False
