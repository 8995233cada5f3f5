"""Supervision by progress, with the real engine and a real wedge.

The wedge: the engine's main thread (the one that runs the slots; its id equals the process id) is frozen
with ptrace (`PTRACE_SEIZE`, then `PTRACE_INTERRUPT`), by a small tracer process of the test's own. The
engine's HTTP threads keep answering `/health`, but nothing is generated: llama.cpp's open class of
mid-decode wedges, produced for real. The tracer keeps reaping the engine's ptrace stops, so that once the
agent kills the engine, the agent (its parent) sees it exit; or, told to hold, it reaps nothing for up to
120 s, so the killed engine stays (as one stuck in a driver does) until the tracer is gone.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time

import psutil
import requests

from conftest import wait_for

TRACER = r"""
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.restype = ctypes.c_long
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
PTRACE_SEIZE, PTRACE_INTERRUPT, WALL = 0x4206, 0x4207, 0x40000000
pid = int(sys.argv[1])
for request in (PTRACE_SEIZE, PTRACE_INTERRUPT):
    if libc.ptrace(request, pid, None, None) != 0:
        print(f"ptrace {request:#x} failed: {os.strerror(ctypes.get_errno())}", flush=True)
        sys.exit(2)
os.waitpid(pid, WALL)  # the stop that PTRACE_INTERRUPT caused: the thread is frozen now
print("frozen", flush=True)
if sys.argv[2:] == ["hold"]:  # reap nothing: killed, it cannot be reaped by its parent until this one is gone
    time.sleep(120)
    sys.exit(0)
while True:  # never resume it; reap its stops until it is killed, then let go
    try:
        _, status = os.waitpid(pid, WALL)
    except ChildProcessError:
        break
    if os.WIFEXITED(status) or os.WIFSIGNALED(status):
        break
