"""The agent's HTTP/1.1 client for its own engine: pooled keep-alive connections over asyncio streams.

Why not aiohttp's ClientSession here: its per-request machinery (URL objects, cookie jar, tracing hooks,
header multidicts, response objects) was about 0.4 ms of the 1.6 ms the agent added at concurrency 1 on the
2-core reference machine (bench/, README "Performance"). The peer is always one llama-server on
loopback, speaking plain HTTP/1.1 with Content-Length or chunked bodies, so a small client covers it.
Everything else the agent fetches (health probes, metrics) still goes through aiohttp.

- At most `max_connections` requests at once (the engine's HTTP threads); later ones wait here, first come first
  served, rather than in the engine's accept queue in no order.
- An idle connection is dropped after KEEPALIVE_S, before the engine's own 5 s idle timeout closes it;
  one the engine closed anyway fails at once, before any response byte, and the request is sent again
  on another connection (it was never processed). A connection lost later is an error, not a retry:
  the engine may have run the request already.
- `abort()` ends every request sent or waiting now, at once: the supervisor killed the engine (a stall, a
  hang), and a process frozen by a tracer or stuck in a driver may keep its sockets open for minutes.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import AsyncIterator

KEEPALIVE_S = 4.0
CONNECT_TIMEOUT_S = 5.0
STALE_RETRIES = 4
STALE_WINDOW_S = 1.0  # a closed idle connection fails at once; later, the engine may have run the request
_MAX_HEAD = 64 * 1024


class EngineConnectionError(Exception):
    """The engine could not be reached, or hung up before answering."""


class EngineStreamError(Exception):
    """The engine's reply broke off (connection lost or malformed framing) after it had begun."""


