"""What the agent tells operators: Prometheus metrics and a structured request log.

Both stay off the hot path's critical section: metric updates are a few in-memory additions, and
request-log lines are buffered and written by a thread once a second (a rotating JSON-lines file), so
the event loop never waits on the disk. Engine gauges (RSS, CPU) and the engine's own /metrics are read only
when /metrics is scraped.
"""

from __future__ import annotations

import asyncio
import json
import logging
import logging.handlers
import threading
import time
from pathlib import Path
from typing import Optional

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from slp.engine.supervisor import EngineState
from slp.server.errors import APIError
from slp.server.record import RECORD, RequestRecord

log = logging.getLogger("slp.server")

DEGRADED_REASON = "crash-at-load"  # why an engine runs in safe mode (the only cause there is)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    """One registry per app (tests run several apps in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("slp_requests", "Requests answered, by route, status and project",
                                ["route", "status", "project"], registry=r)
        self.latency = Histogram("slp_request_seconds", "Time to the last byte of a response", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("slp_time_to_first_token_seconds", "Time to the first streamed event", ["route"],
                              buckets=LATENCY_BUCKETS, registry=r)
        self.tokens = Counter("slp_tokens", "Tokens processed, by direction and project", ["direction", "project"],
                              registry=r)
        self.in_flight = Gauge("slp_requests_in_flight", "Requests being served or waiting for the engine",
                               registry=r)
        self.queued = Gauge("slp_requests_queued", "Requests beyond the engine's slots, waiting", registry=r)
        self.disconnects = Counter("slp_client_disconnects", "Clients that left before their response ended",
                                   ["route"], registry=r)
        self.engine_state = Gauge("slp_engine_state", "1 for each loaded engine's current state", ["model", "state"],
                                  registry=r)
        self.engine_restarts = Counter("slp_engine_restarts", "Engine restarts by model and reason (crash, "
                                       "crash-at-load, hang, stall, start-timeout, spawn-failed, user, config, "
                                       "model)", ["model", "reason"], registry=r)
        self.engine_degraded = Gauge("slp_engine_degraded", "1 while an engine serves in safe mode (--no-repack, "
                                     "flash attention off), by model and why (crash-at-load: it crashed twice "
                                     "at load)", ["model", "reason"], registry=r)
        self.engine_rss = Gauge("slp_engine_rss_bytes", "Engine resident memory", ["model"], registry=r)
        self.engine_cpu = Gauge("slp_engine_cpu_seconds", "Engine CPU time (user+system)", ["model"], registry=r)
        self.engine_loads = Counter("slp_engine_loads", "Engines loaded, by model", ["model"], registry=r)
        self.engine_unloads = Counter("slp_engine_unloads", "Engines unloaded, by model and reason (unload, "
                                      "evicted, expired)", ["model", "reason"], registry=r)
        self.engine_load_seconds = Histogram("slp_engine_load_seconds", "Time from load to ready", ["model"],
                                             buckets=LATENCY_BUCKETS, registry=r)
        self.engine_leases = Gauge("slp_engine_leases", "Requests holding each engine", ["model"], registry=r)
        self.engine_queued = Gauge("slp_engine_queued", "Requests each engine has beyond its slots", ["model"],
                                   registry=r)
        self.memory_budget = Gauge("slp_memory_budget_bytes", "Memory the engines may hold together", registry=r)
        self.memory_reserved = Gauge("slp_memory_reserved_bytes", "Memory the loaded engines hold or are expected "
                                     "to hold", registry=r)
        self.waiting_for_memory = Gauge("slp_loads_waiting_for_memory", "Loads waiting for memory", registry=r)
        self.agent_rss = Gauge("slp_agent_rss_bytes", "Agent resident memory", registry=r)
        self.prompt_cache_saves = Counter("slp_prompt_cache_saves", "Project prefixes saved to disk as their engine "
                                          "stopped, by model", ["model"], registry=r)
        self.prompt_cache_restores = Counter("slp_prompt_cache_restores", "Project prefixes restored from disk into "
                                             "an engine, by model", ["model"], registry=r)
        self.prompt_cache_misses = Counter("slp_prompt_cache_misses", "Project requests first at an engine with no "
                                           "saved prefix to restore, by model", ["model"], registry=r)
        self.prompt_cache_discards = Counter("slp_prompt_cache_discards", "Saved prefixes deleted unrestored "
                                             "(another key, corrupt, refused by the engine), by model", ["model"],
                                             registry=r)
        self.prompt_cache_restore_seconds = Histogram("slp_prompt_cache_restore_seconds", "Time to restore a saved "
                                                      "prefix (check and engine restore)", buckets=LATENCY_BUCKETS,
                                                      registry=r)
        self.prompt_cache_save_seconds = Histogram("slp_prompt_cache_save_seconds", "Time an engine's stop spent "
                                                   "saving prefixes", buckets=LATENCY_BUCKETS, registry=r)
        self._children: dict[tuple, object] = {}

    def child(self, metric, *labels: str):
        """`metric.labels(*labels)`, remembered: a per-request lookup is one dict get, not prometheus'
        label checks and lock. (Only for series never removed: requests, latency, tokens.)"""
        key = (id(metric), *labels)
        found = self._children.get(key)
        if found is None:
            if len(self._children) >= 4096:
                self._children.clear()
            found = self._children[key] = metric.labels(*labels)
        return found

    def engine_changed(self, model: str, state: EngineState, degraded: Optional[dict] = None) -> None:
        """The engine's state changed; `degraded` is its supervisor's (None: normal mode)."""
        for s in EngineState:
            self.engine_state.labels(model, s.value).set(1 if s is state else 0)
        if degraded:
            self.engine_degraded.labels(model, DEGRADED_REASON).set(1)
        else:
            self._remove(self.engine_degraded, model, DEGRADED_REASON)

    @staticmethod
    def _remove(gauge: Gauge, *labels: str) -> None:
        try:
            gauge.remove(*labels)
        except KeyError:
            pass

    def engine_gone(self, model: str, reason: str) -> None:
        """An engine was unloaded: its per-model gauges go (counters stay, as Prometheus expects)."""
        self.engine_unloads.labels(model, reason).inc()
        for gauge in (self.engine_rss, self.engine_cpu, self.engine_leases, self.engine_queued):
            self._remove(gauge, model)
        for s in EngineState:
            self._remove(self.engine_state, model, s.value)
        self._remove(self.engine_degraded, model, DEGRADED_REASON)

    def engine_restarted(self, model: str, reason: str) -> None:
        self.engine_restarts.labels(model, reason).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RequestLog:
    """JSON lines, one per proxied request, rotated. Lines are buffered in memory and written by a
    thread about once a second (and at close), so a request costs an append, not a syscall."""

    FLUSH_SECONDS = 1.0

    def __init__(self, path: Path, max_bytes: int = 20 * 1024 * 1024, backups: int = 3):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._handler = logging.handlers.RotatingFileHandler(path, maxBytes=max_bytes, backupCount=backups)
        self._buffer: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="slp-request-log", daemon=True)
        self._thread.start()

    def write(self, **fields: object) -> None:
        fields["time"] = round(time.time(), 3)
        line = json.dumps(fields, separators=(",", ":"))
        with self._lock:
            self._buffer.append(line)

    def _run(self) -> None:
        while not self._stop.wait(self.FLUSH_SECONDS):
            self.flush()
        self.flush()

    def flush(self) -> None:
        with self._lock:
            lines, self._buffer = self._buffer, []
        if not lines:
            return
        text = "\n".join(lines)
        record = logging.LogRecord("slp.requests", logging.INFO, __file__, 0, text, None, None)
        self._handler.emit(record)  # rotates first if this batch would pass the size limit

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._handler.close()