"""


def freeze_main_thread(pid: int, hold: bool = False) -> subprocess.Popen:
    tracer = subprocess.Popen([sys.executable, "-c", TRACER, str(pid), *(["hold"] if hold else [])],
                              stdout=subprocess.PIPE, text=True)
    line = tracer.stdout.readline().strip()
    assert line == "frozen", f"could not freeze the engine's main thread: {line!r}"
    return tracer


CHAT = {"model": "slp-orchestra-mini", "messages": [{"role": "user", "content": "Count to one thousand."}]}


def test_a_wedged_engine_is_caught_its_requests_end_cleanly_and_it_is_replaced(fresh_agent):
    agent = fresh_agent(stall_timeout="4", health_interval="0.5")
    agent.start()
    pid = agent.engine_pid()
    events: list[bytes] = []
    tracer = None

    def stream() -> None:
        body = {**CHAT, "stream": True, "max_tokens": 3000, "ignore_eos": True}
        with requests.post(f"{agent.url}/v1/chat/completions", json=body, stream=True, timeout=120) as resp:
            for line in resp.iter_lines():
                if line.startswith(b"data: "):
                    events.append(line[6:])

    streamer = threading.Thread(target=stream, daemon=True)
    streamer.start()
    try:
        wait_for(lambda: len(events) >= 5, 60, "the stream's first events")
        tracer = freeze_main_thread(pid)
        frozen_at = time.monotonic()
        assert requests.get(f"{agent.url}/health", timeout=5).status_code == 200, \
            "the wedge is real: /health still answers while nothing is generated"
        waiting: dict = {}

        def plain() -> None:
            reply = requests.post(f"{agent.url}/v1/chat/completions", json={**CHAT, "max_tokens": 8}, timeout=120)
            waiting.update(status=reply.status_code, headers=dict(reply.headers), body=reply.json())

        asker = threading.Thread(target=plain, daemon=True)
        asker.start()
        streamer.join(60)
        asker.join(60)
        assert not streamer.is_alive() and not asker.is_alive(), "no request hangs"
        assert time.monotonic() - frozen_at < 30, "caught within the stall timeout and a few watchdog rounds"
        last = json.loads(events[-1])
        assert last["error"]["code"] == "engine_failed" and "stall" in last["error"]["message"], last
        assert waiting["status"] == 503 and int(waiting["headers"]["Retry-After"]) >= 1, waiting
        error = waiting["body"]["error"]
        assert error["code"] == "engine_unavailable" and "stall" in error["message"], error
    finally:
        if tracer is not None:
            tracer.wait(30)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    wait_for(lambda: agent.status()["engine"]["state"] == "ready", 60, "a new engine")
    status = agent.status()
    assert status["engine"]["pid"] != pid
    assert status["engine"]["last_exit"]["reason"] == "stall"
    assert "no progress" in status["engine"]["last_exit"]["detail"]
    metrics = requests.get(f"{agent.url}/metrics", timeout=10).text
    assert 'slp_engine_restarts_total{model="slp-orchestra-mini",reason="stall"} 1.0' in metrics
    log = (agent.home / "logs" / "agent.log").read_text()
    # The supervisor's own line for this stall, with its numbers (stall timeout 4 s, the first backoff).
    assert re.search(r"^\S+ \S+ INFO slp\.engine: slp-orchestra-mini restarting: stall: no progress for \d+s with "
                     r"[12] request\(s\) in flight \(no bytes, CPU idle; stall timeout 4s\); killed; "
                     r"restarting in 0\.25s$", log, re.M), log[-3000:]
    reply = requests.post(f"{agent.url}/v1/chat/completions", json={**CHAT, "max_tokens": 4}, timeout=60)
    assert reply.status_code == 200, "serving resumes"


def test_a_frozen_engine_s_requests_end_when_the_stall_is_caught_not_when_it_is_gone(fresh_agent):
    # Killed, a frozen engine is not reaped while its tracer holds it (as one stuck in a driver is not):
    # its request must still end as the stall is caught, and a new engine serve meanwhile.
    agent = fresh_agent(stall_timeout="4", health_interval="0.5")
    agent.start()
    pid = agent.engine_pid()
    tracer = freeze_main_thread(pid, hold=True)
    frozen_at = time.monotonic()
    try:
        waiting: dict = {}

        def plain() -> None:
            reply = requests.post(f"{agent.url}/v1/chat/completions", json={**CHAT, "max_tokens": 8}, timeout=120)
            waiting.update(status=reply.status_code, headers=dict(reply.headers), body=reply.json(),
                           after=time.monotonic() - frozen_at)

        asker = threading.Thread(target=plain, daemon=True)
        asker.start()
        asker.join(60)
        assert not asker.is_alive(), "the request hangs until the frozen engine is gone"
        assert waiting["after"] < 4 + 5, f"it ended {waiting['after']:.1f}s after the freeze"
        assert waiting["status"] == 503 and int(waiting["headers"]["Retry-After"]) >= 1, waiting
        error = waiting["body"]["error"]
        assert error["code"] == "engine_unavailable" and "stall" in error["message"], error
        assert error["type"] == "service_unavailable" and error["param"] is None, error

        wait_for(lambda: (e := agent.status()["engine"])["state"] == "ready" and e["pid"] != pid, 60,
                 "the replacement engine")
        assert tracer.poll() is None and psutil.pid_exists(pid), "the old engine is still frozen, not reaped"
        reply = requests.post(f"{agent.url}/v1/chat/completions", json={**CHAT, "max_tokens": 4}, timeout=60)
        assert reply.status_code == 200, "the replacement serves while the old engine is still there"
        engine = agent.status()["engine"]
        assert engine["pid"] != pid
        assert [(e["pid"], e["reason"]) for e in engine["lingering"]] == [(pid, "stall")], engine["lingering"]
        assert f"pid {pid} killed" in agent.cli("status", check=True).stdout
    finally:
        tracer.kill()
        tracer.wait(30)
    wait_for(lambda: agent.status()["engine"]["lingering"] == [], 30, "the old engine to be reaped once let go")
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_a_slow_engine_that_still_progresses_is_never_flagged(fresh_agent):
    # One thread on one core and a long prompt: seconds of prompt processing with no byte sent back,
    # far beyond the stall timeout, but the engine's CPU is busy, so it is progress.
    agent = fresh_agent(stall_timeout="1.5", health_interval="0.5", threads="1", ctx_size="8192")
    agent.start()
    engine = psutil.Process(agent.engine_pid())
    core = engine.cpu_affinity()[0]
    for thread in engine.threads():  # affinity is per thread on Linux: pin every one of them
        os.sched_setaffinity(thread.id, {core})
    prompt = "hello " * 800  # about 800 tokens
    started = time.monotonic()
    reply = requests.post(f"{agent.url}/v1/chat/completions", timeout=300, json={
        "model": "slp-orchestra-mini", "max_tokens": 16, "messages": [{"role": "user", "content": prompt}]})
    took = time.monotonic() - started
    assert reply.status_code == 200, reply.text
    assert reply.json()["usage"]["prompt_tokens"] > 750
    assert took > 3, f"the prompt took {took:.1f}s: long enough to have tripped a bytes-only watchdog"
    status = agent.status()
    assert status["engine"]["pid"] == engine.pid and status["engine"]["crashes"] == 0
    assert status["engine"]["stalls"] == 0
