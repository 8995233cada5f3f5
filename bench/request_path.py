"""`python -m bench.request_path`: what one proxied request costs the agent itself, in CPU.

Latency on a shared 2-core machine moves by ±0.5 ms run to run; the agent's own CPU time per request
does not, so this is the number to tune the request path against (the latency targets stay in
`make bench`). It starts an agent on a throwaway home over the real engine, sends tiny chats (one
token) and short streams one at a time over a keep-alive connection, and reports the agent process's
CPU microseconds per request and per streamed event (user + system, from psutil), the median of
`--repeats` batches. With `--profile FILE` the agent runs under cProfile (which slows it down: read
the profile for where the time goes, not the CPU figures) and the top functions are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import pstats
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import psutil

from bench.runner import default_models_dir
from bench.targets import DirectEngine, engine_alias, foreground_agent, free_port

# The agent under cProfile with a per-thread CPU clock, its stats written when it exits (SIGTERM is a
# graceful stop, so the `finally` runs).
PROFILED = """
import cProfile, sys, time
from slp.cli.main import main
out = sys.argv.pop(1)
sys.argv[0] = "slp"
profile = cProfile.Profile(time.thread_time)
try:
    profile.runcall(main)
except SystemExit:
    pass
finally:
    profile.dump_stats(out)
"""

CHAT = {"messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 1, "temperature": 0}


async def batch(session: aiohttp.ClientSession, url: str, body: dict, n: int, stream: bool) -> int:
    """Send `n` requests one at a time; returns the SSE events read (0 for plain requests)."""
    events = 0
    for _ in range(n):
        async with session.post(url, json={**body, "stream": stream}) as resp:
            data = await resp.read()
            if resp.status != 200:
                raise SystemExit(f"HTTP {resp.status}: {data[:300]!r}")
            events += data.count(b"\n\ndata: ") + 1 if stream else 0
    return events


async def measure(port: int, pid: int, requests: int, streams: int, tokens: int, repeats: int,
                  spy: Path | None = None) -> dict:
    proc = psutil.Process(pid)
    url = f"http://127.0.0.1:{port}/v1/chat/completions"

    def cpu() -> float:
        times = proc.cpu_times()
        return times.user + times.system

    plain, per_event, system = [], [], []
    async with aiohttp.ClientSession() as session:
        await batch(session, url, CHAT, 20, False)  # warm: first-request work, connection, caches
        await batch(session, url, {**CHAT, "max_tokens": 4}, 3, True)
        if spy is not None:  # sample the agent (native frames too) through one batch of tiny chats
            sampler = subprocess.Popen(["py-spy", "record", "--pid", str(pid), "--native", "--rate", "500",
                                        "--format", "raw", "--output", str(spy)],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            await asyncio.sleep(1)
            await batch(session, url, CHAT, requests, False)
            sampler.send_signal(signal.SIGINT)
            await asyncio.to_thread(sampler.wait)
        for _ in range(repeats):
            before, sys_before = cpu(), proc.cpu_times().system
            await batch(session, url, CHAT, requests, False)
            plain.append((cpu() - before) / requests * 1e6)
            system.append((proc.cpu_times().system - sys_before) / requests * 1e6)
            before = cpu()
            events = await batch(session, url, {**CHAT, "max_tokens": tokens}, streams, True)
            per_event.append((cpu() - before) / events * 1e6)
    return {"tiny_us": statistics.median(plain), "tiny_all": plain, "tiny_sys_us": statistics.median(system),
            "event_us": statistics.median(per_event), "event_all": per_event}


def summarise_stacks(path: Path, top: int) -> str:
    """Where the sampled time went: the share of samples each function is on the stack for (inclusive)
    and at the top of (own), from py-spy's collapsed stacks."""
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        frames = [f.split(" (")[0] + " (" + f.rsplit("/", 1)[-1] if " (" in f else f for f in stack.split(";")]
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + n
        own[frames[-1]] = own.get(frames[-1], 0) + n
    rows = [f"{total} samples; inclusive % / own % / function"]
    for frame, n in sorted(inclusive.items(), key=lambda kv: -kv[1])[:top]:
        rows.append(f"{100 * n / total:6.1f} {100 * own.get(frame, 0) / total:6.1f}  {frame}")
    rows.append("-- by own time:")
    for frame, n in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        rows.append(f"{100 * inclusive[frame] / total:6.1f} {100 * n / total:6.1f}  {frame}")
    return "\n".join(rows)


