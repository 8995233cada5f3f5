"""`python -m bench.models`: what serving several models costs, measured against bare engines.

Three rows (goals from the several-models work):
- **resident**: tiny requests at c=1 to a model that is already loaded while another model is loaded too,
  against the bare engine (the two taking turns request by request): added p50 latency, goal ≤ 1 ms.
- **cold load**: a first request to a second model that is not loaded (load + ready + answer), against the
  bare engine's own spawn → healthy → same answer: added time, goal ≤ +150 ms.
- **two at once**: a stream on each model started together, against the same two streams run one after the
  other (each engine alone): total tokens/s, goal ≥ 95 %. Measured with the default rule (the CPU compute
  gate, every engine with all cores' threads) and with `SLP_THREADS=1` (both decode at once on 1 core each).

Writes bench/results/models.md and models.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from bench.runner import default_models_dir, log, percentile
from bench.targets import Agent, DirectEngine, agent_env, engine_alias, free_port
from slp.engine.binary import find_engine
from slp.models.store import ModelStore
from slp.settings import Settings

RESULTS = Path(__file__).resolve().parent / "results"
A, B = "slp-orchestra-mini", "gemma-3-270m"


async def post(session: aiohttp.ClientSession, base: str, headers: dict, body: dict) -> float:
    started = time.perf_counter()
    async with session.post(f"{base}/chat/completions", json=body, headers=headers) as resp:
        await resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{base} answered {resp.status}")
    return time.perf_counter() - started


async def stream_tokens(session: aiohttp.ClientSession, base: str, headers: dict, model: str, tokens: int) -> int:
    body = {"model": model, "stream": True, "max_tokens": tokens, "ignore_eos": True,
            "messages": [{"role": "user", "content": "Count to one thousand."}]}
    count = 0
    async with session.post(f"{base}/chat/completions", json=body, headers=headers) as resp:
        async for line in resp.content:
            if line.startswith(b"data: {") and b'"content":"' in line:
                count += 1
    return count


def tiny(model: str) -> dict:
    return {"model": model, "max_tokens": 1, "messages": [{"role": "user", "content": "Hi"}]}


async def resident(direct: DirectEngine, agent: Agent, requests: int) -> dict:
    ds, ag = direct.open_session(), agent.open_session()
    for _ in range(5):
        await post(ds, direct.base, direct.headers, tiny(direct.model))
        await post(ag, agent.base, {}, tiny(A))
    d, a = [], []
    for _ in range(requests):  # taking turns, so drift in the machine's speed hits both alike
        d.append(await post(ds, direct.base, direct.headers, tiny(direct.model)))
        a.append(await post(ag, agent.base, {}, tiny(A)))
    return {"direct_p50_ms": percentile(d, 50) * 1000, "agent_p50_ms": percentile(a, 50) * 1000,
            "added_p50_ms": (percentile(a, 50) - percentile(d, 50)) * 1000}


async def cold_load(settings: Settings, binary: Path, model_b: Path, agent: Agent, repeats: int, logs: Path) -> dict:
    ag = agent.open_session()
    direct_s, agent_s = [], []
    for n in range(repeats):
        engine = DirectEngine(settings, binary, model_b, B, logs / f"direct-b-{n}.log")
        started = time.perf_counter()
        await engine.start()
        await post(engine.open_session(), engine.base, engine.headers, tiny(B))
        direct_s.append(time.perf_counter() - started)
        await engine.stop()
        agent.cli("model", "unload", B)
        started = time.perf_counter()
        await post(ag, agent.base, {}, tiny(B))
        agent_s.append(time.perf_counter() - started)
    return {"direct_s": statistics.median(direct_s), "agent_s": statistics.median(agent_s),
            "added_ms": (statistics.median(agent_s) - statistics.median(direct_s)) * 1000,
            "direct_all_s": direct_s, "agent_all_s": agent_s}


async def two_at_once(agent: Agent, tokens: int, repeats: int) -> dict:
    session = agent.open_session()
    await stream_tokens(session, agent.base, {}, A, 8)
    await stream_tokens(session, agent.base, {}, B, 8)
    alone, together = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        n = await stream_tokens(session, agent.base, {}, A, tokens)
        n += await stream_tokens(session, agent.base, {}, B, tokens)
        alone.append(n / (time.perf_counter() - started))
        started = time.perf_counter()
        counts = await asyncio.gather(stream_tokens(session, agent.base, {}, A, tokens),
                                      stream_tokens(session, agent.base, {}, B, tokens))
        together.append(sum(counts) / (time.perf_counter() - started))
    return {"alone_tok_s": statistics.median(alone), "together_tok_s": statistics.median(together),
            "ratio": statistics.median(together) / statistics.median(alone)}


async def measure(opts: argparse.Namespace) -> dict:
    models_dir = opts.models_dir or default_models_dir()
    store = ModelStore(models_dir)
    model_a = store.ensure_default(progress=False).path
    found = store.resolve(B)
    model_b = found.path if found is not None else store.pull(B, progress=False).path
    settings = Settings(_env_file=None, home=None)
    binary, build = find_engine(settings)
    work = Path(tempfile.mkdtemp(prefix="slp-bench-models-"))
    result: dict = {"machine": {"platform": platform.platform(), "python": platform.python_version()},
                    "engine_build": build}
    try:
        for label, extra in (("gate", {}), ("threads1", {"SLP_THREADS": "1"})):
            home = work / label
            port = free_port()
            env = {**agent_env(home, port, models_dir), **extra}
            agent = Agent(env, home, port, A)
            agent.start()
            try:
                agent.cli("model", "load", B)
                log(f"{label}: two models at once")
                result[f"two_at_once_{label}"] = await two_at_once(agent, opts.tokens, opts.repeats)
                if label == "gate":
                    direct = DirectEngine(Settings(_env_file=None, home=None), binary, model_a,
                                          engine_alias(store, model_a), work / "direct-a.log")
                    await direct.start()
                    try:
                        log("resident model: tiny requests, taking turns")
                        result["resident"] = await resident(direct, agent, opts.requests)
                    finally:
                        await direct.stop()
                    log("cold load of the second model")
                    result["cold_load"] = await cold_load(settings, binary, model_b, agent, opts.repeats, work)
            finally:
                await agent.stop()
                agent.kill_leftovers()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return result


def markdown(result: dict) -> str:
    r, c = result["resident"], result["cold_load"]
    g, t = result["two_at_once_gate"], result["two_at_once_threads1"]
    rows = [
        ("resident model, tiny c=1, added p50", "≤ 1 ms", f"{r['added_p50_ms']:+.2f} ms "
         f"({r['agent_p50_ms']:.1f} vs {r['direct_p50_ms']:.1f} ms)", r["added_p50_ms"] <= 1.0),
        ("cold load of a second model, added", "≤ +150 ms", f"{c['added_ms']:+.0f} ms "
         f"({c['agent_s']:.2f} vs {c['direct_s']:.2f} s)", c["added_ms"] <= 150),
        ("two models streaming at once vs each alone (default: compute gate)", "≥ 95 %",
         f"{100 * g['ratio']:.1f} % ({g['together_tok_s']:.0f} vs {g['alone_tok_s']:.0f} tok/s)", g["ratio"] >= 0.95),
        ("the same with SLP_THREADS=1 (both decode at once)", "(for comparison)",
         f"{100 * t['ratio']:.1f} % ({t['together_tok_s']:.0f} vs {t['alone_tok_s']:.0f} tok/s)", None),
    ]
    lines = ["# Several models: bench/models.py", "",
             f"Machine: {result['machine']['platform']}; engine {result['engine_build'].get('commit', '?')} "
             f"({result['engine_build'].get('preset', '?')}).", "",
             "| row | goal | measured | |", "|---|---|---|---|"]
    for label, goal, measured, ok in rows:
        lines.append(f"| {label} | {goal} | {measured} | {'' if ok is None else 'pass' if ok else 'FAIL'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.models", description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=100, help="tiny requests per side for the resident row")
    p.add_argument("--repeats", type=int, default=3, help="repeats of the cold-load and two-at-once rows")
    p.add_argument("--tokens", type=int, default=128, help="tokens per stream in the two-at-once row")
    p.add_argument("--models-dir", type=Path)
    p.add_argument("--out", type=Path, default=RESULTS)
    opts = p.parse_args(sys.argv[1:] if argv is None else argv)
    result = asyncio.run(measure(opts))
    opts.out.mkdir(parents=True, exist_ok=True)
    (opts.out / "models.json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    (opts.out / "models.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
