"""The benchmark harness works end to end: `python -m bench --quick` starts the bare engine and a real
agent, runs every workload, and writes a complete, sane report. Benchmarks are not tests: nothing here
asserts a speed (the machine running the suite is shared and noisy); only that the numbers exist.
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.engine


def finite_positive(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_quick_bench_writes_a_complete_report(tmp_path, default_model, engine_binary):
    out = tmp_path / "results"
    proc = subprocess.Popen([sys.executable, "-m", "bench", "--quick", "--out", str(out)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)  # lets the harness stop the agent and engines it started
        try:
            stdout, stderr = proc.communicate(timeout=60)
        finally:
            proc.kill()
            proc.wait()
        pytest.fail(f"bench --quick still running after 300 s:\n{stderr[-4000:]}")
    assert proc.returncode == 0, f"bench failed:\n{stdout[-2000:]}\n{stderr[-4000:]}"

    for name in ("latest.md", "latest.json", "latest.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, f"{name} not written"
    assert (out / "latest.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    doc = json.loads((out / "latest.json").read_text())
    keys = {row["key"] for row in doc["rows"]}
    expected = {f"a.c{c}.{m}" for c in (1, 8, 32) for m in ("p50_ms", "p99_ms", "rps")}
    expected |= {f"b.c{c}.{m}" for c in (1, 8) for m in ("ttft_ms", "itl_ms", "tokens_per_s")}
    expected |= {"c.cpu_s_per_1k_requests", "c.cpu_s_per_10k_chunks", "c.rss_idle_mb", "c.rss_load_mb",
                 "d.first_token_s"}
    assert expected <= keys, f"missing rows: {sorted(expected - keys)}"
    assert {row["workload"] for row in doc["rows"]} == {"a", "b", "c", "d"}

    for row in doc["rows"]:
        for side in ("direct", "agent"):
            assert finite_positive(row[side]), f"{row['metric']}: {side} = {row[side]!r}"
        if row["ratio"] is not None:
            assert finite_positive(row["ratio"]), f"{row['metric']}: ratio = {row['ratio']!r}"
        if row["added"] is not None:  # a difference may be negative on a noisy machine, but it is a number
            assert math.isfinite(row["added"]), f"{row['metric']}: added = {row['added']!r}"

    assert len(doc["goals"]) == 8
    for goal in doc["goals"]:
        assert isinstance(goal["pass"], bool) and math.isfinite(goal["value"]), goal

    facts = doc["facts"]
    assert facts["cpu_model"] and facts["logical_cores"] >= 1 and facts["slp_version"] and facts["date"]
    assert facts["engine_build"].get("commit"), facts["engine_build"]

    md = (out / "latest.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("| ") and "---" not in line]
    for workload in ("a: tiny requests", "b: streaming", "c: cost", "d: cold start"):
        assert any(line.startswith(f"| {workload}") for line in table), f"no {workload!r} rows in latest.md"
    assert "## Targets" in md and ("pass" in md or "FAIL" in md)
