"""Run the workloads against every target, interleaved, and collect per-repeat numbers.

Each (workload, concurrency) cell is measured for every target back to back, and the order of
direct and agent flips every repeat (ABBA...), so slow drifts and bursts of machine noise land on
both sides equally. Summaries are taken per repeat, then medians over repeats (report.py).
"""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from slp.engine.binary import EngineNotFound, find_engine
from slp.models.store import ModelStore
from slp.settings import Settings

from bench.facts import machine_facts
from bench.load import Batch, BenchError, first_token_s, run_alternating, run_batch
from bench.targets import Agent, DirectEngine, External, Target, agent_env, engine_alias, free_port, \
    process_cpu_s, process_rss

TINY_CONCURRENCY = (1, 8, 32)
STREAM_CONCURRENCY = (1, 8)
WORKLOADS = ("a", "b", "c", "d")
MB = 1024 * 1024


@dataclass
class Options:
    repeats: int = 3
    requests: int = 60           # tiny requests per (concurrency, target, repeat); at least 2x the concurrency
    c1_requests: int = 200       # tiny requests per target and repeat at c=1 (taking turns): p99 wants many
    stream_requests: int = 3     # streamed requests per target and repeat at c=1 (c=8 sends 8)
    ttft_requests: int = 16      # short streams per target and repeat for time to first token (c=1)
    max_tokens: int = 128
    cold_repeats: int = 3
    only: tuple[str, ...] = WORKLOADS
    targets: list[tuple[str, str]] = field(default_factory=list)
    keys: dict[str, str] = field(default_factory=dict)
    models_dir: Optional[Path] = None
    quick: bool = False
    out: Optional[Path] = None

    @classmethod
    def quick_mode(cls, **kw) -> "Options":
        return cls(repeats=1, requests=8, c1_requests=8, stream_requests=2, ttft_requests=4, max_tokens=16,
                   cold_repeats=1, quick=True, **kw)


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100) of a non-empty list."""
    data = sorted(values)
    if len(data) == 1:
        return data[0]
    pos = (len(data) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def default_models_dir() -> Path:
    """SLP_MODELS_DIR when set, else the test-model cache (one 98 MB download shared with the tests)."""
    env = os.environ.get("SLP_MODELS_DIR") or os.environ.get("SLP_TEST_MODELS_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "slp" / "test-models"


class Sampler:
    """Peak RSS of one process while a batch runs (sampled every 25 ms from the client's loop).
    It runs during every target's batches, so its small cost hits all of them alike."""

    def __init__(self, pid: Optional[int]):
        self.pid, self.peak, self._task = pid, 0, None

    async def _run(self) -> None:
        while True:
            rss = process_rss(self.pid)
            if rss:
                self.peak = max(self.peak, rss)
            await asyncio.sleep(0.025)

    def __enter__(self) -> "Sampler":
        if self.pid:
            self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc) -> None:
        if self._task:
            self._task.cancel()


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Bench:
    def __init__(self, opts: Options):
        self.opts = opts
        # raw[target][metric] = one value per repeat (metric names are what report.py reads)
        self.raw: dict[str, dict[str, list[float]]] = {}
        self.notes: list[str] = []
        self.info: dict = {}
        self.peaks: dict[str, int] = {}  # peak RSS per target within the current repeat
        self.retries: dict[str, int] = {}

    def put(self, target: str, metric: str, value: Optional[float]) -> None:
        if value is not None:
            self.raw.setdefault(target, {}).setdefault(metric, []).append(value)

    # ------------------------------------------------------------------ bodies

    def tiny_body(self, model: str) -> dict:
        return {"model": model, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 1}

    def stream_body(self, model: str, max_tokens: Optional[int] = None) -> dict:
        # stream_options is sent to every target so the agent forwards the body as it is (it would add it)
        return {"model": model, "messages": [{"role": "user", "content": "Tell me a long story about a lighthouse."}],
                "max_tokens": max_tokens or self.opts.max_tokens, "ignore_eos": True, "stream": True,
                "stream_options": {"include_usage": True}, "seed": 1}

    # ------------------------------------------------------------------ one batch

    async def batch(self, target: Target, body: dict, requests: int, concurrency: int, stream: bool
                    ) -> tuple[Batch, Optional[float]]:
        """Run a batch; returns it with the CPU seconds the target's process spent meanwhile (None for
        targets we did not start). The process's peak RSS goes to self.peaks."""
        session = target.open_session()
        cpu0 = process_cpu_s(target.pid)
        with Sampler(target.pid) as sampler:
            result = await run_batch(session, target.base + "/chat/completions", body, target.headers,
                                     requests, concurrency, stream)
        cpu1 = process_cpu_s(target.pid)
        cpu = cpu1 - cpu0 if cpu0 is not None and cpu1 is not None else None
        if result.retries:
            self.retries[target.name] = self.retries.get(target.name, 0) + result.retries
        if sampler.peak:
            self.peaks[target.name] = max(self.peaks.get(target.name, 0), sampler.peak)
        return result, cpu

    async def measure(self, targets: list[Target], repeat: int, body: Callable[[str], dict], requests: int,
                      concurrency: int, stream: bool) -> list[tuple[Target, Batch, Optional[float]]]:
        """(target, batch, its process's CPU seconds) for each target. At concurrency 1 the targets take
        turns request by request (see run_alternating); above it, each runs its batch in turn."""
        ordered = self.ordered(targets, repeat)
        if concurrency > 1:
            return [(t, *await self.batch(t, body(t.model), requests, concurrency, stream)) for t in ordered]
        cpu0 = [process_cpu_s(t.pid) for t in ordered]
        batches = await run_alternating([(t.open_session(), t.base + "/chat/completions", t.headers, body(t.model))
                                         for t in ordered], requests, stream)
        out = []
        for t, b, c0 in zip(ordered, batches, cpu0):
            c1 = process_cpu_s(t.pid)
            if b.retries:
                self.retries[t.name] = self.retries.get(t.name, 0) + b.retries
            out.append((t, b, c1 - c0 if c0 is not None and c1 is not None else None))
        return out

    @staticmethod
    def ordered(targets: list[Target], repeat: int) -> list[Target]:
        """direct, agent on even repeats; agent, direct on odd ones; extra targets after them."""
        pair, rest = targets[:2], targets[2:]
        return (pair if repeat % 2 == 0 else pair[::-1]) + rest

    # ------------------------------------------------------------------ workloads

    async def tiny(self, targets: list[Target], repeat: int) -> None:
        cost: dict[str, list[float]] = {}  # target -> [CPU seconds, requests]
        for conc in TINY_CONCURRENCY:
            n = self.opts.c1_requests if conc == 1 else max(self.opts.requests, conc if self.opts.quick else 2 * conc)
            for target, b, cpu in await self.measure(targets, repeat, self.tiny_body, n, conc, stream=False):
                lat_ms = [x * 1000 for x in b.latencies_s]
                self.put(target.name, f"a.c{conc}.p50_ms", percentile(lat_ms, 50))
                self.put(target.name, f"a.c{conc}.p99_ms", percentile(lat_ms, 99))
                self.put(target.name, f"a.c{conc}.rps", n / b.wall_s)
                self.put(target.name, f"client.cpu_util.a.c{conc}", b.client_cpu_s / b.wall_s)
                if cpu is not None:
                    c = cost.setdefault(target.name, [0.0, 0.0])
                    c[0] += cpu
                    c[1] += n
        for name, (cpu, n) in cost.items():
            self.put(name, "c.cpu_s_per_1k_requests", cpu / n * 1000)

    async def streaming(self, targets: list[Target], repeat: int) -> None:
        cost: dict[str, list[float]] = {}  # target -> [CPU seconds, SSE events]
        for conc in STREAM_CONCURRENCY:
            n = max(self.opts.stream_requests, conc)
            for target, b, cpu in await self.measure(targets, repeat, self.stream_body, n, conc, stream=True):
                s = b.streams
                tokens = sum(x.completion_tokens or x.tokens for x in s)
                gaps_ms = [g * 1000 for x in s for g in x.gaps_s]
                self.put(target.name, f"b.c{conc}.ttft_ms", statistics.median(x.ttft_s * 1000 for x in s))
                if gaps_ms:
                    self.put(target.name, f"b.c{conc}.itl_ms", statistics.mean(gaps_ms))
                    self.put(target.name, f"b.c{conc}.itl_p99_ms", percentile(gaps_ms, 99))
                self.put(target.name, f"b.c{conc}.tokens_per_s", tokens / b.wall_s)
                self.put(target.name, f"b.c{conc}.stream_tokens_per_s",
                         statistics.median((x.tokens - 1) / x.decode_s for x in s if x.decode_s > 0 and x.tokens > 1)
                         if any(x.decode_s > 0 and x.tokens > 1 for x in s) else None)
                self.put(target.name, f"b.c{conc}.tokens_per_request", tokens / len(s))
                self.put(target.name, f"client.cpu_util.b.c{conc}", b.client_cpu_s / b.wall_s)
                if cpu is not None:
                    c = cost.setdefault(target.name, [0.0, 0.0])
                    c[0] += cpu
                    c[1] += sum(x.events for x in s)
        for name, (cpu, chunks) in cost.items():
            self.put(name, "c.cpu_s_per_10k_chunks", cpu / chunks * 10000)
        # Time to first token wants many samples: short streams, the targets taking turns.
        short = functools.partial(self.stream_body, max_tokens=4)
        for target, b, _ in await self.measure(targets, repeat, short, self.opts.ttft_requests, 1, stream=True):
            self.put(target.name, "b.ttft_ms", statistics.median(x.ttft_s * 1000 for x in b.streams))

    async def cold_start(self, direct: DirectEngine, agent: Agent, repeat: int) -> None:
        body = self.stream_body(agent.model, max_tokens=4)

        async def agent_cold() -> None:
            await agent.stop()
            t0 = time.perf_counter()
            await asyncio.to_thread(agent.start)
            ready = time.perf_counter() - t0
            ttft = await first_token_s(agent.open_session(), agent.base + "/chat/completions", body, agent.headers)
            self.put("agent", "d.ready_s", ready)
            self.put("agent", "d.first_token_s", ready + ttft)

        async def direct_cold() -> None:
            await direct.stop()
            t0 = time.perf_counter()
            await direct.start()
            ready = time.perf_counter() - t0
            ttft = await first_token_s(direct.open_session(), direct.base + "/chat/completions", body, direct.headers)
            self.put("direct", "d.ready_s", ready)
            self.put("direct", "d.first_token_s", ready + ttft)

        steps = [direct_cold, agent_cold] if repeat % 2 == 0 else [agent_cold, direct_cold]
        for step in steps:
            await step()

    # ------------------------------------------------------------------ the run

    async def warm_up(self, targets: list[Target]) -> None:
        for target in targets:
            await self.batch(target, self.tiny_body(target.model), 4, 2, stream=False)
            await self.batch(target, self.stream_body(target.model, max_tokens=8), 2, 2, stream=True)

    async def run(self) -> dict:
        opts = self.opts
        t_start = time.perf_counter()
        home = Path(tempfile.mkdtemp(prefix="slp-bench-"))
        models_dir = (opts.models_dir or default_models_dir()).resolve()
        log(f"model store {models_dir} (the default model is fetched there once if missing)")
        model = await asyncio.to_thread(lambda: ModelStore(models_dir).ensure_default(progress=False))
        port = free_port()
        env = agent_env(home / "agent-home", port, models_dir)
        # The direct engine's Settings come from the very environment the agent gets.
        saved = dict(os.environ)
        os.environ.clear()
        os.environ.update(env)
        try:
            settings = Settings()
        finally:
            os.environ.clear()
            os.environ.update(saved)
        try:
            binary, build = find_engine(settings)
        except EngineNotFound as exc:
            raise BenchError(str(exc))
        alias = engine_alias(ModelStore(models_dir), model.path)
        direct = DirectEngine(settings, binary, model.path, alias, home / "direct-engine.log")
        agent = Agent(env, home / "agent-home", port, alias)
        externals = [External(name, url, opts.keys.get(name)) for name, url in opts.targets]
        targets: list[Target] = [direct, agent, *externals]
        self.info = {"facts": machine_facts(settings, binary, build, model.path)}
        try:
            log(f"starting the direct engine ({binary})")
            await direct.start()
            self.info["engine_argv"] = direct.command.argv[1:]  # the agent builds its engine's argv the same way
            log(f"starting the agent on port {port} (slp agent start)")
            await asyncio.to_thread(agent.start)
            for ext in externals:
                await ext.discover_model()
            self.put("agent", "c.rss_start_mb", (process_rss(agent.pid) or 0) / MB or None)
            self.put("direct", "c.rss_start_mb", (process_rss(direct.pid) or 0) / MB or None)
            log("warming up")
            await self.warm_up(targets)
            await asyncio.sleep(0.5)
            self.put("agent", "c.rss_idle_mb", (process_rss(agent.pid) or 0) / MB or None)
            self.put("direct", "c.rss_idle_mb", (process_rss(direct.pid) or 0) / MB or None)
            for r in range(opts.repeats):
                self.peaks = {}
                if "a" in opts.only or "c" in opts.only:
                    log(f"repeat {r + 1}/{opts.repeats}: (a) tiny requests, c={TINY_CONCURRENCY}")
                    await self.tiny(targets, r)
                if "b" in opts.only or "c" in opts.only:
                    log(f"repeat {r + 1}/{opts.repeats}: (b) streaming {opts.max_tokens} tokens, c={STREAM_CONCURRENCY}")
                    await self.streaming(targets, r)
                for name, peak in self.peaks.items():
                    self.put(name, "c.rss_load_mb", peak / MB)
            await asyncio.sleep(0.5)
            self.put("agent", "c.rss_idle_after_mb", (process_rss(agent.pid) or 0) / MB or None)
            self.put("direct", "c.rss_idle_after_mb", (process_rss(direct.pid) or 0) / MB or None)
            if "d" in opts.only:
                for r in range(opts.cold_repeats):
                    log(f"cold start {r + 1}/{opts.cold_repeats}")
                    await self.cold_start(direct, agent, r)
        finally:
            log("stopping")
            for ext in externals:
                await ext.close_session()
            try:
                await agent.stop()
            except Exception as exc:  # noqa: BLE001 - still stop the rest
                log(f"agent stop failed: {exc}")
            agent.kill_leftovers()
            await direct.stop()
            shutil.rmtree(home, ignore_errors=True)
        self.info["duration_s"] = round(time.perf_counter() - t_start, 1)
        self.check_counts()
        for name, n in self.retries.items():
            self.notes.append(f"{name}: {n} request(s) sent again because the server had just closed the pooled "
                              "connection (only the second attempt is timed)")
        return {"raw": self.raw, "notes": self.notes, **self.info}

    def check_counts(self) -> None:
        """Every target must have generated the same number of tokens per stream, or tokens/s is unfair."""
        for conc in STREAM_CONCURRENCY:
            counts = {name: vals.get(f"b.c{conc}.tokens_per_request") for name, vals in self.raw.items()}
            seen = {round(statistics.median(v), 1) for v in counts.values() if v}
            if len(seen) > 1:
                self.notes.append(f"streams at c={conc} generated different token counts per target: "
                                  + ", ".join(f"{k}={statistics.median(v):.1f}" for k, v in counts.items() if v))


def run(opts: Options) -> dict:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(Bench(opts).run())
    return uvloop.run(Bench(opts).run())
