"""Fast tests of the supervisor's state machine: start and readiness, crash restarts with backoff, giving
up (failed) and leaving it, hangs, stalls with requests in flight, and a stop that must escalate.

The engine here is the stand-in (`tests/standin_engine.py`, a real process on a real socket that answers
like llama-server), so every test runs in a second or two; what depends on the real llama-server (a real
wedge, real crashes under load) stays end to end in test_faults.py and test_stall.py.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import aiohttp
import psutil
import pytest

from conftest import wait_until
from slp.engine.process import EngineCommand
from slp.engine.supervisor import BACKOFF_FIRST, EngineState, EngineUnavailable, Supervisor

STANDIN = Path(__file__).resolve().parent / "standin_engine.py"
KEY = "standin-key"


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


class Harness:
    """A real Supervisor whose command runs the stand-in; `env` is read at each spawn (a test can change
    how the next engine behaves), `changes` and `restarts` record what the supervisor reported."""

    def __init__(self, tmp_path: Path, http: aiohttp.ClientSession, **timings: float):
        self.env: dict[str, str] = {}
        self.log = tmp_path / "engine.log"
        self.changes: list[tuple[EngineState, str]] = []
        self.restarts: list[str] = []
        self.http = http
        options = dict(start_timeout=10.0, health_interval=0.1, health_timeout=0.5, stop_grace=2.0,
                       max_restarts=3, restart_window=60.0, stall_timeout=30.0)
        options.update(timings)
        self.supervisor = Supervisor(self.command, http, log_path=self.log, name="standin",
                                     on_change=lambda state, reason: self.changes.append((state, reason)),
                                     on_restart=self.restarts.append, **options)

    def command(self, model_path: Path, port: int) -> EngineCommand:
        argv = [sys.executable, str(STANDIN), "--model", str(model_path), "--host", "127.0.0.1",
                "--port", str(port), "--ctx-size", "4096", "--no-webui"]
        return EngineCommand(argv=argv, env={"LLAMA_API_KEY": KEY, **self.env}, log_path=self.log)

    def states(self) -> list[EngineState]:
        return [state for state, _ in self.changes]

    async def ready(self, timeout: float = 20) -> int:
        await self.supervisor.wait_ready(timeout)
        return self.supervisor.pid

    def post(self, body: dict):
        return self.http.post(f"{self.supervisor.base_url}/v1/chat/completions", json=body,
                              headers={"Authorization": f"Bearer {KEY}"})


@pytest.fixture
async def harness(tmp_path):
    made: list[Harness] = []
    async with aiohttp.ClientSession() as http:
        def make(**timings: float) -> Harness:
            made.append(Harness(tmp_path, http, **timings))
            return made[-1]

        yield make
        for h in made:
            await h.supervisor.stop()


async def test_start_is_ready_once_health_answers_and_stop_ends_the_process(harness):
    h = harness()
    h.env["STANDIN_LOAD_S"] = "0.5"  # /health says "Loading model" (503) for half a second
    h.supervisor.start(Path("model.gguf"))
    h.supervisor.start(Path("model.gguf"))  # idempotent: still one engine
    await wait_until(lambda: h.supervisor.pid, 10, "a process")
    assert h.supervisor.state is EngineState.STARTING, "not ready while /health answers 503"
    pid = await h.ready()
    assert h.states() == [EngineState.STARTING, EngineState.READY]
    async with h.post({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}) as reply:
        assert reply.status == 200 and (await reply.json())["usage"]["completion_tokens"] == 2
    snap = h.supervisor.snapshot()
    assert snap["state"] == "ready" and snap["pid"] == pid and snap["restarts"] == 0 and snap["crashes"] == 0
    await h.supervisor.stop()
    assert gone(pid) and h.supervisor.state is EngineState.STOPPED
    assert h.states()[-2:] == [EngineState.STOPPING, EngineState.STOPPED]
    with pytest.raises(EngineUnavailable) as caught:
        await h.supervisor.wait_ready(1)
    assert caught.value.retry_after is None, "a stopped engine: waiting will not help"


async def test_a_crash_is_restarted_with_exponential_backoff_and_counted(harness):
    h = harness()
    h.supervisor.start(Path("model.gguf"))
    first = await h.ready()
    delays = []
    for expected in (BACKOFF_FIRST, 2 * BACKOFF_FIRST):
        pid = h.supervisor.pid
        os.kill(pid, signal.SIGKILL)
        await wait_until(lambda: h.supervisor.pid not in (None, pid) and h.supervisor.state is EngineState.READY, 20,
                    "the replacement engine")
        history = list(h.supervisor.history)
        waiting = [i for i, e in enumerate(history) if "restarting in" in e["reason"]][-1]
        assert history[waiting]["reason"].endswith(f"restarting in {expected:.2f}s"), history[waiting]
        assert history[waiting + 1]["reason"].startswith("starting"), history[waiting + 1]
        delays.append(history[waiting + 1]["at"] - history[waiting]["at"])
    assert delays[0] >= BACKOFF_FIRST * 0.9 and delays[1] >= 2 * BACKOFF_FIRST * 0.9, delays
    snap = h.supervisor.snapshot()
    assert snap["pid"] != first and snap["crashes"] == 2 and snap["restarts"] == 2
    assert snap["last_exit"]["reason"] == "crash" and snap["last_exit"]["signal"] == "SIGKILL"
    assert h.restarts == ["crash", "crash"]


async def test_too_many_crashes_in_the_window_is_failed_until_asked_again(harness):
    h = harness(max_restarts=2)
    h.env["STANDIN_EXIT_AT_START"] = "3"  # every engine exits at once, like a llama-server given a bad model
    h.supervisor.start(Path("model.gguf"))
    with pytest.raises(EngineUnavailable) as caught:
        await h.supervisor.wait_ready(20)
    assert caught.value.state is EngineState.FAILED and caught.value.retry_after is None
    snap = h.supervisor.snapshot()
    assert snap["crashes"] == 3, "max_restarts=2: the third crash in the window gives up"
    assert snap["restarts"] == 2, "two restarts followed crashes; giving up is not a restart"
    assert "giving up" in snap["reason"] and "3 failures" in snap["reason"]
    assert snap["last_exit"]["code"] == 3 and snap["last_exit"]["reason"] == "crash"
    assert any("exiting at start with code 3" in line for line in snap["last_exit"]["log_tail"])
    assert h.states().count(EngineState.FAILED) == 1 and h.states()[-1] is EngineState.FAILED

    del h.env["STANDIN_EXIT_AT_START"]  # fixed; a restart leaves failed
    h.supervisor.restart()
    assert h.supervisor.state is EngineState.FAILED  # the owner has not woken yet...
    await h.supervisor.wait_ready(20)  # ...and a caller need not check: the restart asked for is waited for
    assert h.supervisor.state is EngineState.READY
    assert h.restarts == ["crash", "crash"], "leaving failed starts an engine; none was replaced"


async def test_not_healthy_within_start_timeout_is_a_start_timeout(harness):
    h = harness(start_timeout=0.5, max_restarts=0)
    h.env["STANDIN_LOAD_S"] = "60"
    h.supervisor.start(Path("model.gguf"))
    with pytest.raises(EngineUnavailable):
        await h.supervisor.wait_ready(20)
    assert h.supervisor.state is EngineState.FAILED
    assert h.supervisor.last_exit.reason == "start-timeout"
    assert "not healthy within 0.5s" in h.supervisor.last_exit.detail


async def test_a_process_that_stops_answering_is_hung_and_replaced(harness):
    h = harness(health_timeout=0.2)
    h.supervisor.start(Path("model.gguf"))
    pid = await h.ready()
    os.kill(pid, signal.SIGSTOP)
    try:
        await wait_until(lambda: h.supervisor.last_exit is not None, 10, "the watchdog to call it hung")
    finally:
        if not gone(pid):
            os.kill(pid, signal.SIGKILL)
    assert h.supervisor.last_exit.reason == "hang" and "health probes" in h.supervisor.last_exit.detail
    assert await h.ready() != pid
    assert gone(pid) and h.restarts == ["hang"]


async def test_requests_in_flight_and_no_bytes_is_a_stall(harness):
    h = harness(stall_timeout=0.5)
    h.supervisor.start(Path("model.gguf"))
    pid = await h.ready()
    h.supervisor.work_begin()  # as the proxy does for each request it sends
    started = time.monotonic()
    try:
        async with h.post({"messages": [{"role": "user", "content": "hi"}], "stream": True, "max_tokens": 50,
                           "standin": {"stall_after": 2}}) as reply:
            assert reply.status == 200
            with pytest.raises(aiohttp.ClientPayloadError):  # the stalled engine was killed under us
                async for _ in reply.content.iter_any():
                    h.supervisor.progress()
    finally:
        h.supervisor.work_end()
    took = time.monotonic() - started
    await h.supervisor.settle(2)  # the stream broke as the watchdog killed the engine; let it record why
    assert h.supervisor.last_exit.reason == "stall" and h.supervisor.stalls == 1
    assert "1 request(s) in flight" in h.supervisor.last_exit.detail
    assert 0.5 <= took < 5, f"caught after the stall timeout and a few watchdog rounds, not later ({took:.1f}s)"
    assert await h.ready() != pid and h.restarts == ["stall"] and h.supervisor.crashes == 1


async def test_a_slow_engine_that_still_delivers_is_not_a_stall(harness):
    h = harness(stall_timeout=0.5)
    h.supervisor.start(Path("model.gguf"))
    pid = await h.ready()
    h.supervisor.work_begin()
    lines: list[bytes] = []
    try:  # 12 tokens 0.2 s apart: 2.4 s in all, far past the stall timeout, but bytes keep coming
        async with h.post({"messages": [{"role": "user", "content": "hi"}], "stream": True, "max_tokens": 12,
                           "standin": {"token_delay": 0.2}}) as reply:
            async for line in reply.content:
                h.supervisor.progress()
                if line.strip():
                    lines.append(line.strip())
    finally:
        h.supervisor.work_end()
    assert lines[-1] == b"data: [DONE]" and len(lines) == 15, "the stream ran to its end"
    assert h.supervisor.pid == pid and h.supervisor.stalls == 0 and h.supervisor.crashes == 0


async def test_stop_escalates_to_sigkill_when_sigterm_is_ignored(harness):
    h = harness(stop_grace=0.5)
    h.env["STANDIN_IGNORE_TERM"] = "1"
    h.supervisor.start(Path("model.gguf"))
    pid = await h.ready()
    started = time.monotonic()
    await h.supervisor.stop()
    took = time.monotonic() - started
    assert gone(pid)
    assert 0.5 <= took < 3, f"SIGTERM, the grace period, then SIGKILL ({took:.2f}s)"
    assert "SIGTERM ignored" in h.log.read_text()

    quick = harness(stop_grace=5)  # an engine that obeys SIGTERM does not wait out the grace period
    quick.supervisor.start(Path("model.gguf"))
    pid = await quick.ready()
    started = time.monotonic()
    await quick.supervisor.stop()
    assert gone(pid) and time.monotonic() - started < 2
    assert quick.supervisor.crashes == 0 and quick.restarts == [], "a stop is neither a crash nor a restart"


async def test_a_restart_on_purpose_is_a_restart_not_a_crash(harness):
    h = harness()
    h.supervisor.start(Path("model.gguf"))
    pid = await h.ready()
    h.supervisor.restart("config")
    await wait_until(lambda: h.supervisor.pid not in (None, pid) and h.supervisor.state is EngineState.READY, 20,
                "the new engine")
    assert gone(pid)
    snap = h.supervisor.snapshot()
    assert snap["restarts"] == 1 and snap["crashes"] == 0 and snap["last_exit"] is None
    assert h.restarts == ["config"]
    h.supervisor.use_model(Path("other.gguf"))
    await wait_until(lambda: h.supervisor.model_path == Path("other.gguf") and h.supervisor.state is EngineState.READY
                and h.supervisor.restarts == 2, 20, "the engine for the other model")
    assert h.restarts == ["config", "model"]
