"""Turn per-repeat numbers into medians, ratios (agent / direct), target checks, and the three outputs:
`<out>/latest.md`, `<out>/latest.json`, `<out>/latest.png`.

Ratios and differences are paired per repeat (agent in repeat i against direct in repeat i, which ran
right next to it) and then the median over repeats is taken; that cancels drift the machine has
between repeats.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

COMPARE, COST = "compare", "cost"


@dataclass(frozen=True)
class Row:
    workload: str
    label: str
    key: str
    unit: str
    kind: str = COMPARE  # COMPARE: ratio and difference; COST: direct = the engine process, agent = the agent alone
    higher_is_better: bool = False


def _rows() -> list[Row]:
    rows: list[Row] = []
    for c in (1, 8, 32):
        rows += [Row("a", f"tiny, c={c}: latency p50", f"a.c{c}.p50_ms", "ms"),
                 Row("a", f"tiny, c={c}: latency p99", f"a.c{c}.p99_ms", "ms"),
                 Row("a", f"tiny, c={c}: requests/s", f"a.c{c}.rps", "req/s", higher_is_better=True)]
    for c in (1, 8):
        rows += [Row("b", f"stream, c={c}: time to first token (p50)", f"b.c{c}.ttft_ms", "ms"),
                 Row("b", f"stream, c={c}: inter-token latency (mean)", f"b.c{c}.itl_ms", "ms"),
                 Row("b", f"stream, c={c}: inter-token latency p99", f"b.c{c}.itl_p99_ms", "ms"),
                 Row("b", f"stream, c={c}: tokens/s (all streams)", f"b.c{c}.tokens_per_s", "tok/s",
                     higher_is_better=True),
                 Row("b", f"stream, c={c}: tokens/s per stream (decode)", f"b.c{c}.stream_tokens_per_s", "tok/s",
                     higher_is_better=True)]
    rows += [Row("b", "time to first token, c=1, short streams taking turns (p50)", "b.ttft_ms", "ms")]
    rows += [Row("c", "CPU seconds per 1,000 tiny requests", "c.cpu_s_per_1k_requests", "s", COST),
             Row("c", "CPU seconds per 10,000 streamed chunks", "c.cpu_s_per_10k_chunks", "s", COST),
             Row("c", "RSS just after start", "c.rss_start_mb", "MB", COST),
             Row("c", "RSS idle (after warm-up)", "c.rss_idle_mb", "MB", COST),
             Row("c", "RSS peak under load", "c.rss_load_mb", "MB", COST),
             Row("c", "RSS idle after the load", "c.rss_idle_after_mb", "MB", COST),
             Row("d", "cold start: start → ready", "d.ready_s", "s"),
             Row("d", "cold start: start → first token", "d.first_token_s", "s")]
    return rows


ROWS = _rows()
WORKLOAD_TITLES = {"a": "a: tiny requests (max_tokens 1)", "b": "b: streaming", "c": "c: cost",
                   "d": "d: cold start"}


class Summary:
    def __init__(self, raw: dict[str, dict[str, list[float]]]):
        self.raw = raw

    def values(self, target: str, key: str) -> list[float]:
        return self.raw.get(target, {}).get(key, [])

    def median(self, target: str, key: str) -> Optional[float]:
        v = self.values(target, key)
        return statistics.median(v) if v else None

    def _paired(self, target: str, key: str, op: Callable[[float, float], float]) -> Optional[float]:
        a, d = self.values(target, key), self.values("direct", key)
        if not a or not d:
            return None
        if len(a) == len(d):
            pairs = [op(x, y) for x, y in zip(a, d) if not (op is _div and y == 0)]
            return statistics.median(pairs) if pairs else None
        ma, md = statistics.median(a), statistics.median(d)
        return None if op is _div and md == 0 else op(ma, md)

    def ratio(self, target: str, key: str) -> Optional[float]:
        return self._paired(target, key, _div)

    def added(self, target: str, key: str) -> Optional[float]:
        return self._paired(target, key, _sub)


def _div(a: float, b: float) -> float:
    return a / b


def _sub(a: float, b: float) -> float:
    return a - b


@dataclass(frozen=True)
class Goal:
    label: str
    limit: str
    measure: Callable[[Summary], Optional[float]]
    ok: Callable[[float], bool]
    show: Callable[[float], str]


def added_at_most(label: str, metric: str, ms: float) -> Goal:
    """agent − direct for `metric` (milliseconds), at most `ms`."""
    return Goal(label, f"≤ {ms:g} ms", lambda s: s.added("agent", metric), lambda v: v <= ms,
                lambda v: f"{v:+.2f} ms")


def ratio_at_most(label: str, metric: str, percent_over: float) -> Goal:
    """agent / direct for a time: at most `percent_over` % above direct."""
    return Goal(label, f"≤ +{percent_over:g} %", lambda s: s.ratio("agent", metric),
                lambda v: v <= 1 + percent_over / 100, lambda v: f"{(v - 1) * 100:+.1f} %")


def ratio_at_least(label: str, metric: str, percent: float) -> Goal:
    """agent / direct for a rate: at least `percent` % of direct."""
    return Goal(label, f"≥ {percent:g} %", lambda s: s.ratio("agent", metric), lambda v: v >= percent / 100,
                lambda v: f"{v * 100:.1f} %")


def added_seconds_at_most(label: str, metric: str, seconds: float) -> Goal:
    """agent − direct for `metric` (seconds), at most `seconds`."""
    return Goal(label, f"≤ engine + {seconds:g} s", lambda s: s.added("agent", metric), lambda v: v <= seconds,
                lambda v: f"{v:+.2f} s")


def agent_at_most(label: str, metric: str, limit: float, unit: str, digits: int) -> Goal:
    """The agent's own median for `metric`, at most `limit`."""
    return Goal(label, f"≤ {limit:g} {unit}", lambda s: s.median("agent", metric), lambda v: v <= limit,
                lambda v: f"{v:.{digits}f} {unit}")


