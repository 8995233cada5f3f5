"""Fast tests of the supervisor's state machine: start and readiness, crash restarts with backoff, giving
up (failed) and leaving it, hangs, stalls with requests in flight, a stop that must escalate, safe mode
after crashes at load, and killed engines that do not exit (their requests end at once; they linger).

The engine here is the stand-in (`tests/standin_engine.py`, a real process on a real socket that answers
like llama-server), so every test runs in a second or two; what depends on the real llama-server (a real
wedge, real crashes under load) stays end to end in test_faults.py and test_stall.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import psutil
import pytest

from conftest import wait_until
from slp.engine import supervisor as supervisor_module
from slp.engine.process import EngineCommand
from slp.engine.supervisor import BACKOFF_FIRST, CrashWindow, EngineState, EngineUnavailable, Supervisor
from slp.server.engine_client import EngineClient, EngineConnectionError, EngineStreamError

STANDIN = Path(__file__).resolve().parent / "standin_engine.py"
KEY = "standin-key"


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def argv_of(pid: int) -> list[str]:
    """The command line a process really runs (what the kernel holds, not what we meant to pass)."""
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


def flash_attn_values(argv: list[str]) -> list[str]:
    return [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == "--flash-attn"]


class Harness:
    """A real Supervisor whose command runs the stand-in; `env` is read at each spawn (a test can change
    how the next engine behaves), `changes` and `restarts` record what the supervisor reported, `kills`
    each time it killed an engine (stall, hang) and told its owner, which then aborts `client`, if set,
    as the agent aborts the engine's own client."""

    def __init__(self, tmp_path: Path, http: aiohttp.ClientSession, **timings: float):
        self.env: dict[str, str] = {}
        self.log = tmp_path / "engine.log"
        self.changes: list[tuple[EngineState, str]] = []
        self.restarts: list[str] = []
        self.kills: list[float] = []
        self.client: EngineClient | None = None
        self.http = http
        options = dict(start_timeout=10.0, health_interval=0.1, health_timeout=0.5, stop_grace=2.0,
                       max_restarts=3, restart_window=60.0, stall_timeout=30.0)
        options.update(timings)
        self.supervisor = Supervisor(self.command, http, log_path=self.log, name="standin",
                                     on_change=lambda state, reason: self.changes.append((state, reason)),
                                     on_restart=self.restarts.append, on_kill=self.killed, **options)

    def command(self, model_path: Path, port: int) -> EngineCommand:
        argv = [sys.executable, str(STANDIN), "--model", str(model_path), "--host", "127.0.0.1",
                "--port", str(port), "--ctx-size", "4096", "--flash-attn", "on", "--no-webui"]
        return EngineCommand(argv=argv, env={"LLAMA_API_KEY": KEY, **self.env}, log_path=self.log)

    def killed(self) -> None:
        self.kills.append(time.monotonic())
        if self.client is not None:
            self.client.abort()

    def starts(self) -> list[str]:
        """The command line of every engine started, from the log's own start lines."""
        return [line for line in self.log.read_text().splitlines() if line.startswith("--- slp: starting engine")]

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


def test_the_crash_window_counts_recent_failures_doubles_the_backoff_and_gives_up_past_the_limit():
    """The rule the engine supervisor and the RPC worker runner share."""
    window = CrashWindow(window=60, max_restarts=2, backoff_first=1.0, backoff_max=3.0)
    assert [window.failed(now=t) for t in (0, 10, 20)] == [1, 2, 3]
    assert window.exhausted, "a third failure within 60 s is past max_restarts=2"
    assert window.backoff() == 3.0, "1, 2, 4 capped at 3"
    assert window.failed(now=75) == 2, "the failures at 0 and 10 s fell out of the window"
    assert not window.exhausted and window.backoff() == 2.0
    window.max_restarts, window.window = 1, 5  # a config reload: applies from the next failure
    assert window.failed(now=76) == 2 and window.exhausted
    window.clear()
    assert window.recent == 0 and not window.exhausted and window.backoff() == 1.0


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


# ---------------------------------------------------------------------- safe mode (crashes at load)

SAFE_ARGS = ["--no-repack", "--flash-attn", "off"]


