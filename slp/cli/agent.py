"""`slp agent start|stop|restart|status|logs`: the background agent's lifecycle from a terminal."""

from __future__ import annotations

import os
import signal
import time

from typing import TYPE_CHECKING, Optional

import typer

from slp.cli.client import AgentClient, CliError, agent_paths, load_settings, run_cli, running_agent
from slp.lifecycle import AgentError
from slp.runstate import live_state

if TYPE_CHECKING:
    from slp.settings import Settings

# Each command imports what it uses (the engine binary, the model store, the service managers, ...), so
# `slp agent status` costs no more than finding the agent, and `slp agent start` no more than starting it.

app = typer.Typer(help="Start, stop and inspect the slp agent.", no_args_is_help=True)

START_BACKSTOP = 90.0  # seconds `slp agent start` waits until the agent's state file gives its start_timeout


def check_can_start(settings: Settings) -> None:
    """What the agent would fail on, said now in one line: security, the engine binary, the model
    (the embedded default is fetched here, before detaching, so the user sees the progress bar)."""
    from slp.engine.binary import EngineNotFound, find_engine
    from slp.models.store import ModelError, ModelStore
    from slp.server.security import check_security

    try:
        check_security(settings)
        find_engine(settings)
    except (AgentError, EngineNotFound) as exc:
        raise CliError(str(exc))
    store = ModelStore(settings.resolved_models_dir)
    if store.resolve(settings.model) is None:
        typer.echo(f"Fetching the default model {settings.model} ...")
        from slp.cli.progress import Bars

        try:
            with Bars() as bars:
                store.pull(settings.model, progress=bars)
        except ModelError as exc:
            raise CliError(str(exc))


@app.command()
@run_cli
def start(foreground: bool = typer.Option(False, "--foreground", "-f",
                                          help="Run in this terminal (for services) instead of detaching.")) -> None:
    """Start the agent in the background and wait until the engine is ready.

    Example: slp agent start
    """
    if foreground:
        from slp.server.runner import run_foreground

        try:
            run_foreground(load_settings())
        except AgentError as exc:
            raise CliError(str(exc))
        return
    paths = agent_paths()
    state = live_state(paths)
    if state:
        typer.echo(f"slp agent is already running at {state['url']} (pid {state['agent_pid']})")
        return
    from slp.lifecycle import MODEL_NOT_INSTALLED, clean_up_after_dead_agent, start_detached, wait_for_detached
    from slp.service import ServiceError, installed_service, service_start

    if manager := installed_service():
        # A service is installed: start it through its manager, so it stays the one in charge.
        try:
            state = service_start(load_settings())
        except ServiceError as exc:
            raise CliError(str(exc))
        typer.echo(f"slp agent running at {state['url']} (pid {state['agent_pid']}, managed by {manager}); "
                   "engine ready")
        return
    for pid in clean_up_after_dead_agent(paths):
        typer.echo(f"Cleaned up an engine (pid {pid}) left by an agent that died")
    # The agent starts at once and makes every check the start needs (settings, security, port, engine,
    # model), saying what is wrong in one line; this process loads nothing more and leaves the cores to the
    # agent and its engine. The wait's limit is the agent's start_timeout (from its state file) + 30 s. Only
    # a model that is not installed comes back here, to be fetched with a progress bar.
    proc = start_detached(paths, fetch=False)
    try:
        state = wait_for_detached(proc, paths, START_BACKSTOP)
    except AgentError as exc:
        if proc.returncode != MODEL_NOT_INSTALLED:
            raise CliError(str(exc))
        settings = load_settings()
        check_can_start(settings)
        try:
            state = wait_for_detached(start_detached(paths), paths, START_BACKSTOP)
        except AgentError as exc:
            raise CliError(str(exc))
    typer.echo(f"slp agent running at {state['url']} (pid {state['agent_pid']}); engine ready")