class _Connection:
    __slots__ = ("key", "reader", "writer", "idle_since", "aborted")

    def __init__(self, key: tuple[str, int], reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.key, self.reader, self.writer, self.idle_since = key, reader, writer, 0.0
        self.aborted = False

    def usable(self) -> bool:
        return (not self.writer.is_closing() and not self.reader.at_eof()
                and time.monotonic() - self.idle_since < KEEPALIVE_S)

    def close(self) -> None:
        self.writer.close()

    def abort(self) -> None:
        """Fail its reads now (they raise ConnectionAbortedError) and drop the socket without a goodbye."""
        self.aborted = True
        self.reader.set_exception(ConnectionAbortedError("the engine was killed"))
        self.writer.transport.abort()


class EngineResponse:
    """One reply: `status`, `content_type`, then `read()` or `iter_chunks()` (never both), and
    `close()` to drop the connection early (the engine then stops generating)."""

    def __init__(self, client: "EngineClient", conn: _Connection, status: int, headers: dict[str, str]):
        self._client, self._conn = client, conn
        self.status, self.headers = status, headers
        self.content_type = headers.get("content-type", "").split(";", 1)[0].strip()
        self._done = False

    async def __aenter__(self) -> "EngineResponse":
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    async def read(self) -> bytes:
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            return b"".join([chunk async for chunk in self.iter_chunks()])
        try:
            if "content-length" in self.headers:
                body = await self._conn.reader.readexactly(int(self.headers["content-length"]))
                self._finish(reusable=self.headers.get("connection", "").lower() != "close")
            else:
                body = await self._conn.reader.read()  # until the engine closes the connection
                self._finish(reusable=False)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError) as exc:
            self.close()
            raise EngineStreamError(f"engine reply broke off: {exc.__class__.__name__}") from None
        return body

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives (for a chunked reply: each chunk's data, framing removed). One
        generator, so a streamed chunk costs the proxy one hop."""
        if self.headers.get("transfer-encoding", "").lower() != "chunked":
            yield await self.read()
            return
        reader = self._conn.reader
        try:
            while True:
                size_line = await reader.readuntil(b"\r\n")
                size = int(size_line.split(b";", 1)[0], 16)
                if size == 0:
                    while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers, if any
                        pass
                    self._finish(reusable=self.headers.get("connection", "").lower() != "close")
                    return
                data = await reader.readexactly(size + 2)
                if not data.endswith(b"\r\n"):
                    raise ValueError("chunk not followed by CRLF")
                yield data[:-2]
        except (asyncio.IncompleteReadError, ConnectionError, ValueError) as exc:
            self.close()
            raise EngineStreamError(f"engine reply broke off: {exc.__class__.__name__}") from None

    def _finish(self, reusable: bool) -> None:
        if not self._done:
            self._done = True
            self._client._release(self._conn, reusable)

    def close(self) -> None:
        """Done with this reply: a fully read one returns its connection to the pool, else it is closed."""
        if not self._done:
            self._conn.close()
            self._finish(reusable=False)


class EngineClient:
    """POSTs to one engine at a time (its port changes when it restarts: connections to an old port
    are simply never reused)."""

    def __init__(self, max_connections: int):
        self._idle: dict[tuple[str, int], deque[_Connection]] = {}
        self._slots = asyncio.Semaphore(max_connections)
        self._max = max_connections
        self._shrink = 0  # slots to withhold as requests end, after max_connections was lowered
        self._closed = False
        self._busy: set[_Connection] = set()  # connections a request is using (sent, or reading the reply)
        self._aborts = 0  # abort() calls so far: a request that began before one is not sent
        self._heads: dict[tuple[str, int, str], tuple[dict[str, str], bytes]] = {}  # see _head

    @property
    def max_connections(self) -> int:
        """Requests sent to the engine at once; later ones wait here in order."""
        return self._max

    @max_connections.setter
    def max_connections(self, value: int) -> None:
        """Resize (config reload): growing frees slots at once, shrinking takes effect as requests end."""
        delta = value - self._max
        if delta > 0:
            undone = min(delta, self._shrink)  # first cancel a shrink that has not happened yet
            self._shrink -= undone
            for _ in range(delta - undone):
                self._slots.release()
        else:
            self._shrink -= delta
        self._max = value

    async def post(self, host: str, port: int, path: str, body: bytes, headers: dict[str, str]) -> EngineResponse:
        """Send; return once the status line and headers are in. Raises EngineConnectionError."""
        if self._closed:
            raise EngineConnectionError("engine client closed")
        request = self._head(host, port, path, headers) + b"%d\r\n\r\n" % len(body) + body
        aborts = self._aborts
        await self._slots.acquire()
        try:
            for attempt in range(1, STALE_RETRIES + 1):
                if self._aborts != aborts:  # the engine it was meant for was killed while this waited
                    raise EngineConnectionError("engine connection aborted: the engine was killed")
                conn, reused = await self._connection(host, port)
                if self._aborts != aborts:
                    conn.close()
                    raise EngineConnectionError("engine connection aborted: the engine was killed")
                self._busy.add(conn)
                sent = time.monotonic()
                try:
                    conn.writer.write(request)
                    status, fields = await self._read_head(conn.reader)
                except (asyncio.IncompleteReadError, ConnectionError, OSError) as exc:
                    self._drop(conn)
                    if conn.aborted:
                        raise EngineConnectionError("engine connection aborted: the engine was killed") from None
                    if reused and attempt < STALE_RETRIES and time.monotonic() - sent < STALE_WINDOW_S:
                        continue  # the engine had closed it: the request was not processed
                    raise EngineConnectionError(f"engine connection failed: {exc.__class__.__name__}") from None
                except ValueError as exc:
                    self._drop(conn)
                    raise EngineConnectionError(f"engine sent a malformed reply: {exc}") from None
                except BaseException:  # cancelled: the connection is in an unknown state
                    self._drop(conn)
                    raise
                return EngineResponse(self, conn, status, fields)
            raise AssertionError("unreachable")
        except BaseException:
            self._give_slot()  # the response that would have given it back was never made
            raise

    def _head(self, host: str, port: int, path: str, headers: dict[str, str]) -> bytes:
        """The request head up to the Content-Length value, made once per engine port, path and headers."""
        key = (host, port, path)
        known = self._heads.get(key)
        if known is not None and known[0] == headers:
            return known[1]
        lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", *(f"{k}: {v}" for k, v in headers.items())]
        head = ("\r\n".join(lines) + "\r\nContent-Length: ").encode("latin-1")
        if len(self._heads) >= 64:
            self._heads.clear()
        self._heads[key] = (dict(headers), head)
        return head

    async def _connection(self, host: str, port: int) -> tuple[_Connection, bool]:
        key = (host, port)
        if key not in self._idle:  # a new engine (restarts pick a new port): the old one's are useless
            for old in self._idle.values():
                while old:
                    old.pop().close()
            self._idle = {key: deque()}
        idle = self._idle[key]
        while idle:
            conn = idle.pop()  # most recently used first: the least likely to have been closed
            if conn.usable():
                return conn, True
            conn.close()
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port, limit=_MAX_HEAD),
                                                    CONNECT_TIMEOUT_S)
        except (OSError, asyncio.TimeoutError) as exc:
            raise EngineConnectionError(f"engine connection failed: {exc.__class__.__name__}: {exc}") from None
        return _Connection(key, reader, writer), False

    @staticmethod
    async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
        try:
            raw = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            raise ValueError("reply headers too large") from None
        lines = raw.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
            raise ValueError(f"bad status line {lines[0][:80]!r}")
        fields = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                fields[name.strip().lower()] = value.strip()
        return int(parts[1]), fields

    def _drop(self, conn: _Connection) -> None:
        self._busy.discard(conn)
        conn.close()

    def abort(self) -> None:
        """The engine was killed: every request to it, sent or waiting for a slot, fails now (its reads
        raise, so the proxy answers as for a dead engine), without waiting for the socket to close."""
        self._aborts += 1
        for conn in list(self._busy):
            conn.abort()
        for idle in self._idle.values():
            while idle:
                idle.pop().close()

    def _release(self, conn: _Connection, reusable: bool) -> None:
        self._busy.discard(conn)
        if reusable and not self._closed and not conn.writer.is_closing() and conn.key in self._idle:
            conn.idle_since = time.monotonic()
            self._idle[conn.key].append(conn)
        else:
            conn.close()
        self._give_slot()

    def _give_slot(self) -> None:
        if self._shrink > 0:
            self._shrink -= 1
        else:
            self._slots.release()

    async def close(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            while idle:
                idle.pop().close()
