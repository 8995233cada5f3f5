"""The services every proxied request shares, kept on the app (see `keys`): the project cache and the usage
recorder (admission is the engine pool's: a request's lease counts it). They live apart from the proxy so
that the app's typed keys can name them without importing the proxy, and so each can be set up and torn
down on its own."""

from __future__ import annotations

import asyncio
import logging
from typing import Optional

from slp.projects.schema import Project
from slp.projects.store import ProjectStore

log = logging.getLogger("slp.proxy")

Session = tuple[str, list]  # (session_id, the caller's messages) of a request to store as a conversation


class ProjectCache:
    """Projects as every request needs them, without a thread hop and a query each time.

    The store bumps `revision` on each committed project change (all of them go through this process),
    which empties the cache; the revision is read before a fetch, so a change racing a fetch is never
    cached as current.
    """

    MAX_ENTRIES = 1024

    def __init__(self, store: ProjectStore):
        self._store = store
        self._revision = -1
        self._cache: dict[Optional[str], Project] = {}

    async def get(self, ref: Optional[str]) -> Project:
        """The project named `ref` (id or name), or the active one for None. Raises ProjectNotFound."""
        revision = self._store.revision
        if revision != self._revision:
            self._cache.clear()
            self._revision = revision
        project = self._cache.get(ref)
        if project is None:
            project = await asyncio.to_thread(self._store.get, ref) if ref else await asyncio.to_thread(self._store.active)
            # Cache it only if no change committed while it was read (it may predate that change).
            if self._store.revision == revision == self._revision and len(self._cache) < self.MAX_ENTRIES:
                self._cache[ref] = project
        return project


class UsageRecorder:
    """Stores usage and conversations in the project store from one background task, in order.

    Records are written in batches, one thread hop each, at most BATCH_SECONDS after the first of a
    batch: a hop per request cost more agent CPU than the writes. Readers call `flush()` first, so a
    usage or session read always includes every answered request.
    """

    BATCH_SECONDS = 0.25

    def __init__(self, store: ProjectStore):
        self._store = store
        self._queue: asyncio.Queue = asyncio.Queue(maxsize=10000)
        self._task: Optional[asyncio.Task] = None
        self._now = asyncio.Event()

    def record(self, project_id: str, usage: Optional[dict], session: Optional[Session],
               assistant: Optional[dict], sources: Optional[list[dict]] = None) -> None:
        try:
            self._queue.put_nowait((project_id, usage, session, assistant, sources))
        except asyncio.QueueFull:
            log.warning("usage recorder is behind; dropping one record for project %s", project_id)

    def start(self) -> None:
        self._task = asyncio.create_task(self._drain(), name="slp-usage-recorder")

    async def stop(self) -> None:
        """Write what is queued, then stop (graceful shutdown keeps every acknowledged exchange)."""
        await self.flush()
        if self._task:
            self._task.cancel()

    async def flush(self) -> None:
        """Return once everything recorded before this call is in the store (later records do not
        hold it up: it waits for a marker queued behind them, not for an empty queue)."""
        if self._task is None or self._task.done():
            return
        written = asyncio.get_running_loop().create_future()
        self._now.set()
        await self._queue.put(written)
        await written

    async def _drain(self) -> None:
        while True:
            batch = [await self._queue.get()]
            if not self._now.is_set():
                try:
                    await asyncio.wait_for(self._now.wait(), self.BATCH_SECONDS)
                except asyncio.TimeoutError:
                    pass
            self._now.clear()
            while len(batch) < 512 and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            records = [item for item in batch if not isinstance(item, asyncio.Future)]
            try:
                if records:
                    await asyncio.to_thread(self._write_all, records)
            except Exception:  # noqa: BLE001 - the thread hop itself failed; accounting goes on
                log.exception("could not record usage")
            for marker in batch:
                if isinstance(marker, asyncio.Future) and not marker.done():
                    marker.set_result(None)

    def _write_all(self, batch: list) -> None:
        for item in batch:
            try:
                self._write(*item)
            except Exception:  # noqa: BLE001
                log.exception("could not record usage for project %s", item[0])

    def _write(self, project_id: str, usage: Optional[dict], session: Optional[Session],
               assistant: Optional[dict], sources: Optional[list[dict]]) -> None:
        usage = usage or {}
        self._store.record_usage(project_id, usage.get("prompt_tokens", usage.get("input_tokens")),
                                 usage.get("completion_tokens", usage.get("output_tokens")))
        if session and assistant is not None:
            session_id, messages = session
            self._store.record_exchange(project_id, session_id, messages, assistant, usage or None, sources)
