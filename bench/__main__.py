"""`python -m bench`: measure slp against the bare engine (and any --target) and write the report."""

from __future__ import annotations

import argparse
import importlib.util
import signal
import sys
from pathlib import Path

from bench import load
from bench.load import BenchError
from bench.runner import WORKLOADS, Options, log, run

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str]) -> Options:
    p = argparse.ArgumentParser(prog="python -m bench", description=(
        "Benchmark slp's agent against the bare llama-server it supervises (same binary, model and flags), "
        "interleaved in one run. Workloads: a = tiny requests at c=1/8/32, b = streaming at c=1/8, "
        "c = the agent's CPU and memory cost (measured during a and b), d = cold start."))
    p.add_argument("--quick", action="store_true", help="tiny counts (for the smoke test; well under a minute)")
    p.add_argument("--repeats", type=int, help="repeats of every workload (default 3; quick 1)")
    p.add_argument("--requests", type=int, help="tiny requests per concurrency level, target and repeat "
                                                "(at least 2x the concurrency; default 60; quick 8)")
    p.add_argument("--c1-requests", type=int, help="tiny requests per target and repeat at concurrency 1, "
                   "the targets taking turns (default 200; quick 8)")
    p.add_argument("--stream-requests", type=int, help="streamed requests per target and repeat at c=1 "
                                                       "(c=8 sends at least 8; default 3; quick 2)")
    p.add_argument("--ttft-requests", type=int, help="short streams per target and repeat for time to first "
                   "token, taking turns with the other targets (default 16; quick 4)")
    p.add_argument("--max-tokens", type=int, help="tokens per streamed request (default 128; quick 16)")
    p.add_argument("--cold-repeats", type=int, help="cold starts of each side (default 3; quick 1)")
    p.add_argument("--only", default=",".join(WORKLOADS), help="workloads to run, e.g. a,b (default a,b,c,d)")
    p.add_argument("--target", action="append", default=[], metavar="NAME=URL",
                   help="also measure this OpenAI-compatible base URL (workloads a and b); repeatable")
    p.add_argument("--target-key", action="append", default=[], metavar="NAME=KEY",
                   help="bearer key for a --target")
    p.add_argument("--request-timeout", type=float, default=300.0,
                   help="seconds one request may take before the run fails (default 300)")
    p.add_argument("--models-dir", type=Path, help="model store holding the default model "
                                                   "(default: $SLP_MODELS_DIR, else ~/.cache/slp/test-models)")
    p.add_argument("--out", type=Path, default=RESULTS, help=f"where to write latest.md/json/png (default {RESULTS})")
    a = p.parse_args(argv)

    only = tuple(w.strip() for w in a.only.split(",") if w.strip())
    bad = [w for w in only if w not in WORKLOADS]
    if bad or not only:
        p.error(f"--only takes a comma-separated subset of {','.join(WORKLOADS)}; got {a.only!r}")
    targets, keys = [], {}
    for spec in a.target:
        name, sep, url = spec.partition("=")
        if not sep or not name or not url.startswith(("http://", "https://")) or name in ("direct", "agent"):
            p.error(f"--target wants NAME=http(s)://host:port[/v1] (NAME not direct/agent); got {spec!r}")
        targets.append((name, url))
    for spec in a.target_key:
        name, sep, key = spec.partition("=")
        if not sep:
            p.error(f"--target-key wants NAME=KEY; got {spec!r}")
        keys[name] = key
    opts = Options.quick_mode() if a.quick else Options()
    for field in ("repeats", "requests", "c1_requests", "stream_requests", "ttft_requests", "max_tokens",
                  "cold_repeats"):
        value = getattr(a, field)
        if value is not None:
            if value < 1:
                p.error(f"--{field.replace('_', '-')} must be at least 1")
            setattr(opts, field, value)
    opts.only, opts.targets, opts.keys, opts.models_dir = only, targets, keys, a.models_dir
    opts.out = a.out
    load.REQUEST_TIMEOUT_S = a.request_timeout
    return opts


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # so SIGTERM, like Ctrl-C, unwinds the run and stops the agent and engines


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(sys.argv[1:] if argv is None else argv)
    if importlib.util.find_spec("matplotlib") is None:  # checked now, not after minutes of measuring
        print("bench: matplotlib is not installed; install the bench extra: pip install -e '.[bench]'",
              file=sys.stderr)
        return 2
    from bench import report

    signal.signal(signal.SIGTERM, _interrupt)
    try:
        result = run(opts)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted; nothing written", file=sys.stderr)
        return 130
    result["options"] = {"quick": opts.quick, "repeats": opts.repeats, "requests": opts.requests,
                         "c1_requests": opts.c1_requests, "stream_requests": opts.stream_requests, "ttft_requests": opts.ttft_requests,
                         "max_tokens": opts.max_tokens,
                         "cold_repeats": opts.cold_repeats, "only": list(opts.only),
                         "targets": [n for n, _ in opts.targets]}
    doc = report.write(result, opts.out)
    print(report.markdown(doc))
    log(f"wrote {opts.out / 'latest.md'}, latest.json, latest.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
