"""Several models at once: one supervised engine per loaded model, leases, a memory budget, keep-alive.

Every request holds a *lease* on the engine that serves it, from admission to its last byte. Unloading
or evicting an engine waits until its leases are released, so no request is ever cut to make room; a
request for a model that is being unloaded waits for it to be gone and loads it again. Concurrent first
requests for a model load it once (the first one creates the entry; the others find it).

Before a load the pool checks the memory budget: the model's estimate plus what the loaded engines hold
(the larger of their estimate and their measured memory). When it does not fit, idle engines (no lease,
not pinned) are evicted least recently used first; when it still does not fit, the load waits (bounded:
`max_waiting`, then `request_wait_timeout`) for leases to end; a model larger than the whole budget is
refused at once with the numbers.

Idle expiry is by reference count (Ollama's scheduler): an engine's expiry is set when its last lease ends
and cleared when one arrives; one timer for the whole pool (set for the earliest expiry) unloads what has
expired, so a request costs two assignments, not a timer. `keep_alive` is seconds; None keeps the engine
until it is unloaded or evicted.

A request's accounting has one owner, its `Lease`: the agent-wide admission count (a 429 past
`max_admitted`), the engine's lease count, the compute gate, and the supervisor's in-flight count (its
progress watchdog) are all taken in `__aenter__` and given back in `__aexit__`, in reverse order.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from slp.engine.budget import ComputeGate, format_bytes
from slp.engine.supervisor import EngineState, EngineUnavailable, Supervisor

log = logging.getLogger("slp.engines")

UNSET: object = object()  # "the request did not say": keep the engine's keep-alive as it is


_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}


def parse_keep_alive(value: object) -> Optional[float]:
    """Seconds an idle engine stays loaded, from Ollama's forms: 300, "300", "90s", "10m", "1h30m".
    0 unloads after the reply; a negative value keeps it loaded (None). Raises ValueError."""
    if isinstance(value, bool) or value is None:
        raise ValueError("keep_alive must be a duration such as '10m', a number of seconds, 0 or -1")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = str(value).strip().lower()
        try:
            seconds = float(text)
        except ValueError:
            negative = text.startswith("-")
            body = text.lstrip("-")
            parts = _DURATION_RE.findall(body)
            if not parts or "".join(n + u for n, u in parts) != body:
                raise ValueError(f"keep_alive {value!r}: expected a duration such as '10m', '90s', '1h', "
                                 "a number of seconds, 0 or -1") from None
            seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in parts) * (-1 if negative else 1)
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        raise ValueError(f"keep_alive {value!r} is not a finite duration")
    return None if seconds < 0 else seconds


class Overloaded(Exception):
    """The agent already holds `max_admitted` requests (served or waiting): the caller answers 429."""


class ModelTooLarge(Exception):
    """The model needs more memory than the whole budget: waiting cannot help."""

    def __init__(self, model: str, need: int, budget: int):
        super().__init__(f"model {model!r} needs about {format_bytes(need)} of memory but the memory budget is "
                         f"{format_bytes(budget)} (SLP_MEMORY_BUDGET); choose a smaller model or raise the budget")
        self.need, self.budget = need, budget


@dataclass(eq=False)
class Engine:
    """One loaded model: its supervisor, leases and memory. Mutated only on the event loop."""

    name: str
    path: Path
    supervisor: Supervisor
    threads: int  # compute threads counted against the cores (0: not CPU-bound)
    estimate: int
    keep_alive: Optional[float]
    pinned: bool = False
    leases: int = 0
    measured: int = 0
    loaded_at: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.time)
    expires_at: Optional[float] = None
    unloading: bool = False
    gone: asyncio.Event = field(default_factory=asyncio.Event)
    extra: dict = field(default_factory=dict)  # per-engine parts owned by the app (its HTTP client)

    @property
    def reserved(self) -> int:
        return max(self.estimate, self.measured)

    def snapshot(self) -> dict:
        sup = self.supervisor.snapshot()
        now = time.time()
        return {
            "model": self.name, "path": str(self.path), "state": "unloading" if self.unloading else sup["state"],
            "reason": sup["reason"], "pid": sup["pid"], "port": sup["port"], "threads": self.threads,
            "leases": self.leases, "pinned": self.pinned, "keep_alive_s": self.keep_alive,
            "estimate_bytes": self.estimate, "measured_bytes": self.measured or None,
            "loaded_at": self.loaded_at, "last_used": self.last_used,
            "expires_in_s": round(self.expires_at - now, 1) if self.expires_at else None,
            "restarts": sup["restarts"], "crashes": sup.get("crashes", 0), "last_exit": sup["last_exit"], "uptime_s": sup["uptime_s"],
            "degraded": sup.get("degraded"), "lingering": sup.get("lingering", []),
        }


class EnginePool:
    """Owns every engine. `lease()` for requests; `load`/`unload` for users; read `engines()`/`snapshot()`.

    `make_engine(name, path)` builds an Engine whose supervisor is not started yet; `estimate(path)` is
    the memory a load of `path` is expected to take and `measure(engine)` what a ready engine really holds
    (both may block: they run in a thread). Factories are injected so the scheduling can be tested fast.
    """

    def __init__(self, make_engine: Callable[[str, Path], Engine], estimate: Callable[[Path], int],
                 measure: Callable[[Engine], int], *, budget: int, gate: ComputeGate,
                 wait_timeout: float, max_waiting: int,
                 on_event: Optional[Callable[[str, Engine], None]] = None,
                 extra_room: Callable[[], int] = lambda: 0):
        self._make_engine = make_engine
        self._estimate = estimate
        self._measure = measure
        self.budget = budget
        self.gate = gate
        self.wait_timeout = wait_timeout
        self.max_waiting = max_waiting
        self._on_event = on_event or (lambda event, engine: None)
        self._extra_room = extra_room  # memory beyond this machine's (RPC workers that answer)
        self._engines: dict[Path, Engine] = {}
        self._loading: dict[Path, asyncio.Future] = {}
        self._changed = asyncio.Event()  # set (and replaced) when leases end or engines go: waiters re-check
        self._watchers = 0  # coroutines waiting on _changed: without any, a release notifies nobody (hot path)
        self.max_admitted: Optional[int] = None  # request leases held at once (None: no limit)
        self.admitted = 0  # request leases held now: being served, or waiting for an engine or the cores
        self._sweep: Optional[asyncio.TimerHandle] = None  # the keep-alive timer, set for the earliest expiry
        self._sweep_at = 0.0
        self._tasks: set[asyncio.Task] = set()
        self.waiting_for_room = 0
        self.closed = False
        self.measured_by_path: dict[Path, int] = {}  # what each model really took last time it ran

    # ------------------------------------------------------------------ reading

    def engines(self) -> list[Engine]:
        return list(self._engines.values())

    def loading(self) -> list[Path]:
        """Models whose load has begun but whose engine does not exist yet (checking the budget)."""
        return [path for path in self._loading if path not in self._engines]

    def get(self, path: Path) -> Optional[Engine]:
        return self._engines.get(Path(path))

    def room(self) -> int:
        """The memory budget, plus what RPC workers report free (their share of a model is not ours)."""
        return self.budget + self._extra_room()

    def used(self) -> int:
        return sum(engine.reserved for engine in self.engines())  # a copy: status reads it from a thread

    def snapshot(self) -> dict:
        return {"budget_bytes": self.budget, "reserved_bytes": self.used(), "waiting_for_memory": self.waiting_for_room,
                "compute": self.gate.snapshot(), "engines": [e.snapshot() for e in self._engines.values()]}

    # ------------------------------------------------------------------ requests

    def lease(self, name: str, path: Path, *, keep_alive: object = UNSET, ready_timeout: Optional[float] = None,
              request: bool = True) -> "Lease":
        """`async with pool.lease(...) as engine`: hold the engine serving `path` (loading it if needed)
        until the block ends. A `request` lease is admitted (Overloaded past `max_admitted`) and counts as
        work in flight on the engine once the compute gate let it in. Raises EngineUnavailable,
        ModelTooLarge, Overloaded."""
        return Lease(self, name, Path(path), keep_alive, self.wait_timeout if ready_timeout is None else ready_timeout,
                     request)

    async def _acquire(self, name: str, path: Path) -> Engine:
        """The engine for `path` with one more lease on it; loads it once for concurrent callers."""
        while True:
            if self.closed:
                raise EngineUnavailable("the agent is shutting down", EngineState.STOPPING, None)
            engine = self._engines.get(path)
            if engine is not None and engine.unloading:
                await engine.gone.wait()  # unloading waits for its leases, then we load it again
                continue
            if engine is not None:
                engine.leases += 1
                self._disarm(engine)
                return engine
            loading = self._loading.get(path)
            if loading is not None:
                await asyncio.shield(loading)
                continue
            loading = asyncio.get_running_loop().create_future()
            self._loading[path] = loading
            try:
                engine = await self._load(name, path)
                engine.leases += 1
                return engine
            finally:
                del self._loading[path]
                if not loading.done():
                    loading.set_result(None)

    def _release(self, engine: Engine) -> None:
        engine.leases -= 1
        engine.last_used = time.time()
        if engine.leases == 0:
            self._arm(engine)
            self._notify_room()

    # ------------------------------------------------------------------ loading and unloading

    async def load(self, name: str, path: Path, *, pin: bool = False, keep_alive: object = UNSET) -> Engine:
        """Load (or keep) the engine for `path` and wait until it is ready; `pin` keeps it resident."""
        async with self.lease(name, path, keep_alive=keep_alive, request=False) as engine:
            if pin:
                engine.pinned = True
            return engine

    async def _load(self, name: str, path: Path) -> Engine:
        estimate = max(await asyncio.to_thread(self._estimate, path), self.measured_by_path.get(path, 0))
        if estimate > self.room():
            raise ModelTooLarge(name, estimate, self.room())
        await self._make_room(estimate, name)
        engine = self._make_engine(name, path)
        engine.estimate = max(engine.estimate, estimate)
        self._engines[path] = engine
        engine.supervisor.start(path)
        self._on_event("load", engine)
        log.info("loading %s (estimated %s; %s of %s budget in use)", name, format_bytes(engine.estimate),
                 format_bytes(self.used()), format_bytes(self.budget))
        return engine

    async def _make_room(self, need: int, name: str) -> None:
        """Evict idle engines until `need` fits; else wait for leases to end (bounded)."""
        deadline = asyncio.get_running_loop().time() + self.wait_timeout
        waiting = False
        try:
            while self.used() + need > self.room():
                victim = self._eviction_candidate()
                if victim is not None:
                    await self.unload(victim.path, reason="evicted")
                    continue
                if not waiting:
                    if self.waiting_for_room >= self.max_waiting:
                        raise EngineUnavailable(f"no memory for {name!r} now and too many loads waiting; retry "
                                                "shortly", EngineState.STARTING, 5)
                    waiting = True
                    self.waiting_for_room += 1
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    raise EngineUnavailable(
                        f"no memory for {name!r} (needs {format_bytes(need)}; {format_bytes(self.used())} of the "
                        f"{format_bytes(self.room())} budget is held by engines serving requests); retry shortly",
                        EngineState.STARTING, 5)
                await self._wait_change(remaining)
        finally:
            if waiting:
                self.waiting_for_room -= 1

    def _eviction_candidate(self) -> Optional[Engine]:
        idle = [e for e in self._engines.values() if e.leases == 0 and not e.pinned and not e.unloading]
        return min(idle, key=lambda e: e.last_used) if idle else None

    def _notify_room(self) -> None:
        if self._watchers:
            changed, self._changed = self._changed, asyncio.Event()
            changed.set()

    async def _wait_change(self, timeout: Optional[float] = None) -> None:
        """Until a lease ends or an engine goes (or `timeout` passes)."""
        self._watchers += 1
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        finally:
            self._watchers -= 1

    async def unload(self, path: Path, *, reason: str = "unload") -> bool:
        """Stop the engine for `path` once its leases have ended; False when it was not loaded."""
        engine = self._engines.get(Path(path))
        if engine is None:
            return False
        if engine.unloading:
            await engine.gone.wait()
            return True
        engine.unloading = True
        self._disarm(engine)
        log.info("unloading %s (%s)%s", engine.name, reason,
                 f": waiting for {engine.leases} request(s)" if engine.leases else "")
        while engine.leases > 0:
            await self._wait_change()
        self._remember(engine)
        try:
            await engine.supervisor.stop()
        finally:
            self._engines.pop(engine.path, None)
            engine.gone.set()
            self._on_event(reason, engine)
            self._notify_room()
        return True

    async def stop(self) -> None:
        """Stop every engine now (agent shutdown: in-flight requests have had their grace period)."""
        self.closed = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        engines = list(self._engines.values())
        for engine in engines:
            self._disarm(engine)
        await asyncio.gather(*(e.supervisor.stop() for e in engines), return_exceptions=True)
        for engine in engines:
            self._engines.pop(engine.path, None)
            engine.gone.set()
            self._on_event("stop", engine)

    # ------------------------------------------------------------------ memory and expiry

    async def refresh(self) -> None:
        """Measure what each ready engine holds (its RSS, plus GPU memory), for the budget and status.

        Measuring blocks (a process read; `nvidia-smi` on a GPU build, up to seconds), so it runs in a
        thread and only reads; what it found is written here, on the event loop, like every other change
        to an engine. An engine unloaded while it was measured keeps what it had."""
        ready = [e for e in self._engines.values() if e.supervisor.state is EngineState.READY]
        if not ready:
            return
        measured = await asyncio.to_thread(lambda: [self._measure(engine) for engine in ready])
        for engine, amount in zip(ready, measured):
            if self._engines.get(engine.path) is engine:
                engine.measured = amount
                self._remember(engine)

    def _remember(self, engine: Engine) -> None:
        if engine.measured:
            self.measured_by_path[engine.path] = max(engine.measured, self.measured_by_path.get(engine.path, 0))

    def _arm(self, engine: Engine) -> None:
        """The last lease ended: the engine expires `keep_alive` seconds from now (the sweep unloads it)."""
        if engine.pinned or engine.keep_alive is None or engine.unloading:
            engine.expires_at = None
            return
        engine.expires_at = time.time() + max(0.0, engine.keep_alive)
        if self._sweep is None or engine.expires_at < self._sweep_at:
            self._schedule_sweep(engine.expires_at)

    @staticmethod
    def _disarm(engine: Engine) -> None:
        engine.expires_at = None

    def _schedule_sweep(self, at: float) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
        loop = asyncio.get_running_loop()
        self._sweep_at = at
        self._sweep = loop.call_later(max(0.0, at - time.time()), self._sweep_expired)

    def _sweep_expired(self) -> None:
        """Unload every idle engine whose expiry has passed; set the timer again for the next one."""
        self._sweep = None
        now, upcoming = time.time(), None
        for engine in list(self._engines.values()):
            at = engine.expires_at
            if at is None or engine.leases or engine.pinned:
                continue
            if at <= now:
                engine.expires_at = None
                task = asyncio.get_running_loop().create_task(self._expire(engine))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            elif upcoming is None or at < upcoming:
                upcoming = at
        if upcoming is not None:
            self._schedule_sweep(upcoming)

    async def _expire(self, engine: Engine) -> None:
        if self._engines.get(engine.path) is engine and engine.leases == 0 and not engine.pinned:
            await self.unload(engine.path, reason="expired")


class Lease:
    """One hold on an engine (see `EnginePool.lease`), and the one owner of a request's accounting."""

    __slots__ = ("_pool", "_name", "_path", "_keep_alive", "_ready_timeout", "_request", "_engine")

    def __init__(self, pool: EnginePool, name: str, path: Path, keep_alive: object, ready_timeout: float,
                 request: bool):
        self._pool, self._name, self._path = pool, name, path
        self._keep_alive, self._ready_timeout, self._request = keep_alive, ready_timeout, request
        self._engine: Optional[Engine] = None

    async def __aenter__(self) -> Engine:
        pool = self._pool
        if self._request:
            if pool.max_admitted is not None and pool.admitted >= pool.max_admitted:
                raise Overloaded()
            pool.admitted += 1
        try:
            engine = await pool._acquire(self._name, self._path)
        except BaseException:
            self._leave()
            raise
        try:
            if self._keep_alive is not UNSET:
                engine.keep_alive = self._keep_alive  # Ollama's rule: the last request's keep_alive applies
            if engine.supervisor.state is not EngineState.READY:
                await engine.supervisor.wait_ready(self._ready_timeout)
            await pool.gate.enter(engine, engine.threads)
        except BaseException:
            pool._release(engine)
            self._leave()
            raise
        if self._request:
            engine.supervisor.work_begin()
        self._engine = engine
        return engine

    async def __aexit__(self, *exc: object) -> None:
        engine, pool = self._engine, self._pool
        if self._request:
            engine.supervisor.work_end()
        pool.gate.leave(engine)
        pool._release(engine)
        self._leave()

    def _leave(self) -> None:
        if self._request:
            self._pool.admitted -= 1
