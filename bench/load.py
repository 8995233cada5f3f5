"""The load client: one keep-alive aiohttp session per target, a fixed number of requests shared by
`concurrency` workers, timestamps taken with perf_counter around the bytes and nothing else.

The hot loops do no parsing: a non-streaming request is timed from send to the last body byte; a
stream records (timestamp, bytes) per read and is parsed after it ended, so the client stays cheap.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass, field
from typing import Optional

import aiohttp


class BenchError(Exception):
    """A target answered something other than a success: the run stops and says what."""


# llama-server (cpp-httplib) closes a keep-alive connection idle for 5 s; dropping ours sooner keeps the
# client from sending into a connection the server is closing (a retry would blur the timings).
KEEPALIVE_S = 3.0
RETRYABLE = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)


def make_session() -> aiohttp.ClientSession:
    """One pooled, keep-alive session for one target (no total timeout: long streams are fine)."""
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=KEEPALIVE_S, force_close=False)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
                                 auto_decompress=False)


@dataclass
class Batch:
    """What one batch of requests against one target measured."""

    wall_s: float
    client_cpu_s: float
    latencies_s: list[float] = field(default_factory=list)     # non-streaming: send → last byte
    streams: list["StreamResult"] = field(default_factory=list)
    retries: int = 0  # requests sent again because a pooled connection had just been closed by the server


@dataclass
class StreamResult:
    ttft_s: float                 # send → first read holding a content token
    gaps_s: list[float]           # between consecutive content tokens (0 when two arrived in one read)
    tokens: int                   # content events seen
    completion_tokens: Optional[int]  # from the usage event, when the target sends one
    events: int                   # SSE `data:` events (what "streamed chunks" counts)
    total_s: float                # send → last byte
    decode_s: float               # first → last content token


def _content_events(reads: list[tuple[float, bytes]]) -> tuple[list[float], int, Optional[int]]:
    """(timestamps of content events, number of data events, usage.completion_tokens)."""
    times: list[float] = []
    events = 0
    usage = None
    buf = b""
    for t, data in reads:
        buf += data
        *lines, buf = buf.split(b"\n")
        for line in lines:
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            events += 1
            if payload == b"[DONE]" or not payload.startswith(b"{"):
                continue
            try:
                event = json.loads(payload)
            except ValueError:
                continue
            if event.get("usage"):
                usage = event["usage"].get("completion_tokens")
            for choice in event.get("choices") or ():
                delta = choice.get("delta") or {}
                text = delta.get("content") if "delta" in choice else choice.get("text")
                if text:
                    times.append(t)
                    break
    return times, events, usage


REQUEST_TIMEOUT_S = 300.0  # a request not answered completely by then fails the run (a hung target must not hang it)


async def _post_once(session: aiohttp.ClientSession, url: str, payload: bytes, headers: dict) -> float:
    t0 = time.perf_counter()
    async with asyncio.timeout(REQUEST_TIMEOUT_S), session.post(url, data=payload, headers=headers) as resp:
        body = await resp.read()
        if resp.status != 200:
            raise BenchError(f"{url} answered {resp.status}: {body[:300]!r}")
    return time.perf_counter() - t0


async def _stream_once(session: aiohttp.ClientSession, url: str, payload: bytes, headers: dict) -> StreamResult:
    reads: list[tuple[float, bytes]] = []
    t0 = time.perf_counter()
    # The outer deadline matters: aiohttp 3.14's iter_any() can wait forever on a chunked body that
    # turned malformed after the headers, even once the server closed the connection.
    async with asyncio.timeout(REQUEST_TIMEOUT_S), session.post(url, data=payload, headers=headers) as resp:
        if resp.status != 200:
            raise BenchError(f"{url} answered {resp.status}: {(await resp.read())[:300]!r}")
        async for chunk in resp.content.iter_any():
            reads.append((time.perf_counter(), chunk))
    end = time.perf_counter()
    times, events, usage = _content_events(reads)
    if not times:
        raise BenchError(f"{url} streamed no content tokens")
    gaps = [b - a for a, b in zip(times, times[1:])]
    return StreamResult(ttft_s=times[0] - t0, gaps_s=gaps, tokens=len(times), completion_tokens=usage,
                        events=events, total_s=end - t0, decode_s=times[-1] - times[0])


async def _measured(batch: Batch, session: aiohttp.ClientSession, url: str, payload: bytes, headers: dict,
                    stream: bool) -> None:
    """One request into `batch`; a pooled connection the server had just closed is retried once."""
    async def once() -> None:
        if stream:
            batch.streams.append(await _stream_once(session, url, payload, headers))
        else:
            batch.latencies_s.append(await _post_once(session, url, payload, headers))

    try:
        try:
            await once()
        except RETRYABLE:  # the server closed a pooled connection as we reused it: once more, timed anew
            batch.retries += 1
            await once()
    except TimeoutError:
        raise BenchError(f"{url} did not answer completely within {REQUEST_TIMEOUT_S:.0f} s")
    except aiohttp.ClientError as exc:
        raise BenchError(f"{url} failed: {exc.__class__.__name__}: {str(exc)[:300]}")


async def run_batch(session: aiohttp.ClientSession, url: str, body: dict, headers: dict, requests: int,
                    concurrency: int, stream: bool) -> Batch:
    """`requests` requests by `concurrency` workers; each worker sends its next one as soon as it is done."""
    payload = json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **headers}
    todo = iter(range(requests))
    batch = Batch(wall_s=0.0, client_cpu_s=0.0)

    async def worker() -> None:
        for _ in todo:  # shared iterator: the loop is single-threaded, so each index is taken once
            await _measured(batch, session, url, payload, headers, stream)

    cpu0, t0 = os.times(), time.perf_counter()
    tasks = [asyncio.ensure_future(worker()) for _ in range(min(concurrency, requests))]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:  # one failed: stop the others instead of leaving them running
            task.cancel()
    cpu1 = os.times()
    batch.wall_s = time.perf_counter() - t0
    batch.client_cpu_s = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    return batch


async def run_alternating(targets: list[tuple[aiohttp.ClientSession, str, dict, dict]], requests: int,
                          stream: bool) -> list[Batch]:
    """Concurrency 1, request by request, taking turns: A B, B A, A B, ... Drift in the machine's speed
    (other load, frequency, the engines' caches) then hits every target alike, which batches of one
    target after the other cannot promise. `targets`: (session, url, headers, body) each. Returns one
    Batch per target (wall_s: the time its own requests took)."""
    payloads = [json.dumps(body).encode() for *_, body in targets]
    batches = [Batch(wall_s=0.0, client_cpu_s=0.0) for _ in targets]
    for i in range(requests):
        order = list(range(len(targets))) if i % 2 == 0 else list(reversed(range(len(targets))))
        for k in order:
            session, url, headers, _ = targets[k]
            cpu0, t0 = os.times(), time.perf_counter()
            await _measured(batches[k], session, url, payloads[k], {"Content-Type": "application/json", **headers},
                            stream)
            cpu1 = os.times()
            batches[k].wall_s += time.perf_counter() - t0
            batches[k].client_cpu_s += (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    return batches


async def first_token_s(session: aiohttp.ClientSession, url: str, body: dict, headers: dict) -> float:
    """Seconds from now until the first content token of one streamed request arrives."""
    payload = json.dumps(body).encode()
    try:
        result = await _stream_once(session, url, payload, {"Content-Type": "application/json", **headers})
    except TimeoutError:
        raise BenchError(f"{url} did not answer completely within {REQUEST_TIMEOUT_S:.0f} s")
    except aiohttp.ClientError as exc:
        raise BenchError(f"{url} failed: {exc.__class__.__name__}: {str(exc)[:300]}")
    return result.ttft_s
