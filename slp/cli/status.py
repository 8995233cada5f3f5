"""`slp status` and `slp version`: what runs, on what, in which project."""

from __future__ import annotations

import json
import time

import typer

import slp
from slp.cli.client import AgentClient, load_settings, run_cli, running_agent


def percent(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.0f}%" if value >= 10 else f"{value:.1f}%"


def status_rows(info: dict) -> list[tuple[str, str]]:
    """The seed's table: Server, PID, Quantization, Context window, Flash attention, Model size,
    Memory usage, GPU, Active project; and, only when they apply, the engine's safe mode, killed engines
    not gone yet, and the RPC workers."""
    project = info.get("active_project") or {}
    engine = info.get("engine") or {}
    return [
        ("Server", info["server"]),
        ("PID", str(info["agent"]["pid"])),
        ("Quantization", info.get("quantization") or "n/a"),
        ("Context window", str(info["context_window"])),
        ("Flash attention", str(bool(info["flash_attention"]))),
        ("Model size", info.get("model_size") or "n/a"),
        ("Memory usage", percent(info["memory_usage"]["percent"])),
        ("GPU", info["gpu"]),
        ("Active project", f"{project.get('name')} (id={project.get('id')})"),
        *([("Engine mode", degraded_line(engine["degraded"]))] if engine.get("degraded") else []),
        *[("Killed engine", lingering_line(entry)) for entry in engine.get("lingering") or []],
        *[("Worker", worker_line(w)) for w in info.get("workers") or []],
    ]


def degraded_line(degraded: dict) -> str:
    """e.g. "safe mode (--no-repack, flash attention off): crashed twice at load, killed by SIGSEGV"."""
    args, flags = list(degraded.get("args") or []), []
    while args:
        arg = args.pop(0)
        flags.append(f"flash attention {args.pop(0)}" if arg == "--flash-attn" and args else arg)
    return f"safe mode ({', '.join(flags)}): {degraded['reason']}"


def lingering_line(entry: dict) -> str:
    """A killed engine that has not exited yet (frozen, or stuck in a driver)."""
    return (f"pid {entry['pid']} killed {max(0, time.time() - entry['killed_at']):.0f}s ago ({entry['reason']}); "
            "not exited yet")


def worker_line(worker: dict) -> str:
    """One RPC worker: address, state, hello round trip, the memory it reports (or why it is not used)."""
    parts = [worker["address"], worker["state"]]
    if worker.get("rtt_ms") is not None:
        parts.append(f"{worker['rtt_ms']:.2f} ms")
    memory = worker.get("memory")
    if memory:
        parts.append(f"{memory['free_bytes'] / 1e9:.1f} / {memory['total_bytes'] / 1e9:.1f} GB free")
    if worker["state"] not in ("ready", "in-use"):
        parts.append(f"({worker.get('detail')})")
    return " ".join(parts)


@run_cli
def status(as_json: bool = typer.Option(False, "--json", help="Print the full status as JSON.")) -> None:
    """Show the agent's server URL, model, memory, GPU and active project as a table.

    Example: slp status
    """
    state = running_agent()
    if not state:
        typer.secho("slp agent is not running; start it with: slp agent start", err=True, fg=typer.colors.RED)
        raise typer.Exit(1)
    info = AgentClient(state["url"], settings=load_settings()).request("GET", "/v1/status")
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    from tabulate import tabulate

    typer.echo(tabulate(status_rows(info), headers=["Property", "Value"], tablefmt="simple"))
    if info["engine"]["state"] != "ready":
        typer.secho(f"engine {info['engine']['state']}: {info['engine']['reason']}", err=True,
                    fg=typer.colors.YELLOW)


@run_cli
def version() -> None:
    """Show slp's version and the engine build it runs.

    Example: slp version
    """
    from slp.engine.binary import EngineNotFound, find_engine

    typer.echo(f"slp {slp.__version__}")
    try:
        binary, record = find_engine(load_settings())
    except EngineNotFound as exc:
        typer.echo(f"engine: not built ({exc})")
        return
    typer.echo(f"engine: {binary}")
    if record:
        typer.echo(f"  llama.cpp {record.get('commit')} · preset {record.get('preset')} · "
                   f"built {record.get('built_at')} · {record.get('compiler')}")
        cpu = record.get("cpu") or {}
        built_for = "any CPU (portable)" if record.get("portable") else cpu.get("model") or "unknown CPU"
        typer.echo(f"  built for {built_for}")
        test = record.get("self_test")
        if not isinstance(test, dict):
            typer.echo("  self-test: none (built before self-tests; rebuild with `python3 build.py --force`)")
        else:
            typer.echo(f"  self-test: passed {test.get('at', '')}: {test.get('prompt_tokens')} prompt tokens at "
                       f"{test.get('prompt_tokens_per_s')} tok/s, {test.get('generated_tokens')} generated at "
                       f"{test.get('decode_tokens_per_s')} tok/s"
                       + (", RPC worker answered" if test.get("rpc_server") else ""))
