"""`python -m bench.cli`: how long the CLI takes to answer, with no agent running.

Times `slp status`, `slp ps`, `slp agent status` and `slp --help` (the installed `slp` script next to this
Python, in a fresh SLP_HOME so no agent is found), each the minimum of --runs runs (the minimum is what the
code costs; the rest is a shared machine's noise), and counts the modules each imports
(`python -X importtime`). Prints one Markdown table row per command, and a summary row; the goal is at
most 0.12 s each on a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMMANDS = (("slp status", ["status"]), ("slp ps", ["ps"]), ("slp agent status", ["agent", "status"]),
            ("slp --help", ["--help"]))
GOAL_S = 0.12
IMPORT_LINE = re.compile(r"import time:\s+\d+ \|\s+(?P<cumulative>\d+) \|(?P<indent> +)\S")


def slp_script() -> list[str]:
    """The console script users run (falls back to `python -m slp`)."""
    script = Path(sys.executable).parent / "slp"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "slp"]


def time_once(argv: list[str], env: dict) -> tuple[float, float]:
    """(wall, CPU) seconds of one run. CPU time (user + system, from wait4) is less at the mercy of other
    processes on a shared machine than wall time."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    _, _, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = 0  # reaped above
    return wall, usage.ru_utime + usage.ru_stime


def imported_modules(args: list[str], env: dict) -> tuple[int, float]:
    """(modules imported, sum of the top-level imports' cumulative time in s) for `slp ARGS`, run as the
    script is (not `-m`, which would put the current folder first on sys.path)."""
    command = slp_script()
    if command[0] != sys.executable:
        command = [sys.executable, *command]
    proc = subprocess.run([command[0], "-X", "importtime", *command[1:], *args], env=env,
                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    count, top_us = 0, 0
    for line in proc.stderr.splitlines():
        match = IMPORT_LINE.match(line)
        if match:
            count += 1
            if len(match["indent"]) == 1:  # a top-level import; the nested ones are in its cumulative time
                top_us += int(match["cumulative"])
    return count, top_us / 1e6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.cli", description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=10, help="runs per command; the minimum is reported (default 10)")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="slp-bench-cli-") as home:
        env = {**os.environ, "SLP_HOME": home}
        for key in [k for k in env if k.startswith("SLP_") and k != "SLP_HOME"]:
            del env[key]
        print("| command | min wall (s) | median wall (s) | min CPU (s) | modules | imports (s) | goal |")
        print("|---|---|---|---|---|---|---|")
        worst = 0.0
        for label, args in COMMANDS:
            runs = [time_once([*slp_script(), *args], env) for _ in range(a.runs)]
            walls = sorted(wall for wall, _ in runs)
            modules, import_s = imported_modules(args, env)
            worst = max(worst, walls[0])
            verdict = "ok" if walls[0] <= GOAL_S else "over"
            print(f"| `{label}` | {walls[0]:.3f} | {walls[len(walls) // 2]:.3f} | {min(c for _, c in runs):.3f} | "
                  f"{modules} | {import_s:.3f} | {verdict} |")
        floor = [time_once([sys.executable, "-c", "pass"], env) for _ in range(a.runs)]
        print(f"| (bare `python -c pass`, for scale) | {min(w for w, _ in floor):.3f} | | "
              f"{min(c for _, c in floor):.3f} | | | |")
        print(f"| slowest (min of {a.runs}) | {worst:.3f} | | | | | {'ok' if worst <= GOAL_S else 'over'} "
              f"(≤ {GOAL_S} s) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
