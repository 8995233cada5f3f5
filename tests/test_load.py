"""Bounded load on loopback: concurrency, a burst past the queue, a long sequential run.

Every request must end as a complete, well-formed response or a clean error; no stream is cut or
mixed with another; agent memory stays bounded. (Speed is measured in bench/, not here.)

The 64 streams run through the real engine (its slots, its batching, its ids), on the shared agent.
The 429 burst and the 1,000-request memory check are about the agent alone (its admission count; its own
memory), so they run over the stand-in engine (tests/standin_engine.py, named as such), whose streams
last as long as they are told to.
"""

from __future__ import annotations

import asyncio
import json

import aiohttp
import psutil

CHAT = {"model": "slp-orchestra-mini", "messages": [{"role": "user", "content": "Count to five."}]}


async def stream_one(session: aiohttp.ClientSession, url: str, max_tokens: int, **extra) -> dict:
    """One streamed request; returns what a careful client would check."""
    body = {**CHAT, "stream": True, "max_tokens": max_tokens, **extra}
    async with session.post(f"{url}/v1/chat/completions", json=body) as resp:
        if resp.status != 200:
            return {"status": resp.status, "retry_after": resp.headers.get("Retry-After"),
                    "error": (await resp.json())["error"]}
        events = []
        async for line in resp.content:
            if line.startswith(b"data: "):
                events.append(line[6:].strip())
    chunks = [json.loads(e) for e in events[:-1]]
    return {"status": 200, "done": events[-1] == b"[DONE]", "ids": {c.get("id") for c in chunks},
            "errors": [c for c in chunks if "error" in c],
            "finish": [c["choices"][0]["finish_reason"] for c in chunks if c.get("choices")
                       and c["choices"][0].get("finish_reason")]}


def run(coro):
    return asyncio.run(coro)


async def many_streams(url: str, count: int, max_tokens: int, **extra) -> list[dict]:
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
        return await asyncio.gather(*(stream_one(session, url, max_tokens, **extra) for _ in range(count)))


def test_64_concurrent_streams_all_complete_unmixed(agent):
    """On the shared agent (default slots and queue: 4 + 64 admitted): the streams all end before the next
    test, and nothing here changes its settings."""
    results = run(many_streams(agent.url, 64, 8))
    assert [r["status"] for r in results] == [200] * 64
    for r in results:
        assert r["done"] and not r["errors"], r
        assert len(r["ids"]) == 1, "each stream carries exactly one completion id (nothing interleaved)"
        assert r["finish"] == ["length"] or r["finish"] == ["stop"], r
    assert len({next(iter(r["ids"])) for r in results}) == 64


def test_burst_beyond_the_queue_gets_429_with_retry_after(fresh_standin_agent):
    agent = fresh_standin_agent(parallel="2", max_queue="2")
    agent.start()
    # Each stream lasts over 2 s (48 tokens, 50 ms apart): the whole burst arrives while 2 + 2 are admitted.
    results = run(many_streams(agent.url, 16, 48, standin={"token_delay": 0.05}))
    refused = [r for r in results if r["status"] == 429]
    served = [r for r in results if r["status"] == 200]
    assert refused and served and len(refused) + len(served) == 16
    assert len(served) >= 4
    for r in refused:
        assert r["retry_after"] and int(r["retry_after"]) >= 1
        assert r["error"]["code"] == "rate_limit_exceeded"
    for r in served:
        assert r["done"] and not r["errors"] and len(r["ids"]) == 1


def test_1000_sequential_requests_and_bounded_memory(fresh_standin_agent):
    agent = fresh_standin_agent()
    agent.start()
    agent_proc = psutil.Process(agent.state()["agent_pid"])

    async def sequential(n: int) -> list[int]:
        statuses = []
        async with aiohttp.ClientSession() as session:
            for i in range(n):
                async with session.post(f"{agent.url}/v1/chat/completions",
                                        json={**CHAT, "max_tokens": 1, "seed": i}) as resp:
                    body = await resp.json()
                    assert body["object"] == "chat.completion" and body["choices"], body
                    statuses.append(resp.status)
        return statuses

    run(sequential(100))  # warm-up: caches, pools, lazily imported code
    before = agent_proc.memory_info().rss
    statuses = run(sequential(1000))
    after = agent_proc.memory_info().rss
    print(f"agent RSS before {before / 1e6:.1f} MB, after 1,000 requests {after / 1e6:.1f} MB")
    assert statuses == [200] * 1000
    assert after - before < 20_000_000, f"agent RSS grew by {(after - before) / 1e6:.1f} MB"
    usage = agent.get("/v1/projects/general_chat/usage")
    assert usage["requests"] >= 1100
