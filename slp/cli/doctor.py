"""`slp doctor`: one line per check of this machine's slp setup (ok, warn, fail), each with its fix.

The checks are in slp.doctor, imported when the command runs, so `slp --help` does not pay for them.
"""

from __future__ import annotations

import textwrap
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from slp.doctor import Check

WIDTH = 100
_COLOURS = {"ok": typer.colors.GREEN, "warn": typer.colors.YELLOW, "fail": typer.colors.RED}


def _wrap(text: str, width: int) -> list[str]:
    return textwrap.wrap(text, max(20, width), break_on_hyphens=False, break_long_words=False) or [""]


def _shorten(line: str, width: int) -> str:
    line = line.rstrip()
    return line if len(line) <= width else line[:width - 1] + "…"


def render(checks: list["Check"], width: int = WIDTH) -> list[str]:
    """The report as lines: status, check and detail in aligned columns, the fix after " — " when it fits
    on the line (else on its own indented line), and a crash's log lines indented under it."""
    name_width = max(len(c.check) for c in checks) + 2
    indent = " " * (6 + name_width)
    room = width - len(indent)
    lines = []
    for c in checks:
        head = typer.style(f"{c.status:<4}", fg=_COLOURS.get(c.status), bold=c.status == "fail")
        head += f"  {c.check:<{name_width}}"
        one_line = f"{c.detail} — {c.fix}" if c.fix else c.detail
        if len(one_line) <= room:
            lines.append(head + one_line)
        else:
            body = _wrap(c.detail, room) + (_wrap(f"fix: {c.fix}", room) if c.fix else [])
            lines.append(head + body[0])
            lines.extend(indent + part for part in body[1:])
        for log_line in c.log_tail or []:
            lines.append(indent + "  " + _shorten(log_line, room - 2))
    return lines


def summary(checks: list["Check"]) -> str:
    counts = {status: sum(c.status == status for c in checks) for status in ("ok", "warn", "fail")}
    warnings = f"{counts['warn']} warning" + ("" if counts["warn"] == 1 else "s")
    return f"{len(checks)} checks: {counts['ok']} ok, {warnings}, {counts['fail']} failed"


def doctor(as_json: bool = typer.Option(False, "--json", help="Print a JSON list of {check, status, detail, fix}.")
           ) -> None:
    """Check this machine's slp setup, one line per check, with the fix for what is wrong.

    Python, the engine build and its self-test, CPU, GPU, memory, disk, the port, the agent and its
    engines, the last crash, the service and RPC workers. Works with no agent running.
    Exit status 1 when a check fails (warnings leave it 0).
    Example: slp doctor
    """
    from slp.doctor import FAIL, run_checks

    checks = run_checks()
    if as_json:
        import json

        typer.echo(json.dumps([c.to_dict() for c in checks], indent=2))
    else:
        for line in render(checks):
            typer.echo(line)
        typer.echo(summary(checks))
    if any(c.status == FAIL for c in checks):
        raise typer.Exit(1)
