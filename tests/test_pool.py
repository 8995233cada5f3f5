"""Fast tests of the engine pool's scheduling (leases, budget, eviction, keep-alive, the compute gate).

They run against `StandInSupervisor`, a stand-in for the real supervisor that starts and stops at once
and runs no process: scheduling is logic, and these run in well under a second. Everything that depends
on real engines (processes, memory, streams) is tested end to end in test_several_models.py.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from conftest import wait_until
from slp.engine.budget import ComputeGate, parse_budget
from slp.engine.pool import Engine, EnginePool, ModelTooLarge, Overloaded, parse_keep_alive
from slp.engine.supervisor import EngineState, EngineUnavailable

MB = 1024 * 1024


class StandInSupervisor:
    """Stand-in (not the real supervisor): ready `ready_after` seconds after start, no process."""

    def __init__(self, ready_after: float = 0.0):
        self.state = EngineState.STOPPED
        self.pid = None
        self.starts = 0
        self.ready_after = ready_after
        self._ready = asyncio.Event()
        self.in_flight = 0

    def work_begin(self) -> None:
        self.in_flight += 1

    def work_end(self) -> None:
        self.in_flight -= 1

    def start(self, path: Path) -> None:
        self.starts += 1
        self.state = EngineState.STARTING
        asyncio.get_running_loop().call_later(self.ready_after, self._become_ready)

    def _become_ready(self) -> None:
        if self.state is EngineState.STARTING:
            self.state = EngineState.READY
            self._ready.set()

    async def wait_ready(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except asyncio.TimeoutError:
            raise EngineUnavailable("not ready", self.state, 2) from None

    async def stop(self) -> None:
        self.state = EngineState.STOPPED

    def snapshot(self) -> dict:
        return {"state": self.state.value, "reason": "", "pid": None, "port": None, "restarts": 0, "crashes": 0,
                "last_exit": None, "uptime_s": None}


def make_pool(sizes: dict[str, int], budget: int, *, keep_alive=None, wait_timeout=2.0, max_waiting=4,
              ready_after=0.0, measure=lambda engine: 0) -> tuple[EnginePool, list[str]]:
    made: list[str] = []

    def make_engine(name: str, path: Path) -> Engine:
        made.append(name)
        return Engine(name=name, path=path, supervisor=StandInSupervisor(ready_after), threads=1, estimate=0,
                      keep_alive=keep_alive)

    pool = EnginePool(make_engine, lambda path: sizes[path.name], measure, budget=budget,
                      gate=ComputeGate(2), wait_timeout=wait_timeout, max_waiting=max_waiting)
    return pool, made


async def test_concurrent_first_requests_load_once():
    pool, made = make_pool({"a": 10 * MB}, 100 * MB, ready_after=0.05)

    async def use():
        async with pool.lease("a", Path("a")) as engine:
            return engine

    engines = await asyncio.gather(*(use() for _ in range(8)))
    assert made == ["a"], "eight concurrent first requests started one engine"
    assert len({id(e) for e in engines}) == 1
    assert engines[0].supervisor.starts == 1


async def test_idle_engines_are_evicted_least_recently_used_first_and_leased_ones_never():
    pool, made = make_pool({"a": 40 * MB, "b": 40 * MB, "c": 40 * MB}, 100 * MB)
    async with pool.lease("a", Path("a")):
        pass
    await asyncio.sleep(0.01)
    async with pool.lease("b", Path("b")):
        pass
    async with pool.lease("a", Path("a")):  # a is now the most recently used
        pass
    async with pool.lease("c", Path("c")):
        loaded = {e.name for e in pool.engines()}
    assert loaded == {"a", "c"}, "b, the least recently used idle engine, made room for c"

    pool2, _ = make_pool({"a": 60 * MB, "b": 60 * MB}, 100 * MB, wait_timeout=0.3)
    async with pool2.lease("a", Path("a")):
        with pytest.raises(EngineUnavailable) as caught:
            async with pool2.lease("b", Path("b")):
                pass
        assert caught.value.retry_after, "no room while a is leased: a 503 with Retry-After, after waiting"
        assert pool2.get(Path("a")).supervisor.state is EngineState.READY, "the leased engine was not evicted"


async def test_a_load_waits_for_a_lease_to_end_then_evicts():
    pool, _ = make_pool({"a": 60 * MB, "b": 60 * MB}, 100 * MB, wait_timeout=5)
    release = asyncio.Event()

    async def hold_a():
        async with pool.lease("a", Path("a")):
            await release.wait()

    holder = asyncio.create_task(hold_a())
    await wait_until(lambda: pool.get(Path("a")) is not None, 2, "a to be leased")
    waiter = asyncio.create_task(pool.load("b", Path("b")))
    await wait_until(lambda: pool.waiting_for_room == 1, 2, "b to wait for room")
    assert not waiter.done(), "b waits while a serves a request"
    release.set()
    await holder
    engine = await asyncio.wait_for(waiter, 2)
    assert engine.name == "b" and [e.name for e in pool.engines()] == ["b"]


async def test_a_model_larger_than_the_budget_is_refused_at_once_with_the_numbers():
    pool, made = make_pool({"big": 300 * MB}, 100 * MB)
    with pytest.raises(ModelTooLarge) as caught:
        async with pool.lease("big", Path("big")):
            pass
    assert "300.0 MiB" in str(caught.value) and "100.0 MiB" in str(caught.value)
    assert made == [], "nothing was started"


async def test_keep_alive_zero_unloads_after_the_reply_and_a_new_request_reloads():
    pool, made = make_pool({"a": 10 * MB}, 100 * MB)
    async with pool.lease("a", Path("a"), keep_alive=0.0):
        assert pool.get(Path("a")) is not None
    await wait_until(lambda: pool.get(Path("a")) is None, 1, "keep_alive 0: unloaded once the last lease ended")
    async with pool.lease("a", Path("a")):
        pass
    assert made == ["a", "a"]


async def test_keep_alive_expiry_is_disarmed_while_leased_and_pinned_engines_stay():
    pool, _ = make_pool({"a": 10 * MB, "b": 10 * MB}, 100 * MB, keep_alive=0.1)
    async with pool.lease("a", Path("a")):
        await asyncio.sleep(0.2)
        assert pool.get(Path("a")) is not None, "no expiry while a request holds it"
    await pool.load("b", Path("b"), pin=True)
    await wait_until(lambda: pool.get(Path("a")) is None, 2, "a to expire after keep_alive once idle")
    await asyncio.sleep(0.2)  # b's keep_alive, twice over
    assert pool.get(Path("b")) is not None, "pinned engines do not expire"


async def test_one_timer_expires_each_engine_at_its_own_time():
    """The pool's single keep-alive timer is set for the earliest expiry and set again after each sweep:
    a short keep-alive set after a long one still expires first, and the long one expires later."""
    pool, _ = make_pool({"a": 10 * MB, "b": 10 * MB}, 100 * MB)
    async with pool.lease("a", Path("a"), keep_alive=0.6):
        pass
    async with pool.lease("b", Path("b"), keep_alive=0.1):
        pass
    await wait_until(lambda: pool.get(Path("b")) is None, 2, "b (0.1 s) to expire")
    assert pool.get(Path("a")) is not None, "a's keep-alive (0.6 s) has not passed"
    await wait_until(lambda: pool.get(Path("a")) is None, 2, "a to expire after its own keep-alive")


async def test_the_lease_owns_a_requests_accounting():
    """Admission (agent-wide, a refusal past max_admitted), the engine's lease count, the compute gate and
    the supervisor's in-flight count: taken together on entry, all given back on exit, an error's too.
    A load (not a request) is neither admitted nor work in flight."""
    pool, _ = make_pool({"a": 10 * MB}, 100 * MB)
    pool.max_admitted = 1
    async with pool.lease("a", Path("a")) as engine:
        assert (pool.admitted, engine.leases, engine.supervisor.in_flight) == (1, 1, 1)
        assert pool.gate.snapshot()["threads_in_use"] == 1
        with pytest.raises(Overloaded):
            async with pool.lease("a", Path("a")):
                pass
        assert (pool.admitted, engine.leases) == (1, 1), "a refused request holds nothing"
        await pool.load("a", Path("a"))  # loads are never refused: they are not requests
    assert (pool.admitted, engine.leases, engine.supervisor.in_flight) == (0, 0, 0)
    assert pool.gate.snapshot()["threads_in_use"] == 0
    with pytest.raises(RuntimeError):
        async with pool.lease("a", Path("a")):
            raise RuntimeError("the request failed")
    assert (pool.admitted, engine.leases, engine.supervisor.in_flight) == (0, 0, 0)


async def test_unload_waits_for_leases_and_a_request_meanwhile_waits_for_the_reload():
    pool, made = make_pool({"a": 10 * MB}, 100 * MB)
    release = asyncio.Event()
    first_done = asyncio.Event()

    async def long_request():
        async with pool.lease("a", Path("a")) as engine:
            await release.wait()
            assert engine.supervisor.state is EngineState.READY, "not stopped under a lease"
        first_done.set()

    holder = asyncio.create_task(long_request())
    await wait_until(lambda: pool.get(Path("a")) is not None and pool.get(Path("a")).leases == 1, 2, "the lease")
    unloading = asyncio.create_task(pool.unload(Path("a")))
    await wait_until(lambda: pool.get(Path("a")).unloading, 2, "the unload to begin")
    assert not unloading.done(), "unload waits for the lease (and long_request sees its engine still ready)"
    late = asyncio.create_task(pool.load("a", Path("a")))
    await asyncio.sleep(0.02)
    assert not late.done(), "a request for a model being unloaded waits instead of failing"
    release.set()
    await holder
    assert await unloading is True
    engine = await asyncio.wait_for(late, 2)
    assert engine.supervisor.state is EngineState.READY and made == ["a", "a"]


async def test_refresh_measures_in_a_thread_and_writes_the_engines_on_the_loop():
    """Measuring blocks (nvidia-smi on a GPU build): the loop must keep running while it does, and the
    results land on the engines (and the pool's memory of each model) afterwards."""
    loop_ran = threading.Event()
    seen: dict[str, object] = {}

    def measure(engine: Engine) -> int:
        seen["in_a_thread"] = threading.current_thread() is not threading.main_thread()
        seen["loop_ran"] = loop_ran.wait(5)  # set by the test on the loop: only while the loop is free
        return 42 * MB

    pool, _ = make_pool({"a": 10 * MB}, 100 * MB, measure=measure)
    async with pool.lease("a", Path("a")):
        pass
    refreshing = asyncio.create_task(pool.refresh())
    await wait_until(lambda: "in_a_thread" in seen, 5, "the measuring to begin")
    loop_ran.set()
    await refreshing
    assert seen == {"in_a_thread": True, "loop_ran": True}, seen
    assert pool.get(Path("a")).measured == 42 * MB and pool.measured_by_path[Path("a")] == 42 * MB
    assert pool.used() == 42 * MB, "the measured memory (more than the estimate) counts against the budget"


async def test_compute_gate_fifo_and_threads():
    gate = ComputeGate(2)
    a, b = object(), object()
    await gate.enter(a, 2)
    await gate.enter(a, 2)  # joins a's batch: no more threads
    order: list[str] = []

    async def enter(engine, name):
        await gate.enter(engine, 2)
        order.append(name)

    wait_b = asyncio.create_task(enter(b, "b"))
    await wait_until(lambda: gate.snapshot()["waiting"] == 1, 1, "b to queue")
    wait_a = asyncio.create_task(enter(a, "a-late"))
    await wait_until(lambda: gate.snapshot()["waiting"] == 2, 1, "a-late to queue")
    assert order == [], "a newcomer for a busy engine queues behind b"
    gate.leave(a)
    gate.leave(a)
    await wait_until(lambda: order, 1, "someone to compute once a's threads are free")
    assert order == ["b"], "b computes once a's threads are free"
    gate.leave(b)
    await wait_until(lambda: len(order) == 2, 1, "a-late to compute")
    assert order == ["b", "a-late"]
    gate.leave(a)
    assert gate.threads_in_use() == 0
    await asyncio.gather(wait_a, wait_b)

    one_each = ComputeGate(2)
    await one_each.enter(a, 1)
    await asyncio.wait_for(one_each.enter(b, 1), 0.1)  # 1 + 1 threads fit in 2 cores: both compute at once


def test_parse_keep_alive_and_budget():
    assert parse_keep_alive("10m") == 600 and parse_keep_alive(0) == 0 and parse_keep_alive("-1") is None
    assert parse_keep_alive("1h30m") == 5400 and parse_keep_alive("45s") == 45 and parse_keep_alive(-5) is None
    for bad in ("soon", "10x", True, None, "1m2"):
        with pytest.raises(ValueError):
            parse_keep_alive(bad)
    assert parse_budget("8GiB", 1) == 8 * 1024**3 and parse_budget("6GB", 1) == 6 * 1000**3
    assert parse_budget("50%", 1000) == 500 and parse_budget(None, 1000) == 750
    for bad in ("lots", "0%", "120%"):
        with pytest.raises(ValueError):
            parse_budget(bad, 1000)
