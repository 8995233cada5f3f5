"""`slp ps` and `slp model load|unload`: which models are loaded, why, and how to change that."""

from __future__ import annotations

import json
import time
from typing import Optional

import typer

from slp.cli.client import AgentClient, CliError, load_settings, run_cli, running_agent


def _client() -> AgentClient:
    state = running_agent()
    if not state:
        raise CliError("slp agent is not running; start it with: slp agent start")
    return AgentClient(state["url"], settings=load_settings())


def _mib(n: Optional[int]) -> str:
    return "-" if not n else f"{n / 1024 / 1024:.0f} MiB"


def _ago(at: float) -> str:
    seconds = max(0, time.time() - at)
    return f"{seconds:.0f}s ago" if seconds < 120 else f"{seconds / 60:.0f}m ago"


def _expires(row: dict) -> str:
    if row["pinned"]:
        return "pinned"
    if row["keep_alive_s"] is None:
        return "never"
    if row["expires_in_s"] is None:
        return "in use" if row["leases"] else "-"
    return f"in {row['expires_in_s']:.0f}s"


def ps_rows(data: dict) -> list[list[str]]:
    rows = []
    for row in data["data"]:
        aliases = ", ".join(a for a in row["aliases"] if a != row["model"]) or "-"
        state = row["state"] + (" (safe mode)" if row.get("degraded") else "")
        rows.append([row["model"], aliases, str(row["pid"] or "-"), state, _mib(row["rss_bytes"]),
                     _mib(row["gpu_bytes"]), str(row["threads"]), f"{row['slots']['busy']}/{row['slots']['total']}",
                     str(row["queued"]), str(row["leases"]), _ago(row["last_used"]), _expires(row)])
    return rows


def ps_notes(data: dict) -> list[str]:
    """Below the table: why an engine runs in safe mode, and killed engines that have not exited yet."""
    notes = []
    for row in data["data"]:
        if row.get("degraded"):
            notes.append(f"{row['model']}: safe mode ({' '.join(row['degraded']['args'])}): "
                         f"{row['degraded']['reason']}")
        for entry in row.get("lingering") or []:
            notes.append(f"{row['model']}: engine pid {entry['pid']} killed {_ago(entry['killed_at'])} "
                         f"({entry['reason']}), not exited yet")
    return notes


@run_cli
def ps(as_json: bool = typer.Option(False, "--json", help="Print the engines and the budget as JSON.")) -> None:
    """Show the loaded models: PID, state, memory, threads, slots, queue, leases, last use, expiry.

    Example: slp ps
    """
    data = _client().request("GET", "/v1/engines")
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    headers = ["MODEL", "ALIASES", "PID", "STATE", "RSS", "GPU", "THREADS", "SLOTS", "QUEUED", "LEASES",
               "LAST USED", "EXPIRES"]
    if data["data"]:
        from tabulate import tabulate

        typer.echo(tabulate(ps_rows(data), headers=headers, tablefmt="plain"))
    else:
        typer.echo("no model is loaded")
    for line in ps_notes(data):
        typer.echo(line)
    typer.echo(f"memory: {_mib(data['reserved_bytes'])} of a {_mib(data['budget_bytes'])} budget; "
               f"CPU threads computing: {data['compute']['threads_in_use']} of {data['compute']['cores']} cores")


@run_cli
def load(name: str = typer.Argument(..., help="Installed model name or alias."),
         pin: bool = typer.Option(False, "--pin", help="Keep it loaded: no expiry, never evicted."),
         keep_alive: Optional[str] = typer.Option(None, "--keep-alive",
                                                   help="How long it stays once idle: '10m', seconds, 0, -1.")) -> None:
    """Load a model now and wait until its engine is ready.

    Example: slp model load gemma-3-270m --pin
    """
    body: dict = {"pin": pin}
    if keep_alive is not None:
        body["keep_alive"] = keep_alive
    row = _client().request("POST", f"/v1/models/{name}/load", json=body)
    typer.echo(f"{row['model']} loaded (pid {row['pid']}){'; pinned' if row['pinned'] else ''}")


@run_cli
def unload(name: str = typer.Argument(..., help="Installed model name or alias.")) -> None:
    """Unload a model once the requests it is serving have finished.

    Example: slp model unload gemma-3-270m
    """
    result = _client().request("POST", f"/v1/models/{name}/unload")
    typer.echo(f"{result['model']} unloaded" if result["unloaded"] else f"{result['model']} was not loaded")