async def measure_relay(a: argparse.Namespace) -> dict:
    """The same batches through bench/relay.py over a bare engine started as the agent starts its own."""
    from slp.engine.binary import find_engine
    from slp.models.store import ModelStore
    from slp.settings import Settings

    home = Path(tempfile.mkdtemp(prefix="slp-relay-"))
    models = ModelStore(default_models_dir())
    settings = Settings(home=home)
    binary, _ = find_engine(settings)
    model = models.ensure_default(progress=False)
    engine = DirectEngine(settings, binary, model.path, engine_alias(models, model.path), home / "engine.log")
    await engine.start()
    port = free_port()
    engine_port = int(engine.base.rsplit(":", 1)[1].split("/")[0])
    key = engine.headers["Authorization"].split(" ", 1)[1]
    relay = subprocess.Popen([sys.executable, "-m", "bench.relay", str(port), str(engine_port), key])
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if relay.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the relay did not start")
                await asyncio.sleep(0.1)
        return await measure(port, relay.pid, a.requests, a.streams, a.tokens, a.repeats)
    finally:
        relay.terminate()
        relay.wait(10)
        await engine.stop()
        shutil.rmtree(home, ignore_errors=True)


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.request_path", description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=300, help="tiny chats per batch (default 300)")
    p.add_argument("--streams", type=int, default=10, help="streams per batch (default 10)")
    p.add_argument("--tokens", type=int, default=64, help="tokens per stream (default 64)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--profile", type=Path, help="run the agent under cProfile and write the stats here")
    p.add_argument("--spy", type=Path, help="sample the agent with py-spy through one extra batch of tiny "
                   "chats and write collapsed stacks here (py-spy from the bench extra)")
    p.add_argument("--no-relay", action="store_true", help="skip the logic-free relay (bench/relay.py) over a "
                   "bare engine, measured the same way after the agent")
    p.add_argument("--top", type=int, default=40, help="functions of the profile to print (by own time)")
    a = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a `timeout` stops the run: still stop its agent

    cmd = [sys.executable, "-m", "slp", "agent", "start", "--foreground"]
    if a.profile:  # CPU time of the event loop's thread: a wall clock would count waits the kernel imposes
        cmd[1:3] = ["-c", PROFILED, str(a.profile)]
    with foreground_agent("slp-reqpath-", default_models_dir(), cmd) as (port, agent):
        result = asyncio.run(measure(port, agent.pid, a.requests, a.streams, a.tokens, a.repeats, a.spy))
    if not a.no_relay:
        relay = asyncio.run(measure_relay(a))
        print(f"relay CPU per tiny chat: {relay['tiny_us']:.0f} µs, {relay['tiny_sys_us']:.0f} of it in the kernel "
              f"(batches: {', '.join(f'{v:.0f}' for v in relay['tiny_all'])})")
        print(f"relay CPU per streamed event: {relay['event_us']:.1f} µs (batches: "
              f"{', '.join(f'{v:.1f}' for v in relay['event_all'])})")
    print(f"agent CPU per tiny chat: {result['tiny_us']:.0f} µs, {result['tiny_sys_us']:.0f} of it in the kernel (batches: "
          f"{', '.join(f'{v:.0f}' for v in result['tiny_all'])})")
    print(f"agent CPU per streamed event: {result['event_us']:.1f} µs (batches: "
          f"{', '.join(f'{v:.1f}' for v in result['event_all'])})")
    if a.spy:
        print(summarise_stacks(a.spy, a.top))
    if a.profile:
        stats = pstats.Stats(str(a.profile))
        stats.sort_stats("tottime").print_stats(a.top)


if __name__ == "__main__":
    main(sys.argv[1:])
