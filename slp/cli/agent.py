"""`slp agent start|stop|restart|status|logs`: the background agent's lifecycle from a terminal."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import psutil
import typer

from slp.cli.client import AgentClient, CliError, load_settings, run_cli
from slp.cli.progress import Bars
from slp.engine.binary import EngineNotFound, find_engine
from slp.engine.process import kill_stale_engines, tail_lines
from slp.models.store import ModelError, ModelStore
from slp.runstate import agent_health, clear_state, live_state, read_state
from slp.server.preflight import SHUTDOWN_GRACE, AgentError, check_security
from slp.service import ServiceError, installed_service, managed_by_service, service_start, service_stop
from slp.settings import Settings, ensure_private_dir

app = typer.Typer(help="Start, stop and inspect the slp agent.", no_args_is_help=True)


def _port_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def preflight(settings: Settings) -> None:
    """What the agent would fail on, said now in one line: security, the engine binary, the model
    (the embedded default is fetched here, before detaching, so the user sees the progress bar)."""
    try:
        check_security(settings)
        find_engine(settings)
    except (AgentError, EngineNotFound) as exc:
        raise CliError(str(exc))
    store = ModelStore(settings.resolved_models_dir)
    if store.resolve(settings.model) is None:
        typer.echo(f"Fetching the default model {settings.model} ...")
        try:
            with Bars() as bars:
                store.pull(settings.model, progress=bars)
        except ModelError as exc:
            raise CliError(str(exc))


def _wait_until_ready(settings: Settings, proc: subprocess.Popen, timeout: float) -> dict:
    """Poll the state file and /health until the engine is ready, the agent dies, or time runs out."""
    deadline = time.monotonic() + timeout
    log = settings.paths.agent_log
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            lines = [l for l in tail_lines(log, 30) if "Error" in l or "error" in l] or tail_lines(log, 3)
            raise CliError(f"the agent exited during start-up: {lines[-1] if lines else 'see ' + str(log)}")
        state = live_state(settings.paths)
        if state and state.get("url"):
            _, health = agent_health(state["url"], timeout=2)
            if health.get("status") == "ok":
                return state
            engine = health.get("engine") or {}
            if engine.get("state") == "failed":
                raise CliError(f"the engine failed to start: {engine.get('reason')}; "
                               "see `slp agent logs --engine`")
        time.sleep(0.1)
    raise CliError(f"the agent did not become ready within {timeout:.0f}s; see `slp agent logs`")


@app.command()
@run_cli
def start(foreground: bool = typer.Option(False, "--foreground", "-f",
                                          help="Run in this terminal (for services) instead of detaching.")) -> None:
    """Start the agent in the background and wait until the engine is ready.

    Example: slp agent start
    """
    settings = load_settings()
    if foreground:
        from slp.server.runner import run_foreground

        try:
            run_foreground(settings)
        except AgentError as exc:
            raise CliError(str(exc))
        return
    state = live_state(settings.paths)
    if state:
        typer.echo(f"slp agent is already running at {state['url']} (pid {state['agent_pid']})")
        return
    if manager := installed_service():
        # A service is installed: start it through its manager, so it stays the one in charge.
        try:
            state = service_start(settings)
        except ServiceError as exc:
            raise CliError(str(exc))
        typer.echo(f"slp agent running at {state['url']} (pid {state['agent_pid']}, managed by {manager}); "
                   "engine ready")
        return
    for pid in kill_stale_engines(read_state(settings.paths)):
        typer.echo(f"Cleaned up an engine (pid {pid}) left by an agent that died")
    clear_state(settings.paths)
    if settings.port and not _port_free(settings.host, settings.port):
        raise CliError(f"port {settings.port} on {settings.host} is already in use by another program; "
                       "stop it or choose another port with SLP_PORT")
    preflight(settings)  # last: it may fetch the default model, which no one should wait for in vain

    ensure_private_dir(settings.paths.log_dir)
    fd = os.open(settings.paths.agent_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}  # not a service's child
        proc = subprocess.Popen([sys.executable, "-m", "slp.server"],
                                stdin=subprocess.DEVNULL, stdout=fd, stderr=fd, start_new_session=True,
                                close_fds=True, env=env)
    finally:
        os.close(fd)
    state = _wait_until_ready(settings, proc, settings.start_timeout + 30)
    typer.echo(f"slp agent running at {state['url']} (pid {state['agent_pid']}); engine ready")


def stop_agent(settings: Settings) -> bool:
    """Stop the running agent (SIGTERM, then SIGKILL) and any engine it leaves. True if one was running."""
    if managed_by_service():
        service_stop()
        return True
    state = live_state(settings.paths)
    if not state:
        stale = read_state(settings.paths)
        if stale:
            kill_stale_engines(stale)
            clear_state(settings.paths)
        return False
    pid = state["agent_pid"]
    try:
        agent = psutil.Process(pid)
        agent.send_signal(signal.SIGTERM)
        agent.wait(SHUTDOWN_GRACE + settings.stop_grace + 5)
    except psutil.TimeoutExpired:
        agent.kill()
    except psutil.NoSuchProcess:
        pass
    kill_stale_engines(state)
    clear_state(settings.paths, agent_pid=pid)
    return True


@app.command()
@run_cli
def stop() -> None:
    """Stop the agent and its engine (does nothing if it is not running).

    Example: slp agent stop
    """
    settings = load_settings()
    typer.echo("slp agent stopped" if stop_agent(settings) else "slp agent is not running")


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
    settings = load_settings()
    state = live_state(settings.paths)
    if not state:
        typer.echo("slp agent is not running; start it with: slp agent start", err=True)
        raise typer.Exit(1)
    info = AgentClient(state["url"], settings=settings).request("GET", "/v1/status")
    engine = info["engine"]
    typer.echo(f"agent:  running at {state['url']} (pid {state['agent_pid']}, up {info['agent']['uptime_s']:.0f}s)")
    typer.echo(f"engine: {engine['state']} (pid {engine['pid']}) - {engine['reason']}; restarts: {engine['restarts']}")


@app.command()
@run_cli
def logs(engine: bool = typer.Option(False, "--engine", help="Show the engine's log instead of the agent's."),
         follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new lines."),
         lines: int = typer.Option(50, "--lines", "-n", help="How many lines to show first.")) -> None:
    """Show the agent's (or the engine's) log.

    Example: slp agent logs --engine -f
    """
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
