"""The agent's RPC workers (`SLP_WORKERS`): which an engine gets at its start, which engines hold
which, which were lost, and what status shows.

- `select(addresses, holder)` runs before every engine (re)start (from the app's command factory): it
  probes the configured workers and returns those that answer the hello with a compatible protocol;
  the others are named in the log and in status. A worker this engine held before that no longer
  answers is recorded as lost, with why (connection refused, no answer, another protocol).
- A worker serves one client at a time (its accept loop is sequential), so a worker another running
  engine holds is neither probed (the probe would only wait in its accept queue) nor given to a second
  engine (whose start would hang on it). The workers no engine holds are probed every few seconds, so
  status shows them current and one that comes back is used at the next start.
- Worker loss: a worker that dies makes llama-server abort (the supervisor restarts it); one that stops
  answering (SIGSTOP, a wedged or vanished host) makes it wait forever, since RPC sockets have no
  timeouts, which the supervisor's progress watchdog (stall) ends. Either way the next start's `select`
  leaves the worker out, and `loss_note` lets the broken stream's `error` event name it.

A holder is the engine's supervisor (anything with `pid` and `name`): it holds its workers while its
process runs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any, Callable, Optional

from slp.worker.probe import DEFAULT_TIMEOUT, WorkerProbe, check_workers

log = logging.getLogger("slp.worker")

IDLE_PROBE_INTERVAL = 5.0  # seconds between probes of the workers no engine holds
LOSS_WAIT = 5.0  # how long a broken stream waits for the next pre-start check to name the lost worker


class WorkerPool:
    """One per agent. `select` is called by the command factory; `start()` runs the idle-probe monitor."""

    def __init__(self, timeout: float = DEFAULT_TIMEOUT):
        self.timeout = timeout
        self.addresses: list[str] = []
        self.probes: dict[str, WorkerProbe] = {}
        self.holders: dict[str, Any] = {}  # address -> the engine (supervisor) started with it
        self.losses: deque[dict] = deque(maxlen=20)
        self.lost_count: dict[str, int] = {}
        self.checks = 0  # pre-start checks so far
        self._checked: Optional[asyncio.Event] = None
        self._select_lock: Optional[asyncio.Lock] = None
        self._task: Optional[asyncio.Task] = None

    # ------------------------------------------------------------------ before each engine start

    def select(self, addresses: list[str], holder: Any) -> list[str]:
        """The workers `holder` (an engine about to start) may use: those of `addresses` that answer the
        hello with a compatible protocol and no other running engine holds, in the configured order.

        Blocks while probing (all at once: about `timeout` seconds at most, and only when a worker accepts
        but does not answer); an async command factory should await `select_async` instead."""
        to_probe, previous, taken = self._prepare(addresses, holder)
        return self._record(holder, check_workers(to_probe, self.timeout), previous, taken)

    async def select_async(self, addresses: list[str], holder: Any) -> list[str]:
        """`select` with the probing in a thread (the bookkeeping stays on the event loop). One at a time,
        so two engines starting together cannot both be given the same free worker."""
        if self._select_lock is None:
            self._select_lock = asyncio.Lock()
        async with self._select_lock:
            to_probe, previous, taken = self._prepare(addresses, holder)
            probes = await asyncio.to_thread(check_workers, to_probe, self.timeout)
            return self._record(holder, probes, previous, taken)

    def _prepare(self, addresses: list[str], holder: Any) -> tuple[list[str], list[str], dict[str, Any]]:
        """Forget what `holder` held; return what to probe, what it held (to spot losses), and the workers
        other running engines hold (not probed, not given)."""
        self.addresses = list(addresses)
        previous = [a for a, h in self.holders.items() if h is holder]
        for address in previous:
            del self.holders[address]
        taken = {a: h for a, h in self.holders.items() if _running(h)}
        return [a for a in self.addresses if a not in taken], previous, taken

    def _record(self, holder: Any, probes: list[WorkerProbe], previous: list[str],
                taken: dict[str, Any]) -> list[str]:
        for probe in probes:
            self.probes[probe.address] = probe
            if probe.ok:
                continue
            if probe.address in previous:
                self.losses.append({"address": probe.address, "state": probe.state, "detail": probe.detail,
                                    "engine": _name(holder), "at": time.time()})
                self.lost_count[probe.address] = self.lost_count.get(probe.address, 0) + 1
                log.warning("worker %s lost by %s (%s): %s; it starts without it", probe.address, _name(holder),
                            probe.state, probe.detail)
            else:
                log.warning("worker %s not used (%s): %s", probe.address, probe.state, probe.detail)
        for address, other in taken.items():
            log.warning("worker %s not used by %s: %s holds it (a worker serves one engine at a time)",
                        address, _name(holder), _name(other))
        usable = [p.address for p in probes if p.ok]
        for address in usable:
            self.holders[address] = holder
        if self.addresses:
            log.info("%s starts with workers: %s", _name(holder), ", ".join(usable) or "none (local only)")
        self.checks += 1
        if self._checked is not None:
            checked, self._checked = self._checked, None
            checked.set()
        return usable

    # ------------------------------------------------------------------ what status and streams see

    def held(self) -> dict[str, Any]:
        """address -> holder, for the workers a running engine holds."""
        # A copy first: status reads this from a thread while the loop may be selecting.
        return {a: h for a, h in dict(self.holders).items() if _running(h)}

    def free_memory(self) -> int:
        """Bytes the configured workers that answer report free: room the memory budget gains, since an
        engine with workers offloads layers to them."""
        total = 0
        for address in self.addresses:
            probe = dict(self.probes).get(address)
            if probe is not None and probe.ok and probe.memory:
                total += probe.memory["free_bytes"]
        return total

    def snapshot(self) -> list[dict]:
        """One entry per configured worker: address, state, detail, rtt_ms, version, memory, engine.
        `state` is `in-use` for a worker an engine holds; its numbers are from that engine's pre-start check."""
        held = self.held()
        out = []
        for address in self.addresses:
            probe = dict(self.probes).get(address)
            entry = probe.to_dict() if probe else {"address": address, "state": "unknown",
                                                   "detail": "not checked yet", "rtt_ms": None, "memory": None}
            entry["engine"] = _name(held[address]) if address in held else None
            if address in held:
                entry["state"] = "in-use"
            out.append(entry)
        return out

    def losses_since(self, since: float, holder: Any = None) -> list[dict]:
        """Workers lost since `since` (epoch seconds), by `holder`'s engine when given; one entry each."""
        seen, out = set(), []
        for item in list(self.losses):
            if item["at"] >= since and item["address"] not in seen and (holder is None or
                                                                         item["engine"] == _name(holder)):
                seen.add(item["address"])
                out.append(item)
        return out

    async def loss_note(self, since: float, holder: Any, wait: float = LOSS_WAIT) -> Optional[str]:
        """Which workers `holder`'s engine lost since `since` (a stream's start), in words; None if none.

        When none is recorded yet, waits (up to `wait` seconds) for the next pre-start check: the engine's
        restart is what finds out which worker is gone. Returns at once for an engine without workers.
        (A check that ran between the failure and this call is missed, and then this waits `wait` for
        nothing; the proxy calls it as soon as the stream breaks, before the restart's backoff ends.)"""
        used = [a for a, h in self.holders.items() if h is holder]
        if not used and not self.losses_since(since, holder):
            return None
        if not self.losses_since(since, holder):
            if self._checked is None:
                self._checked = asyncio.Event()
            try:
                await asyncio.wait_for(self._checked.wait(), wait)
            except asyncio.TimeoutError:
                pass
        lost = self.losses_since(since, holder)
        if not lost:
            return None
        names = "; ".join(f"{item['address']} ({item['detail']})" for item in lost)
        rest = ", ".join(a for a, h in self.holders.items() if h is holder) or "none (local only)"
        return f"lost RPC worker {names}; the engine restarts with workers: {rest}"

    # ------------------------------------------------------------------ the monitor

    def start(self, addresses: Callable[[], list[str]]) -> None:
        """Start probing the workers no engine holds (idempotent); `addresses()` is read at each round, so
        a config reload applies at once."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(addresses), name="slp-worker-monitor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _run(self, addresses: Callable[[], list[str]]) -> None:
        while True:
            self.addresses = list(addresses())
            idle = [a for a in self.addresses if a not in self.held()]
            if idle:
                try:
                    probes = await asyncio.to_thread(check_workers, idle, self.timeout)
                except Exception:  # noqa: BLE001 - the monitor must outlive any one probe
                    log.exception("worker probe failed")
                    probes = []
                held = self.held()
                for probe in probes:
                    if probe.address not in held:  # an engine may have taken it meanwhile
                        self.probes[probe.address] = probe
            await asyncio.sleep(IDLE_PROBE_INTERVAL)


def _running(holder: Any) -> bool:
    return bool(getattr(holder, "pid", None))


def _name(holder: Any) -> str:
    return str(getattr(holder, "name", None) or "engine")