def observe(metrics: Metrics, log: Optional[RequestLog], route: str, status: int, latency: float,
            record: RequestRecord) -> None:
    """Record a finished proxied request's tokens, time to first token and log line (the middleware
    counts every request and its latency). A refused one (429, a 4xx of slp's own checks, an engine's
    error) is logged too, with the error's code."""
    prompt = completion = None
    usage, project = record.usage, record.project or "-"
    if record.ttft is not None:
        metrics.child(metrics.ttft, route).observe(record.ttft)
    if usage:
        prompt = usage.get("prompt_tokens", usage.get("input_tokens"))
        completion = usage.get("completion_tokens", usage.get("output_tokens"))
        if prompt:
            metrics.child(metrics.tokens, "in", project).inc(prompt)
        if completion:
            metrics.child(metrics.tokens, "out", project).inc(completion)
    if record.disconnected:
        metrics.child(metrics.disconnects, route).inc()
    if log is not None:
        engine = {"model": record.engine.model, "pid": record.engine.pid} if record.engine else None
        log.write(route=route, project=project, model=record.model, status=status, prompt_tokens=prompt,
                  completion_tokens=completion, latency_ms=round(latency * 1000, 2),
                  ttft_ms=round(record.ttft * 1000, 2) if record.ttft is not None else None,
                  client_disconnected=record.disconnected, engine=engine,
                  **({"error_code": record.error_code} if record.error_code else {}),
                  **({"engine_failed": record.engine_failed} if record.engine_failed else {}))


def make_observer(metrics: Metrics, request_log: Optional[RequestLog]):
    """Outermost middleware: it makes each request's record (`RECORD`); every answer is counted, and
    requests to the proxied routes also get a request-log line, refusals included (the code of the
    APIError that answered them goes in the record).

    The counting and the log line run in one callback scheduled for after the response has been
    written (`record.finish()` first parses the reply's usage), so none of it sits between the engine's
    last byte and the client's. A client gone before its answer counts as 499, not as a failure."""

    def after(route: str, status: int, latency: float, record: RequestRecord) -> None:
        try:
            record.finish()
            metrics.child(metrics.requests, route, str(status), record.project or "-").inc()
            metrics.child(metrics.latency, route).observe(latency)
            if record.proxied:
                observe(metrics, request_log, route, status, latency, record)
        except Exception:  # noqa: BLE001 - bookkeeping must never take the agent down
            log.exception("could not account for a %s request", route)

    @web.middleware
    async def observer(request: web.Request, handler):
        record = request[RECORD] = RequestRecord(started=time.perf_counter())
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            if isinstance(exc, APIError):  # every refusal is one by now (the error middleware is inside)
                record.error_code = exc.code
            raise
        except asyncio.CancelledError:  # the client left before its answer (aiohttp cancels the handler)
            status = 499
            record.disconnected = True
            raise
        finally:
            latency = time.perf_counter() - record.started
            route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
            asyncio.get_running_loop().call_soon(after, route, status, latency, record)

    return observer