async def test_two_crashes_at_load_start_it_once_more_in_safe_mode_which_it_keeps(harness):
    h = harness()
    h.env["STANDIN_CRASH_AT_LOAD"] = "1"  # SIGSEGV while "Loading model" unless --no-repack (the AMX crash)
    h.supervisor.start(Path("model.gguf"))
    pid = await h.ready(30)
    starts = h.starts()
    assert len(starts) == 3 and "--no-repack" not in starts[0] + starts[1] and "--no-repack" in starts[2], starts
    argv = argv_of(pid)
    assert argv[-3:] == SAFE_ARGS and flash_attn_values(argv) == ["on", "off"], \
        "the safe args come last, so llama.cpp's parser takes flash attention off over the command's own on"
    snap = h.supervisor.snapshot()
    assert snap["degraded"]["reason"] == "crashed twice at load, killed by SIGSEGV", snap["degraded"]
    assert snap["degraded"]["args"] == SAFE_ARGS and time.time() - 30 < snap["degraded"]["since"] <= time.time()
    assert snap["last_exit"]["reason"] == "crash-at-load" and snap["last_exit"]["signal"] == "SIGSEGV"
    assert snap["last_exit"]["detail"] == "crashed while loading: killed by SIGSEGV"
    assert "in safe mode (--no-repack, flash attention off)" in snap["reason"]
    assert h.restarts == ["crash-at-load", "crash-at-load"] and snap["crashes"] == 2
    assert any("restarting in safe mode" in reason for _, reason in h.changes), h.changes
    async with h.post({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}) as reply:
        assert reply.status == 200

    os.kill(pid, signal.SIGKILL)  # a crash of the safe-mode engine: it restarts in safe mode again
    await wait_until(lambda: h.supervisor.pid not in (None, pid) and h.supervisor.state is EngineState.READY, 20,
                     "the engine after the crash")
    assert argv_of(h.supervisor.pid)[-3:] == SAFE_ARGS and h.supervisor.degraded == snap["degraded"]
    assert h.restarts[-1] == "crash" and h.supervisor.last_exit.signal == "SIGKILL"

    del h.env["STANDIN_CRASH_AT_LOAD"]
    safe_pid = h.supervisor.pid
    h.supervisor.restart("user")  # a user's restart tries normal mode again
    await wait_until(lambda: h.supervisor.pid not in (None, safe_pid) and h.supervisor.state is EngineState.READY,
                     20, "the engine after the user's restart")
    assert "--no-repack" not in argv_of(h.supervisor.pid) and h.supervisor.snapshot()["degraded"] is None
    assert "safe mode" not in h.supervisor.reason


async def test_crashes_in_the_first_decode_count_as_crashes_at_load(harness):
    h = harness()
    h.supervisor.start(Path("model.gguf"))
    for n in (1, 2):  # ready, then dies by SIGSEGV on its first request before sending a byte
        pid = await h.ready()
        h.supervisor.work_begin()  # as the proxy does: the request is in flight when the engine dies
        try:
            with pytest.raises(aiohttp.ClientError):
                async with h.post({"messages": [{"role": "user", "content": "hi"}],
                                   "standin": {"die_after": 0, "die_signal": "SIGSEGV"}}) as reply:
                    await reply.read()
            await wait_until(lambda: h.supervisor.crashes == n, 10, f"crash {n} to be seen")
        finally:
            h.supervisor.work_end()
        assert h.supervisor.last_exit.reason == "crash-at-load", h.supervisor.last_exit
        assert h.supervisor.last_exit.detail == "crashed in its first decode: killed by SIGSEGV"
    pid = await h.ready()
    assert argv_of(pid)[-3:] == SAFE_ARGS
    assert h.supervisor.degraded["reason"] == "crashed twice at load, killed by SIGSEGV"
    assert [("--no-repack" in line) for line in h.starts()] == [False, False, True]