def stop_agent(settings: Optional[Settings] = None) -> bool:
    """Stop the running agent, through its service when one manages it, and any engine it leaves.
    True if one was running. Without `settings` nothing but the paths is loaded (the agent's state file
    gives its stop grace): a stop costs no pydantic import."""
    from slp.lifecycle import stop_agent_process
    from slp.service import managed_by_service, service_stop

    if managed_by_service():
        service_stop()
        return True
    if settings is None:
        return stop_agent_process(agent_paths())
    return stop_agent_process(settings.paths, settings.stop_grace)


@app.command()
@run_cli
def stop() -> None:
    """Stop the agent and its engine (does nothing if it is not running).

    Example: slp agent stop
    """
    typer.echo("slp agent stopped" if stop_agent() else "slp agent is not running")


@app.command()
@run_cli
def restart() -> None:
    """Stop the agent if it runs, then start it again.

    Example: slp agent restart
    """
    stop_agent(load_settings())
    start(foreground=False)


@app.command()
@run_cli
def reload() -> None:
    """Re-read the configuration (like SIGHUP); the engine restarts only if its own settings changed.
    An invalid configuration is reported and the agent keeps running on the previous one.

    Example: slp agent reload
    """
    settings = load_settings()
    state = live_state(settings.paths)
    if not state:
        raise CliError("slp agent is not running; start it with: slp agent start")
    client = AgentClient(state["url"], settings=settings)
    before = client.request("GET", "/v1/status")["config"]["loaded_at"]
    os.kill(state["agent_pid"], signal.SIGHUP)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        config = client.request("GET", "/v1/status")["config"]
        if config["loaded_at"] != before:
            break
        time.sleep(0.1)
    else:
        raise CliError("the agent did not confirm the reload within 10s; see `slp agent logs`")
    if config["error"]:
        raise CliError(config["error"])
    typer.echo("configuration reloaded; changed: " + (", ".join(config["changed"]) or "nothing"))
    if config["needs_agent_restart"]:
        typer.echo("these take effect after `slp agent restart`: " + ", ".join(config["needs_agent_restart"]))


@app.command()
@run_cli
def status() -> None:
    """Say whether the agent runs, where, and what its engine is doing (exit 1 when not running).

    Example: slp agent status
    """
    state = running_agent()
    if not state:
        typer.echo("slp agent is not running; start it with: slp agent start", err=True)
        raise typer.Exit(1)
    info = AgentClient(state["url"], settings=load_settings()).request("GET", "/v1/status")
    engine = info["engine"]
    typer.echo(f"agent:  running at {state['url']} (pid {state['agent_pid']}, up {info['agent']['uptime_s']:.0f}s)")
    if state.get("ollama_url"):
        typer.echo(f"ollama: also at {state['ollama_url']} (SLP_OLLAMA_PORT)")
    typer.echo(f"engine: {engine['state']} (pid {engine['pid']}) - {engine['reason']}; "
               f"restarts: {engine['restarts']} (crashes: {engine.get('crashes', 0)})")


@app.command()
@run_cli
def logs(engine: bool = typer.Option(False, "--engine", help="Show the engine's log instead of the agent's."),
         follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new lines."),
         lines: int = typer.Option(50, "--lines", "-n", help="How many lines to show first.")) -> None:
    """Show the agent's (or the engine's) log.

    Example: slp agent logs --engine -f
    """
    from slp.engine.process import tail_lines

    settings = load_settings()
    path = settings.paths.engine_log if engine else settings.paths.agent_log
    if not path.exists():
        raise CliError(f"no log yet at {path}")
    for line in tail_lines(path, lines, max_bytes=max(16384, lines * 400)):
        typer.echo(line)
    if follow:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            try:
                while True:
                    chunk = f.readline()
                    if chunk:
                        typer.echo(chunk.decode("utf-8", "replace").rstrip("\n"))
                    else:
                        time.sleep(0.2)
            except KeyboardInterrupt:
                pass
