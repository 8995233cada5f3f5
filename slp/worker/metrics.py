"""Worker gauges for the agent's /metrics, read from the pool when scraped (no bookkeeping between)."""

from __future__ import annotations

from typing import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from slp.worker.pool import WorkerPool


class WorkerCollector(Collector):
    """slp_worker_up / _in_use / _rtt_seconds / _memory_free_bytes / _memory_total_bytes by address, and
    slp_worker_losses_total: workers an engine lost (found gone at its restart)."""

    def __init__(self, pool: WorkerPool):
        self.pool = pool

    def collect(self) -> Iterator:
        up = GaugeMetricFamily("slp_worker_up", "1 when the RPC worker answers (or an engine holds it)", labels=["address"])
        in_use = GaugeMetricFamily("slp_worker_in_use", "1 when an engine holds the RPC worker", labels=["address"])
        rtt = GaugeMetricFamily("slp_worker_rtt_seconds", "Round trip of the RPC hello at the last check",
                                labels=["address"])
        free = GaugeMetricFamily("slp_worker_memory_free_bytes", "Free memory the worker reports (all devices)",
                                 labels=["address"])
        total = GaugeMetricFamily("slp_worker_memory_total_bytes", "Memory the worker reports (all devices)",
                                  labels=["address"])
        losses = CounterMetricFamily("slp_worker_losses", "Workers an engine lost (gone at its next start)",
                                     labels=["address"])
        for entry in self.pool.snapshot():
            address = entry["address"]
            up.add_metric([address], 1.0 if entry["state"] in ("ready", "in-use") else 0.0)
            in_use.add_metric([address], 1.0 if entry["state"] == "in-use" else 0.0)
            if entry.get("rtt_ms") is not None:
                rtt.add_metric([address], entry["rtt_ms"] / 1000)
            memory = entry.get("memory")
            if memory:
                free.add_metric([address], memory["free_bytes"])
                total.add_metric([address], memory["total_bytes"])
            losses.add_metric([address], self.pool.lost_count.get(address, 0))
        yield from (up, in_use, rtt, free, total, losses)
