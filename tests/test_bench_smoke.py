"""The benchmark harness works end to end: `python -m bench --quick` starts the bare engine and a real
agent, runs every workload, and writes a complete, sane report. Benchmarks are not tests: nothing here
asserts a speed (the machine running the suite is shared and noisy); only that the numbers exist, are
sane (p50 <= p99, finite, within wide bounds), and that each verdict is its goal's rule applied to its value.
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bench.report import GOALS, WORKLOAD_TITLES, fmt

REPO = Path(__file__).resolve().parent.parent


def finite_positive(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.mark.engine
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

    check_report(doc, (out / "latest.md").read_text())
    facts = doc["facts"]
    assert facts["cpu_model"] and facts["logical_cores"] >= 1 and facts["slp_version"] and facts["date"]
    assert facts["engine_build"].get("commit"), facts["engine_build"]


def table(md: str, heading: str) -> list[list[str]]:
    """The cells of the data rows of the first table under `heading` in a markdown report."""
    lines = md.split(f"{heading}\n", 1)[1].split("\n## ", 1)[0].splitlines()
    rows = [line for line in lines if line.startswith("|")]
    assert len(rows) >= 2 and set(rows[1]) <= set("|-: "), f"no table under {heading!r}"
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows[2:]]


def check_report(doc: dict, md: str) -> None:
    """The report's numbers are sane and its Markdown says what its JSON says (any run: quick or full)."""
    rows = {row["key"]: row for row in doc["rows"]}
    for row in doc["rows"]:
        for side in ("direct", "agent"):
            assert finite_positive(row[side]), f"{row['metric']}: {side} = {row[side]!r}"
        if row["ratio"] is not None:
            assert finite_positive(row["ratio"]), f"{row['metric']}: ratio = {row['ratio']!r}"
        if row["added"] is not None:  # a difference may be negative on a noisy machine, but it is a number
            assert math.isfinite(row["added"]), f"{row['metric']}: added = {row['added']!r}"
    for c in (1, 8, 32):
        for side in ("direct", "agent"):
            p50, p99 = rows[f"a.c{c}.p50_ms"][side], rows[f"a.c{c}.p99_ms"][side]
            assert p50 <= p99 < 60_000, f"c={c} {side}: p50 {p50} ms, p99 {p99} ms"
    for c in (1, 8):
        for side in ("direct", "agent"):
            assert rows[f"b.c{c}.ttft_ms"][side] < 60_000 and rows[f"b.c{c}.tokens_per_s"][side] < 100_000
    assert 10 < rows["c.rss_idle_mb"]["agent"] < 4096, "the agent's idle memory, in MB"
    assert 0 < rows["d.first_token_s"]["direct"] < 120 and 0 < rows["d.first_token_s"]["agent"] < 120

    # Every goal is measured, and its verdict is the goal's own rule applied to the measured value.
    assert [g["goal"] for g in doc["goals"]] == [goal.label for goal in GOALS]
    for goal, g in zip(GOALS, doc["goals"]):
        assert g["value"] is not None and math.isfinite(g["value"]), g
        assert g["pass"] is bool(goal.ok(g["value"])) and g["shown"] == goal.show(g["value"]), g
    targets = table(md, "## Targets")
    assert targets == [[g["goal"], g["limit"], g["shown"], "pass" if g["pass"] else "**FAIL**"]
                       for g in doc["goals"]], "the Markdown targets are the JSON's"

    results = table(md, "## Results")
    assert len(results) == len(doc["rows"])
    for cells, row in zip(results, doc["rows"]):
        assert cells[0] == WORKLOAD_TITLES[row["workload"]] and cells[1] == row["metric"], cells
        assert cells[3] == fmt(row["direct"]) and cells[4] == fmt(row["agent"]), cells

