"""`python -m bench.soak [--minutes N]` (`make soak`): mixed load on one agent for a set time.

Eight streaming clients, tiny requests, project edits, requests that switch between two models, and clients
that disconnect mid-stream, all at once, for `--minutes` (default 30). Every request has a deadline
(`--hang-after`, default 120 s): one that passes it is *hung*, and a run with any hung request fails. It
reports errors by kind, p50/p99 latency per minute, the agent's and each engine's RSS over time, and engine
restarts by reason; it writes bench/results/soak.md and soak.json. Not part of `make test`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import aiohttp
import psutil

from bench.runner import default_models_dir, log, percentile
from bench.targets import Agent, agent_env, free_port
from slp.models.store import ModelStore

RESULTS = Path(__file__).resolve().parent / "results"
A, B = "slp-orchestra-mini", "gemma-3-270m"


class Soak:
    def __init__(self, agent: Agent, minutes: float, hang_after: float):
        self.agent, self.url = agent, f"http://127.0.0.1:{agent.port}"
        self.until = time.monotonic() + minutes * 60
        self.started = time.monotonic()
        self.hang_after = hang_after
        self.latency: dict[int, list[float]] = defaultdict(list)  # minute -> seconds
        self.outcomes: Counter = Counter()
        self.hung = 0
        self.memory: list[dict] = []

    def minute(self) -> int:
        return int((time.monotonic() - self.started) // 60)

    async def timed(self, kind: str, call) -> None:
        started = time.monotonic()
        try:
            await asyncio.wait_for(call, self.hang_after)
            self.outcomes[f"{kind}: ok"] += 1
            self.latency[self.minute()].append(time.monotonic() - started)
        except asyncio.TimeoutError:
            self.hung += 1
            self.outcomes[f"{kind}: HUNG"] += 1
        except Exception as exc:  # noqa: BLE001 - counted by kind, the run goes on
            self.outcomes[f"{kind}: {type(exc).__name__}: {str(exc)[:80]}"] += 1

    async def chat(self, session: aiohttp.ClientSession, model: str, stream: bool, tokens: int,
                   disconnect_after: int = 0) -> None:
        body = {"model": model, "max_tokens": tokens, "stream": stream,
                "messages": [{"role": "user", "content": "Tell me about the sea."}]}
        async with session.post(f"{self.url}/v1/chat/completions", json=body) as resp:
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status}")
            if not stream:
                await resp.read()
                return
            events = 0
            last = b""
            async for line in resp.content:
                if line.startswith(b"data: "):
                    events += 1
                    last = line
                    if disconnect_after and events >= disconnect_after:
                        return  # leaving the block closes the connection: a client that went away
            if b"[DONE]" not in last:
                raise RuntimeError(f"stream ended without [DONE]: {last[:120]!r}")

    async def edit_project(self, session: aiohttp.ClientSession, n: int) -> None:
        name = f"soak{n % 4}"
        async with session.patch(f"{self.url}/v1/projects/{name}",
                                  json={"system_prompt": f"Answer briefly. ({n})"}) as resp:
            if resp.status == 404:
                async with session.post(f"{self.url}/v1/projects", json={"name": name}) as created:
                    if created.status not in (200, 201, 409):
                        raise RuntimeError(f"create HTTP {created.status}")
            elif resp.status != 200:
                raise RuntimeError(f"edit HTTP {resp.status}")

    async def streamer(self, n: int) -> None:
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < self.until:
                model = B if random.random() < 0.25 else A
                if random.random() < 0.15:
                    await self.timed("disconnecting client", self.chat(session, model, True, 64, disconnect_after=4))
                else:
                    await self.timed(f"stream {model}", self.chat(session, model, True, 48))

    async def tiny(self) -> None:
        async with aiohttp.ClientSession() as session:
            n = 0
            while time.monotonic() < self.until:
                n += 1
                await self.timed("tiny", self.chat(session, A, False, 1))
                if n % 10 == 0:
                    await self.timed("project edit", self.edit_project(session, n))
                if n % 25 == 0:
                    await self.timed(f"switch to {B}", self.chat(session, B, False, 1))

    async def sampler(self) -> None:
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < self.until:
                sample = {"t_s": round(time.monotonic() - self.started, 1),
                          "agent_rss_mb": psutil.Process(self.agent.agent_pid).memory_info().rss / 1e6}
                try:
                    async with session.get(f"{self.url}/v1/engines", timeout=aiohttp.ClientTimeout(total=10)) as resp:
                        for row in (await resp.json())["data"]:
                            sample[f"{row['model']}_rss_mb"] = (row["rss_bytes"] or 0) / 1e6
                except (aiohttp.ClientError, asyncio.TimeoutError, KeyError):
                    pass
                self.memory.append(sample)
                await asyncio.sleep(15)

    async def run(self) -> dict:
        await asyncio.gather(self.sampler(), self.tiny(), *(self.streamer(n) for n in range(8)))
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{self.url}/metrics") as resp:
                metrics = await resp.text()
        restarts = {line.split("{", 1)[1].split("}", 1)[0]: float(line.rsplit(" ", 1)[1])
                    for line in metrics.splitlines() if line.startswith("slp_engine_restarts_total{")}
        per_minute = [{"minute": m, "requests": len(v), "p50_ms": round(percentile(v, 50) * 1000),
                       "p99_ms": round(percentile(v, 99) * 1000)} for m, v in sorted(self.latency.items())]
        return {"hung": self.hung, "outcomes": dict(self.outcomes), "per_minute": per_minute,
                "memory": self.memory, "restarts": restarts}


def markdown(result: dict, minutes: float) -> str:
    lines = [f"# Soak: {minutes:g} minutes of mixed load (bench/soak.py)", "",
             f"**Hung requests: {result['hung']}** (must be 0). Engine restarts by reason: "
             f"{result['restarts'] or 'none'}.", "", "## Outcomes by kind", "", "| kind | count |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in sorted(result["outcomes"].items())]
    lines += ["", "## Latency per minute", "", "| minute | requests | p50 ms | p99 ms |", "|---|---|---|---|"]
    lines += [f"| {m['minute']} | {m['requests']} | {m['p50_ms']} | {m['p99_ms']} |" for m in result["per_minute"]]
    lines += ["", "## Memory (MB) over time", ""]
    keys = sorted({k for s in result["memory"] for k in s if k != "t_s"})
    lines += ["| t (s) | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    lines += ["| " + " | ".join([str(s["t_s"])] + [f"{s.get(k, 0):.0f}" for k in keys]) + " |" for s in result["memory"]]
    return "\n".join(lines) + "\n"


async def soak(opts: argparse.Namespace) -> dict:
    models_dir = opts.models_dir or default_models_dir()
    store = ModelStore(models_dir)
    store.ensure_default(progress=False)
    if store.resolve(B) is None:
        store.pull(B, progress=False)
    home = Path(tempfile.mkdtemp(prefix="slp-soak-"))
    port = free_port()
    agent = Agent({**agent_env(home, port, models_dir), "SLP_MAX_TOKENS": "64"}, home, port, A)
    agent.start()
    try:
        log(f"soaking for {opts.minutes:g} minutes")
        return await Soak(agent, opts.minutes, opts.hang_after).run()
    finally:
        await agent.stop()
        agent.kill_leftovers()
        shutil.rmtree(home, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--hang-after", type=float, default=120.0, help="seconds after which a request counts as hung")
    p.add_argument("--models-dir", type=Path)
    p.add_argument("--out", type=Path, default=RESULTS)
    opts = p.parse_args(sys.argv[1:] if argv is None else argv)
    result = asyncio.run(soak(opts))
    opts.out.mkdir(parents=True, exist_ok=True)
    (opts.out / "soak.json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result, opts.minutes)
    (opts.out / "soak.md").write_text(text)
    print(text)
    return 1 if result["hung"] else 0


if __name__ == "__main__":
    sys.exit(main())