async def test_safe_mode_crashing_too_is_failed_naming_the_crash_and_slp_doctor(harness):
    h = harness(max_restarts=6)  # far more than the attempts made: safe mode decides, not the crash budget
    h.env["STANDIN_CRASH_AT_LOAD"] = "always"  # crashes with --no-repack too
    h.supervisor.start(Path("model.gguf"))
    with pytest.raises(EngineUnavailable) as caught:
        await h.supervisor.wait_ready(30)
    assert caught.value.state is EngineState.FAILED and caught.value.retry_after is None
    snap = h.supervisor.snapshot()
    assert [("--no-repack" in line) for line in h.starts()] == [False, False, True], \
        "two normal starts and one in safe mode, not six identical retries"
    assert h.log.read_text().count("stand-in: crashing while loading (SIGSEGV)") == 3
    assert snap["crashes"] == 3 and h.restarts == ["crash-at-load", "crash-at-load"]
    reason = snap["reason"]
    assert reason.startswith("crashed twice at load, killed by SIGSEGV, then in safe mode (--no-repack, "
                             "flash attention off) too (crashed while loading: killed by SIGSEGV)"), reason
    assert reason.endswith("run `slp doctor`") and snap["degraded"] is None
    assert h.states().count(EngineState.FAILED) == 1 and h.states()[-1] is EngineState.FAILED


async def test_a_crash_while_serving_keeps_the_backoff_and_never_safe_mode(harness):
    h = harness()
    h.supervisor.start(Path("model.gguf"))
    for n, expected in ((1, BACKOFF_FIRST), (2, 2 * BACKOFF_FIRST)):
        await h.ready()
        h.supervisor.work_begin()
        try:  # a stream that has sent events, then the engine dies by SIGSEGV: a crash while serving
            async with h.post({"messages": [{"role": "user", "content": "hi"}], "stream": True, "max_tokens": 50,
                               "standin": {"die_after": 3, "die_signal": "SIGSEGV"}}) as reply:
                with pytest.raises(aiohttp.ClientPayloadError):
                    async for _ in reply.content.iter_any():
                        h.supervisor.progress()
                        h.supervisor.served()  # as the proxy does on a stream's first event
            await wait_until(lambda: h.supervisor.crashes == n, 10, f"crash {n} to be seen")
        finally:
            h.supervisor.work_end()
        assert h.supervisor.last_exit.reason == "crash" and h.supervisor.last_exit.signal == "SIGSEGV"
        await wait_until(lambda: "restarting in" in h.supervisor.reason, 5, "the backoff")
        assert h.supervisor.reason.endswith(f"; restarting in {expected:.2f}s"), h.supervisor.reason
    pid = await h.ready()
    assert "--no-repack" not in argv_of(pid) and h.supervisor.snapshot()["degraded"] is None
    assert h.restarts == ["crash", "crash"] and not any("safe mode" in line for line in h.starts())


# ---------------------------------------------------------------------- killed engines that do not exit

HOLDING_TRACER = r"""
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.restype = ctypes.c_long
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
if libc.ptrace(0x4206, int(sys.argv[1]), None, None) != 0:  # PTRACE_SEIZE: it runs on, traced
    print(f"ptrace failed: {os.strerror(ctypes.get_errno())}", flush=True)
    sys.exit(2)
print("holding", flush=True)
time.sleep(120)  # never waits for it: once killed, its parent cannot reap it until this tracer is gone
"""


def hold(pid: int) -> subprocess.Popen:
    """Trace `pid` so that, killed, it stays unreaped (as a process stuck in a driver does) until the
    returned tracer is killed."""
    tracer = subprocess.Popen([sys.executable, "-c", HOLDING_TRACER, str(pid)], stdout=subprocess.PIPE, text=True)
    line = tracer.stdout.readline().strip()
    assert line == "holding", f"could not trace the engine: {line!r}"
    return tracer


class Relay:
    """Forwards connections to a port and keeps the client's side open when the engine's side closes:
    what a client sees of an engine whose sockets the kernel does not close (frozen, stuck in a driver)."""

    def __init__(self, port: int):
        self.target = port
        self.tasks: set[asyncio.Task] = set()

    async def __aenter__(self) -> "Relay":
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        for task in self.tasks:
            task.cancel()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.tasks.add(asyncio.current_task())
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()

        back = asyncio.ensure_future(pipe(up_reader, writer))  # the engine's EOF is never passed on
        self.tasks.add(back)
        try:
            await pipe(reader, up_writer)
            await asyncio.Event().wait()
        except (ConnectionError, OSError):
            pass


