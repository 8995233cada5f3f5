"""`python -m bench.ollama`: what Ollama's API costs over the agent's own OpenAI route, on one agent.

The same tiny chat (one token, temperature 0) goes through `POST /api/chat` (`"stream": false`) and
`POST /v1/chat/completions`, the two taking turns request by request over keep-alive connections, and the
added p50 latency of the Ollama route is reported (goal: ≤ 0.3 ms). Then 128-token streams, taking turns:
tokens/s of `/api/chat`'s NDJSON stream against the OpenAI SSE stream (goal: ≥ 99 %). Both routes lease
the same engine, so the difference is the translation alone. Writes `bench/results/ollama.md`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import sys
import time
from pathlib import Path

import aiohttp

from bench.runner import default_models_dir
from bench.targets import foreground_agent

RESULTS = Path(__file__).resolve().parent / "results"
MODEL = "slp-orchestra-mini"
MESSAGES = [{"role": "user", "content": "Say hi"}]


async def tiny(session: aiohttp.ClientSession, base: str, ollama: bool) -> float:
    """Seconds for one tiny chat through either route."""
    if ollama:
        url, body = base + "/api/chat", {"model": MODEL, "messages": MESSAGES, "stream": False,
                                         "options": {"num_predict": 1, "temperature": 0}}
    else:
        url, body = base + "/v1/chat/completions", {"model": MODEL, "messages": MESSAGES, "max_tokens": 1,
                                                    "temperature": 0}
    started = time.perf_counter()
    async with session.post(url, json=body) as resp:
        await resp.read()
        if resp.status != 200:
            raise SystemExit(f"{url}: HTTP {resp.status}")
    return time.perf_counter() - started


async def stream(session: aiohttp.ClientSession, base: str, ollama: bool, tokens: int) -> float:
    """Decode tokens/s of one stream (first content to last), counting the tokens the route reports."""
    if ollama:
        url, body = base + "/api/chat", {"model": MODEL, "messages": MESSAGES, "stream": True,
                                         "options": {"num_predict": tokens, "temperature": 0, "ignore_eos": True}}
    else:
        url, body = base + "/v1/chat/completions", {"model": MODEL, "messages": MESSAGES, "stream": True,
                                                    "max_tokens": tokens, "temperature": 0, "ignore_eos": True,
                                                    "stream_options": {"include_usage": True}}
    first = last = None
    count = 0
    async with session.post(url, json=body) as resp:
        if resp.status != 200:
            raise SystemExit(f"{url}: HTTP {resp.status}")
        async for line in resp.content:
            line = line.strip()
            if not line or line == b"data: [DONE]":
                continue
            event = json.loads(line.removeprefix(b"data: "))
            if ollama:
                if event.get("done"):
                    count = event["eval_count"]
                elif event.get("message", {}).get("content"):
                    first = first or time.perf_counter()
                    last = time.perf_counter()
            else:
                if event.get("usage"):
                    count = event["usage"]["completion_tokens"]
                if event.get("choices") and event["choices"][0]["delta"].get("content"):
                    first = first or time.perf_counter()
                    last = time.perf_counter()
    if first is None or last is None or last <= first or count < 2:
        raise SystemExit(f"{url}: no stream to time")
    if count != tokens:  # both routes must decode the same work (an early end of text is not a faster stream)
        raise SystemExit(f"{url}: {count} tokens, not the {tokens} asked for")
    return (count - 1) / (last - first)


async def measure(base: str, requests: int, streams: int, tokens: int) -> dict:
    async with aiohttp.ClientSession() as session:
        for ollama in (False, True):  # warm both routes (the Ollama module loads on first use)
            for _ in range(10):
                await tiny(session, base, ollama)
        latency: dict[bool, list[float]] = {False: [], True: []}
        for i in range(requests):
            for ollama in ((False, True) if i % 2 == 0 else (True, False)):
                latency[ollama].append(await tiny(session, base, ollama))
        rate: dict[bool, list[float]] = {False: [], True: []}
        for i in range(streams):
            for ollama in ((False, True) if i % 2 == 0 else (True, False)):
                rate[ollama].append(await stream(session, base, ollama, tokens))
    openai_p50, ollama_p50 = (statistics.median(latency[k]) * 1000 for k in (False, True))
    openai_rate, ollama_rate = (statistics.median(rate[k]) for k in (False, True))
    # Each pair ran back to back, so its difference (ratio) cancels what drifts between pairs on a shared VM.
    added = [(o - a) * 1000 for a, o in zip(latency[False], latency[True])]
    ratios = [o / a for a, o in zip(rate[False], rate[True])]
    return {"requests": requests, "streams": streams, "tokens": tokens,
            "openai_p50_ms": openai_p50, "ollama_p50_ms": ollama_p50, "added_p50_ms": statistics.median(added),
            "added_iqr_ms": quartiles(added), "openai_tok_s": openai_rate, "ollama_tok_s": ollama_rate,
            "stream_ratio": statistics.median(ratios), "ratio_iqr": quartiles(ratios)}


def quartiles(values: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(values, n=4)
    return q[0], q[2]


def report(r: dict) -> str:
    added_ok = "pass" if r["added_p50_ms"] <= 0.3 else "**FAIL**"
    ratio_ok = "pass" if r["stream_ratio"] >= 0.99 else "**FAIL**"
    return "\n".join([
        f"# Ollama's API against the OpenAI route, one agent ({time.strftime('%Y-%m-%d %H:%M')})",
        "",
        f"{r['requests']} tiny chats per route (taking turns), {r['streams']} streams of {r['tokens']} tokens "
        "per route (taking turns). Per route: medians. Measured: the median over the pairs (each pair back to "
        "back) of the added time and of the tokens/s ratio, with the pairs' interquartile range: what this "
        "machine's noise leaves of the difference.",
        "",
        "| target | limit | `/v1/chat/completions` | `/api/chat` | measured | result |",
        "|---|---|---|---|---|---|",
        f"| tiny chat p50, added by `/api/chat` | ≤ 0.3 ms | {r['openai_p50_ms']:.2f} ms | {r['ollama_p50_ms']:.2f} ms "
        f"| {r['added_p50_ms']:+.2f} ms (IQR {r['added_iqr_ms'][0]:+.2f} to {r['added_iqr_ms'][1]:+.2f}) | {added_ok} |",
        f"| stream decode tokens/s, `/api/chat` vs OpenAI | ≥ 99 % | {r['openai_tok_s']:.1f} | {r['ollama_tok_s']:.1f} "
        f"| {r['stream_ratio'] * 100:.1f} % (IQR {r['ratio_iqr'][0] * 100:.1f} to {r['ratio_iqr'][1] * 100:.1f} %) "
        f"| {ratio_ok} |",
        "",
    ])


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.ollama", description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=200, help="tiny chats per route (default 200)")
    p.add_argument("--streams", type=int, default=16, help="streams per route (default 16)")
    p.add_argument("--tokens", type=int, default=128, help="tokens per stream (default 128)")
    p.add_argument("--out", type=Path, default=RESULTS / "ollama.md")
    a = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a `timeout` stops the run: still stop its agent
    with foreground_agent("slp-bench-ollama-", default_models_dir()) as (port, _):
        result = asyncio.run(measure(f"http://127.0.0.1:{port}", a.requests, a.streams, a.tokens))
    text = report(result)
    a.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main(sys.argv[1:])
