"""`python -m bench.prompt_cache`: a project's long prompt after an unload, computed again or restored from
disk (issue #26). Writes bench/results/prompt-cache.md.

One agent over the real engine and a project whose system prompt is about 2,000 tokens. Each round:
1. cold: the model is unloaded and the project's saved prefix deleted, so the next request's engine
   computes the whole prompt; time to first token of a streamed one-token reply;
2. restored: the model is unloaded again (its stop saves the prefix), and the same request's engine
   restores it from disk first; the same time to first token.
The requests are the same, at temperature 0, so both sides do the same work but for the prefix. Goal:
restored ≤ 25 % of cold. Also reported: the save's time (as the stop spent it), the restore's time per
1,000 tokens and the disk per 1,000 tokens (from the agent's metrics and the project's `prompt_cache`),
and how long an unload took with the save in it.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import statistics
import sys
import time
import urllib.request
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa".split()
GOAL = 0.25


def system_prompt(rules: int, seed: int = 26) -> str:
    rng = random.Random(seed)
    return "You are a careful assistant. Follow these rules.\n" + "\n".join(
        f"Rule {i}: when the user says {rng.choice(WORDS)} you reply {rng.choice(WORDS)} {rng.choice(WORDS)}."
        for i in range(1, rules + 1))


def call(base: str, method: str, path: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base + path, data, {"Content-Type": "application/json"}, method=method)
    with urllib.request.urlopen(request, timeout=600) as resp:
        return json.load(resp)


def first_token(base: str, project: str) -> tuple[float, dict]:
    """Seconds to the first content event of a streamed one-token reply, and the engine's timings."""
    body = {"project_id": project, "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "stream": True, "max_tokens": 1, "temperature": 0}
    request = urllib.request.Request(base + "/v1/chat/completions", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    started, first, timings = time.perf_counter(), None, {}
    with urllib.request.urlopen(request, timeout=600) as resp:
        for line in resp:
            if first is None and line.startswith(b"data: {") and b'"content"' in line:
                first = time.perf_counter() - started
            if line.startswith(b"data: {") and b'"timings"' in line:
                timings = json.loads(line[6:]).get("timings", timings)
    return (first if first is not None else time.perf_counter() - started), timings


def metric(base: str, name: str) -> float:
    with urllib.request.urlopen(base + "/metrics", timeout=30) as resp:
        text = resp.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + " ") or line.startswith(name + "{"))


def unload(base: str, model: str) -> float:
    started = time.perf_counter()
    call(base, "POST", f"/v1/models/{model}/unload")
    return time.perf_counter() - started


def run(base: str, rounds: int, rules: int) -> dict:
    model = "slp-orchestra-mini"
    project = "bench-prompt-cache"
    call(base, "POST", "/v1/projects", {"name": project, "model": model, "system_prompt": system_prompt(rules)})
    cold, restored, unloads, cold_timings, restored_timings = [], [], [], [], []
    first_token(base, project)  # untimed: loads the engine once
    for _ in range(rounds):
        unload(base, model)
        call(base, "DELETE", f"/v1/projects/{project}/prompt-cache")
        seconds, timings = first_token(base, project)
        cold.append(seconds)
        cold_timings.append(timings)
        unloads.append(unload(base, model))  # saves the prefix
        seconds, timings = first_token(base, project)
        restored.append(seconds)
        restored_timings.append(timings)
    entry = call(base, "GET", f"/v1/projects/{project}")["prompt_cache"][0]
    restores = metric(base, "slp_prompt_cache_restore_seconds_count")
    saves = metric(base, "slp_prompt_cache_save_seconds_count")
    return {
        "rounds": rounds, "prompt_tokens": cold_timings[0].get("prompt_n"),
        "cold_ttft_s": cold, "restored_ttft_s": restored,
        "cold_cache_n": [t.get("cache_n") for t in cold_timings],
        "restored_cache_n": [t.get("cache_n") for t in restored_timings],
        "entry": entry,
        "restore_s_mean": metric(base, "slp_prompt_cache_restore_seconds_sum") / max(restores, 1),
        "save_s_mean": metric(base, "slp_prompt_cache_save_seconds_sum") / max(saves, 1),
        "unload_with_save_s": unloads,
    }


def report(r: dict) -> str:
    cold, restored = statistics.median(r["cold_ttft_s"]), statistics.median(r["restored_ttft_s"])
    share = restored / cold
    tokens, entry = r["entry"]["tokens"], r["entry"]
    per_k_restore = r["restore_s_mean"] / tokens * 1000
    per_k_disk = entry["bytes"] / tokens * 1000
    ok = "met" if share <= GOAL else "NOT met"
    return f"""# A project's prompt after an unload: computed again or restored from disk

`python -m bench.prompt_cache` (issue #26): one agent over the real engine (SmolLM2-135M Q4_1, this
machine's CPU), a project whose system prompt is {r['prompt_tokens']:,} tokens as the engine counts the
whole first prompt. {r['rounds']} rounds of: unload and delete the saved prefix, time to first token
(cold); unload again (the stop saves it), time to first token (restored). Streamed one-token replies at
temperature 0. Both sides include the engine's start after the unload (about half a second).

| | median | each round |
|---|---|---|
| cold: the whole prompt computed | {cold * 1000:,.0f} ms | {', '.join(f'{s * 1000:,.0f}' for s in r['cold_ttft_s'])} ms |
| restored from disk | {restored * 1000:,.0f} ms | {', '.join(f'{s * 1000:,.0f}' for s in r['restored_ttft_s'])} ms |
| restored / cold | **{share:.1%}** | goal ≤ {GOAL:.0%}: **{ok}** |

- The engine's own timings agree: the cold requests reused {r['cold_cache_n']} cached tokens, the restored
  ones {r['restored_cache_n']}.
- The entry: {entry['prefix_tokens']:,} prefix tokens of {tokens:,} held, {entry['bytes'] / 1e6:.1f} MB on disk:
  **{per_k_disk / 1e6:.1f} MB per 1,000 tokens** (the KV cache of this model, f16: 30 layers × 3 KV heads ×
  64 × 2 × 2 bytes a token).
- Restore (checksum, then the engine's restore): {r['restore_s_mean'] * 1000:.0f} ms on average:
  **{per_k_restore * 1000:.1f} ms per 1,000 tokens**.
- Save, in the engine's stop: {r['save_s_mean'] * 1000:.0f} ms on average (the idle slots long enough to
  hold the prefix saved, newest first, the project's kept); the whole unload took {', '.join(f'{s * 1000:,.0f}' for s in r['unload_with_save_s'])} ms.
  A stop never waits more than STOPPING_GRACE (5 s, slp.lifecycle) for it.
"""


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.prompt_cache", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--rules", type=int, default=110, help="rules in the system prompt (110: about 2,000 tokens)")
    p.add_argument("--out", type=Path, default=RESULTS / "prompt-cache.md")
    a = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    from bench.runner import default_models_dir
    from bench.targets import foreground_agent

    with foreground_agent("slp-bench-prompt-cache-", default_models_dir()) as (port, _):
        result = run(f"http://127.0.0.1:{port}", a.rounds, a.rules)
    print(json.dumps(result), flush=True)
    text = report(result)
    a.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main(sys.argv[1:])