def chat_body(**extra) -> bytes:
    return json.dumps({"messages": [{"role": "user", "content": "hi"}], **extra}).encode()


async def test_a_killed_engine_s_requests_end_at_once_and_it_lingers_until_reaped(harness):
    h = harness(stall_timeout=1.0)
    h.client = EngineClient(max_connections=4)
    record = h.log.parent / "record"
    record.mkdir()
    h.env["STANDIN_RECORD"] = str(record)  # each request the engine got
    h.supervisor.start(Path("model.gguf"))
    pid = await h.ready()
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"}
    tracer = hold(pid)
    h.supervisor.work_begin()
    h.supervisor.work_begin()
    try:
        async with Relay(h.supervisor.port) as relay:
            stream = await h.client.post("127.0.0.1", relay.port, "/v1/chat/completions",
                                         chat_body(stream=True, max_tokens=50, standin={"stall_after": 2}), headers)
            chunks = stream.iter_chunks()
            events = 0
            while events < 2:  # the role event and one token, then nothing: wedged
                events += (await chunks.__anext__()).count(b"\n\n")
                h.supervisor.progress()
            plain = asyncio.ensure_future(h.client.post("127.0.0.1", relay.port, "/v1/chat/completions",
                                                        chat_body(standin={"stall_after": 0}), headers))
            await wait_until(lambda: len(list(record.glob(f"{pid}-*.request.json"))) == 2, 10,
                             "the second request to reach the engine")
            assert not h.kills, "both requests are in flight before the stall is caught"
            await wait_until(lambda: h.kills, 10, "the watchdog to kill the stalled engine")
            with pytest.raises(EngineConnectionError, match="the engine was killed"):
                await asyncio.wait_for(plain, 5)  # without the abort: never (the relay keeps the socket open)
            with pytest.raises(EngineStreamError):
                await asyncio.wait_for(chunks.__anext__(), 5)
            ended = time.monotonic() - h.kills[0]
            assert ended < 1, f"the requests ended {ended:.2f}s after the kill, not when the process is gone"
            assert h.supervisor.last_exit.reason == "stall"
            new_pid = await h.ready()  # the replacement serves while the old process is still there
            assert new_pid != pid and psutil.pid_exists(pid), "not reaped while its tracer holds it"
            lingering = h.supervisor.snapshot()["lingering"]
            assert [(e["pid"], e["reason"]) for e in lingering] == [(pid, "stall")], lingering
            async with h.post({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}) as reply:
                assert reply.status == 200
            assert h.supervisor.lingering, "still lingering after the replacement answered"
    finally:
        h.supervisor.work_end()
        h.supervisor.work_end()
        tracer.kill()
        tracer.wait()
        await h.client.close()
    await wait_until(lambda: not h.supervisor.lingering, 10, "the killed engine to be reaped")
    assert gone(pid) and h.supervisor.state is EngineState.READY and h.supervisor.pid == new_pid


async def test_stop_waits_a_bounded_time_for_a_killed_engine_that_has_not_exited(harness, monkeypatch, caplog):
    monkeypatch.setattr(supervisor_module, "LINGER_WAIT", 0.5)
    h = harness(stall_timeout=0.3)
    h.supervisor.start(Path("model.gguf"))
    pid = await h.ready()
    tracer = hold(pid)
    try:
        h.supervisor.work_begin()  # work in flight and nothing back: a stall
        await wait_until(lambda: h.supervisor.lingering, 10, "the stalled engine to be killed")
        h.supervisor.work_end()
        started = time.monotonic()
        await h.supervisor.stop()
        took = time.monotonic() - started
        assert 0.5 <= took < 3, f"stop waited for the killed engine, boundedly ({took:.2f}s)"
        assert psutil.pid_exists(pid)
        assert f"engine pid {pid}, killed" in caplog.text and "has not exited" in caplog.text
    finally:
        tracer.kill()
        tracer.wait()
    await wait_until(lambda: gone(pid), 10, "the killed engine to go once its tracer let go")