GOALS = [
    added_at_most("added latency, tiny c=1, p50", "a.c1.p50_ms", 0.5),
    added_at_most("added latency, tiny c=1, p99", "a.c1.p99_ms", 3),
    ratio_at_most("latency, tiny c=8, p99 vs direct", "a.c8.p99_ms", 10),
    ratio_at_most("latency, tiny c=32, p50 vs direct", "a.c32.p50_ms", 5),
    ratio_at_least("stream tokens/s, c=1, vs direct", "b.c1.tokens_per_s", 99),  # #22: 99 %
    ratio_at_least("stream tokens/s, c=8, vs direct", "b.c8.tokens_per_s", 99),
    added_at_most("added time to first token, c=1", "b.ttft_ms", 2),
    agent_at_most("agent idle RSS", "c.rss_idle_mb", 60, "MB", 1),
    added_seconds_at_most("cold start to first token", "d.first_token_s", 0.3),
]


def fmt(v: Optional[float]) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    a = abs(v)
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def fmt_added(v: Optional[float]) -> str:
    return "—" if v is None else ("+" if v >= 0 else "") + fmt(v)


def build(result: dict) -> dict:
    """The JSON document: facts, options, per-row medians, goals, raw per-repeat values."""
    s = Summary(result["raw"])
    others = [t for t in result["raw"] if t not in ("direct", "agent")]
    rows = []
    for row in ROWS:
        entry = {"workload": row.workload, "metric": row.label, "key": row.key, "unit": row.unit, "kind": row.kind,
                 "higher_is_better": row.higher_is_better,
                 "direct": s.median("direct", row.key), "agent": s.median("agent", row.key),
                 "ratio": s.ratio("agent", row.key) if row.kind == COMPARE or "cpu" in row.key else None,
                 "added": s.added("agent", row.key) if row.kind == COMPARE else None,
                 "targets": {t: {"value": s.median(t, row.key), "ratio": s.ratio(t, row.key)} for t in others
                             if s.median(t, row.key) is not None}}
        if entry["direct"] is None and entry["agent"] is None and not entry["targets"]:
            continue
        rows.append(entry)
    goals = []
    for goal in GOALS:
        v = goal.measure(s)
        goals.append({"goal": goal.label, "limit": goal.limit, "value": v,
                      "shown": goal.show(v) if v is not None else "not run",
                      "pass": None if v is None else bool(goal.ok(v))})
    return {"facts": result.get("facts", {}), "options": result.get("options", {}),
            "engine_argv": result.get("engine_argv"), "duration_s": result.get("duration_s"),
            "notes": result.get("notes", []), "rows": rows, "goals": goals, "raw": result["raw"]}


