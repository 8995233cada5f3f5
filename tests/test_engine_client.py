"""The agent's engine client against a real llama-server: replies, streams, pooling, the engine closing
an idle connection, the engine dying mid-stream, and the limit on requests at once."""

from __future__ import annotations

import asyncio
import json
import signal
import time

import pytest

from conftest import bare_engine, free_port
from slp.server import engine_client
from slp.server.engine_client import EngineClient, EngineStreamError

HEADERS = {"Content-Type": "application/json"}


def body(max_tokens: int, stream: bool = False) -> bytes:
    return json.dumps({"messages": [{"role": "user", "content": "Count from one to twenty."}],
                       "max_tokens": max_tokens, "stream": stream, "ignore_eos": True}).encode()


@pytest.fixture
def engine(engine_binary, default_model, tmp_path):
    """A bare llama-server on loopback (no agent), stopped afterwards."""
    port = free_port()
    argv = [str(engine_binary), "--model", str(default_model), "--host", "127.0.0.1", "--port", str(port),
            "--parallel", "2", "--no-webui"]
    with bare_engine(argv, port, tmp_path / "engine.log") as proc:
        yield proc, port


@pytest.fixture
async def client():
    client = EngineClient(max_connections=4)
    yield client
    await client.close()


def chat(client: EngineClient, port: int, data: bytes):
    return client.post("127.0.0.1", port, "/v1/chat/completions", data, HEADERS)


async def closed_by_the_engine(client: EngineClient, port: int, timeout: float = 15) -> None:
    """Wait until the engine has closed the pooled idle connection (llama-server's 5 s idle timeout)."""
    deadline = time.monotonic() + timeout
    while not all(conn.reader.at_eof() for conn in client._idle[("127.0.0.1", port)]):
        assert time.monotonic() < deadline, f"the engine kept an idle connection open for {timeout}s"
        await asyncio.sleep(0.1)


async def while_the_engine_streams(chunks, count: int) -> None:
    """Let `count` more chunks of a running stream arrive: time in which the engine demonstrably works,
    so anything else that could run, would have run (a condition, not a fixed sleep)."""
    for _ in range(count):
        await chunks.__anext__()


async def test_reply_and_stream_then_the_connection_is_reused(engine, client):
    _, port = engine
    async with await chat(client, port, body(4)) as reply:
        assert reply.status == 200 and reply.content_type == "application/json"
        data = json.loads(await reply.read())
    assert data["usage"]["completion_tokens"] == 4
    async with await chat(client, port, body(8, True)) as reply:
        assert reply.status == 200 and reply.content_type == "text/event-stream"
        streamed = b"".join([chunk async for chunk in reply.iter_chunks()])
    events = [line for line in streamed.split(b"\n") if line.startswith(b"data: ")]
    assert events[-1] == b"data: [DONE]" and len(events) >= 9
    assert len(client._idle[("127.0.0.1", port)]) == 1  # one connection served both, kept alive


async def test_an_error_reply_is_read_like_any_other(engine, client):
    _, port = engine
    bad = json.dumps({"messages": "not a list"}).encode()
    async with await chat(client, port, bad) as reply:
        assert reply.status >= 400
        assert "error" in json.loads(await reply.read())


async def test_a_connection_the_engine_closed_while_idle_is_retried(engine, client, monkeypatch):
    """llama-server drops keep-alive connections idle for 5 s. The client normally lets them go first;
    with that disabled here, the engine really closes them, and requests must still succeed. Two clients
    each hold one such connection, so one wait for the engine's timeout serves both cases."""
    _, port = engine
    monkeypatch.setattr(engine_client, "KEEPALIVE_S", 60.0)
    racing = EngineClient(max_connections=4)
    try:
        for each in (client, racing):
            async with await chat(each, port, body(1)) as reply:
                await reply.read()
        await asyncio.gather(closed_by_the_engine(client, port), closed_by_the_engine(racing, port))
        taken: dict[EngineClient, list[bool]] = {client: [], racing: []}
        for each in (client, racing):
            def recording(host, port, each=each, connection=each._connection):
                async def take():
                    conn, reused = await connection(host, port)
                    taken[each].append(reused)
                    return conn, reused
                return take()
            each._connection = recording
        async with await chat(client, port, body(1)) as reply:
            assert reply.status == 200 and json.loads(await reply.read())["usage"]["completion_tokens"] == 1
        assert taken[client] == [False]  # the engine's close had arrived: the pooled one was dropped unused
        # Now the race: the close arrives only as the connection is reused. Skipping the check makes the
        # client really send into the closed connection; it must notice and send again on a new one.
        monkeypatch.setattr(engine_client._Connection, "usable", lambda self: True)
        async with await chat(racing, port, body(1)) as reply:
            assert reply.status == 200 and json.loads(await reply.read())["usage"]["completion_tokens"] == 1
        assert taken[racing] == [True, False]
    finally:
        await racing.close()


async def test_engine_death_mid_stream_is_an_error_not_an_end(engine, client):
    proc, port = engine
    async with await chat(client, port, body(2000, True)) as reply:
        chunks = reply.iter_chunks()
        await chunks.__anext__()
        proc.send_signal(signal.SIGKILL)
        with pytest.raises(EngineStreamError):
            async for _ in chunks:
                pass


async def test_requests_beyond_the_limit_wait_their_turn(engine):
    _, port = engine
    client = EngineClient(max_connections=1)
    order: list[str] = []

    async def request(name: str):
        reply = await chat(client, port, body(1))
        order.append(f"{name} admitted")
        return reply

    try:
        first = await chat(client, port, body(2000, True))
        chunks = first.iter_chunks()
        await chunks.__anext__()
        second = asyncio.ensure_future(request("second"))
        # The engine has two slots: were the client's only slot not taken, the second request would be
        # answered while the first streams on.
        await while_the_engine_streams(chunks, 10)
        order.append("first closed")
        first.close()  # as when a client disconnects: the engine stops that generation
        async with await asyncio.wait_for(second, 30) as reply:
            assert reply.status == 200 and json.loads(await reply.read())["usage"]["completion_tokens"] == 1
        assert order == ["first closed", "second admitted"], "the second request waited for the only slot"

        # A config reload that raises the limit lets a waiting request in at once, while the other streams.
        order.clear()
        held = await chat(client, port, body(2000, True))
        held_chunks = held.iter_chunks()
        await held_chunks.__anext__()
        third = asyncio.ensure_future(request("third"))
        await while_the_engine_streams(held_chunks, 10)
        order.append("limit raised")
        client.max_connections = 2
        async with await asyncio.wait_for(third, 30) as reply:
            assert reply.status == 200
        assert order == ["limit raised", "third admitted"]
        await held_chunks.__anext__()  # the held stream was never interrupted
        held.close()
    finally:
        await client.close()