def markdown(doc: dict) -> str:
    f, o = doc["facts"], doc["options"]
    b = f.get("engine_build", {})
    others = sorted({t for r in doc["rows"] for t in r["targets"]})
    out = [f"# slp benchmark: agent vs bare engine ({f.get('date', '?')})", ""]
    out += [f"- machine: {f.get('cpu_model')}, {f.get('logical_cores')} logical / {f.get('physical_cores')} physical "
            f"cores, {f.get('memory_gb')} GB; {f.get('os')}; Python {f.get('python')}",
            f"- load before the run: {f.get('load_avg_1m_before')} (1-min load average), "
            f"{f.get('cpu_busy_pct_before')} % CPU busy",
            f"- engine: llama-server commit {str(b.get('commit', '?'))[:12]}, preset {b.get('preset', '?')}, "
            f"built {b.get('built_at', '?')}; model {f.get('model')}; {f.get('engine_settings')}",
            f"- slp {f.get('slp_version')}; {o.get('repeats')} repeats, {o.get('requests')} tiny requests per cell "
            f"({o.get('c1_requests')} at c=1), {o.get('ttft_requests')} short streams for time to first token, "
            f"{o.get('max_tokens')} streamed tokens per request{' (quick mode)' if o.get('quick') else ''}; "
            f"run took {doc.get('duration_s')} s",
            "- medians over repeats; ratio and difference are paired per repeat (direct and agent ran back to "
            "back, order alternating; at concurrency 1 they take turns request by request), then the median "
            "is taken", ""]
    out += ["## Targets", "", "| target | limit | measured | result |", "|---|---|---|---|"]
    for g in doc["goals"]:
        result = "not run" if g["pass"] is None else ("pass" if g["pass"] else "**FAIL**")
        out.append(f"| {g['goal']} | {g['limit']} | {g['shown']} | {result} |")
    out += ["", "## Results", "",
            "For workload c, *direct* is the engine process doing the same work and *agent* is the agent process "
            "alone (its engine excluded); the CPU ratio is agent CPU / engine CPU.", ""]
    head = "| workload | metric | unit | direct | agent | agent/direct | agent − direct |"
    line = "|---|---|---|---:|---:|---:|---:|"
    for t in others:
        head += f" {t} | {t}/direct |"
        line += "---:|---:|"
    out += [head, line]
    for r in doc["rows"]:
        cells = [WORKLOAD_TITLES.get(r["workload"], r["workload"]), r["metric"], r["unit"], fmt(r["direct"]),
                 fmt(r["agent"]), fmt(r["ratio"]), fmt_added(r["added"])]
        for t in others:
            tv = r["targets"].get(t, {})
            cells += [fmt(tv.get("value")), fmt(tv.get("ratio"))]
        out.append("| " + " | ".join(cells) + " |")
    notes = list(doc.get("notes") or [])
    threads = f.get("engine_http_threads")
    if threads and any(r["key"].startswith("a.c32") for r in doc["rows"]) and threads < 32:
        notes.append(f"llama-server serves {threads} connections at a time (HTTP threads = max(parallel + 4, "
                     f"cores - 1)); each keeps its thread while the client keeps it alive, so at c=32 the other "
                     "connections wait in its accept queue: c=32 latencies mostly measure that queue and vary a "
                     "lot between repeats, for both sides.")
    if notes:
        out += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    util = [v for t in doc["raw"].values() for k, vs in t.items() if k.startswith("client.cpu_util") for v in vs]
    if util:
        out += ["", f"Load client: at most {max(util) * 100:.0f} % of one core during any batch "
                f"(median {statistics.median(util) * 100:.0f} %)."]
    if doc.get("engine_argv"):
        out += ["", "Engine flags (both engines): `" + " ".join(doc["engine_argv"]) + "`"]
    return "\n".join(out) + "\n"


def chart(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = Summary(doc["raw"])
    names = [n for n in ("direct", "agent") if n in doc["raw"]] + \
        sorted(n for n in doc["raw"] if n not in ("direct", "agent"))
    fig, axes = plt.subplots(1, 3, figsize=(18, 5.6), gridspec_kw={"width_ratios": [1.1, 0.8, 1.4]})

    ax = axes[0]
    concs = [c for c in (1, 8, 32) if s.median("direct", f"a.c{c}.p50_ms") is not None]
    width = 0.8 / max(1, 2 * len(names))
    for i, name in enumerate(names):
        for j, q in enumerate(("p50", "p99")):
            vals = [s.median(name, f"a.c{c}.{q}_ms") or 0 for c in concs]
            xs = [k + (2 * i + j) * width for k in range(len(concs))]
            ax.bar(xs, vals, width, label=f"{name} {q}", hatch="//" if j else "", color=f"C{i}",
                   alpha=0.55 if j else 0.95)
    ax.set_xticks([k + 0.4 - width / 2 for k in range(len(concs))], [f"c={c}" for c in concs])
    if concs:
        ax.set_yscale("log")
    ax.set_ylabel("ms (log scale)")
    ax.set_title("(a) tiny request latency")
    ax.legend(fontsize=8)

    ax = axes[1]
    concs = [c for c in (1, 8) if s.median("direct", f"b.c{c}.tokens_per_s") is not None]
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        vals = [s.median(name, f"b.c{c}.tokens_per_s") or 0 for c in concs]
        ax.bar([k + i * width for k in range(len(concs))], vals, width, label=name, color=f"C{i}")
    ax.set_xticks([k + 0.4 - width / 2 for k in range(len(concs))], [f"c={c}" for c in concs])
    ax.set_ylabel("tokens/s, all streams together")
    ax.set_title("(b) streaming throughput")
    ax.legend(fontsize=8)

    ax = axes[2]
    rows = [r for r in doc["rows"] if r["kind"] == COMPARE and r["ratio"] is not None]
    if rows:
        cap = 2.0
        vals = [r["ratio"] for r in rows]
        worse = [(v < 0.95) if r["higher_is_better"] else (v > 1.05) for r, v in zip(rows, vals)]
        ys = list(range(len(rows)))
        ax.barh(ys, [min(v, cap) for v in vals], color=["C3" if w else "C2" for w in worse])
        for y, v in zip(ys, vals):
            ax.text(min(v, cap) + 0.01, y, f"{v:.2f}", va="center", fontsize=7)
        ax.set_yticks(ys, [r["metric"] for r in rows], fontsize=7)
        ax.invert_yaxis()
        ax.axvline(1.0, color="k", lw=0.8)
        ax.set_xlim(0, cap + 0.25)
    ax.set_title("agent / direct (median of paired repeats; red = >5 % worse)")
    f = doc["facts"]
    fig.suptitle(f"slp {f.get('slp_version')} vs llama-server {str(f.get('engine_build', {}).get('commit', ''))[:12]}"
                 f" - {f.get('cpu_model')}, {f.get('logical_cores')} cores - {f.get('date')}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(result: dict, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    doc = build(result)
    (out / "latest.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    (out / "latest.md").write_text(markdown(doc))
    chart(doc, out / "latest.png")
    return doc
