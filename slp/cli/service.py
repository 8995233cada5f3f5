"""`slp service install|uninstall|status`: run the agent under systemd (Linux) or launchd (macOS)."""

from __future__ import annotations

from typing import Optional

import typer

from slp.cli.agent import check_can_start, stop_agent
from slp.cli.client import CliError, load_settings, run_cli
from slp.runstate import live_state
from slp.service import (
    InstallResult,
    ServiceError,
    ServiceManager,
    get_manager,
    install as install_service,
    render,
    status as service_status,
    uninstall as uninstall_service,
    wait_ready,
)
from slp.settings import Settings
from slp.cli import worker
from slp.worker import TRUST_WARNING
from slp.worker.probe import DEFAULT_PORT

app = typer.Typer(help="Run the agent as a user service that starts at login (systemd or launchd).",
                  no_args_is_help=True)

_PLATFORM_HELP = "Generate for this platform (linux or darwin) instead of the current one."
# Options `uninstall` and `status` share (`install` words --worker and --port its own way).
_PLATFORM = typer.Option(None, "--platform", hidden=True, help=_PLATFORM_HELP)
_WORKER = typer.Option(False, "--worker", help="The RPC worker's service on --port instead.")
_PORT = typer.Option(DEFAULT_PORT, "--port", help="--worker: its port.")


def _take_over(settings: Settings) -> None:
    """Stop an agent started with `slp agent start` (outside the service): the service needs its port."""
    state = live_state(settings.paths)
    if state:
        typer.echo(f"Stopping the slp agent started outside the service (pid {state['agent_pid']}) so the "
                   "service can take over")
        stop_agent(settings)


@app.command()
@run_cli
def install(print_: bool = typer.Option(False, "--print", help="Show the file that would be installed; change nothing."),
            no_start: bool = typer.Option(False, "--no-start", help="Only write the file; do not enable or start it."),
            platform: Optional[str] = typer.Option(None, "--platform", hidden=True, help=_PLATFORM_HELP),
            worker_: bool = typer.Option(False, "--worker", help="Install an RPC worker (`slp worker start`) instead "
                                         "of the agent; takes the worker options below."),
            host: str = typer.Option("127.0.0.1", "--host", help="--worker: address to listen on."),
            port: int = typer.Option(DEFAULT_PORT, "--port", help="--worker: port to listen on."),
            device: Optional[str] = typer.Option(None, "--device", help="--worker: device(s) to serve."),
            threads: Optional[int] = typer.Option(None, "--threads", help="--worker: CPU threads."),
            cache: bool = typer.Option(False, "--cache", help="--worker: local tensor cache."),
            trusted_network: bool = typer.Option(False, "--trusted-network", help=f"--worker: allow a non-loopback "
                                                 f"--host. {TRUST_WARNING}")) -> None:
    """Install the agent (or, with --worker, an RPC worker) as a user service, started now and at every
    login, and wait until it is ready.

    Safe to run again: the file is rewritten (and the service restarted) only when it changed.
    It records this Python and the SLP_* variables set now; run it again after changing them.

    Example: slp service install   ·   slp service install --worker --port 50052
    """
    if worker_:
        worker.service_install(worker.spec_from(host, port, device, threads, cache, trusted_network), print_,
                               no_start, platform)
        return
    settings = load_settings()
    try:
        if print_:
            typer.echo(render(settings, platform), nl=False)
            return
        manager = get_manager(platform)

        def before_start(manager: ServiceManager, result: InstallResult) -> None:
            active = manager.current().active
            if active and not result.changed:
                return  # running with this very file: nothing to start
            check_can_start(settings)
            if not active:
                _take_over(settings)
            typer.echo(f"Starting the slp service ({manager.path.name}); waiting for the engine ...")

        result = install_service(settings, platform, start=not no_start, manager=manager,
                                 before_start=before_start)
        if no_start:
            verb = "wrote" if result.changed else "unchanged:"
            typer.echo(f"slp service {verb} {result.path} (not started; `slp service install` starts it)")
            return
        state = wait_ready(settings, manager, settings.start_timeout + 60)  # launchd: it starts it now
    except ServiceError as exc:
        raise CliError(str(exc))
    if result.restarted:
        what = f"updated {result.path} and restarted the service"
    elif result.started:
        what = f"installed {result.path} and started the service"
    else:
        what = f"already installed and running (unchanged): {result.path}"
    typer.echo(f"slp service {what}; agent at {state['url']} (pid {state['agent_pid']}), engine ready")


@app.command()
@run_cli
def uninstall(platform: Optional[str] = _PLATFORM, worker_: bool = _WORKER, port: int = _PORT) -> None:
    """Stop the agent's (or a worker's) service, disable it and remove its file (nothing if not installed).

    Example: slp service uninstall
    """
    if worker_:
        worker.service_uninstall(port, platform)
        return
    try:
        removed, unreachable = uninstall_service(platform)
    except ServiceError as exc:
        raise CliError(str(exc))
    if not removed:
        typer.echo("slp service is not installed")
    elif unreachable:
        typer.echo(f"slp service removed ({get_manager(platform).path}); nothing was stopped: {unreachable}")
    else:
        typer.echo("slp service stopped and removed")


def _yes_no(value: Optional[bool]) -> str:
    return "unknown" if value is None else ("yes" if value else "no")


@app.command()
@run_cli
def status(print_: bool = typer.Option(False, "--print", help="Also show the file `slp service install` would write."),
           platform: Optional[str] = _PLATFORM, worker_: bool = _WORKER, port: int = _PORT) -> None:
    """Say whether the agent's (or a worker's) service is installed, enabled and active (exit 1 when not).

    Example: slp service status
    """
    if worker_:
        worker.service_status(port, platform)
        return
    settings = load_settings()
    try:
        info = service_status(settings, platform)
        manager = get_manager(platform)
        text = render(settings, platform) if print_ else None
    except ServiceError as exc:
        raise CliError(str(exc))
    typer.echo(f"service:   {manager.kind} ({info.manager})")
    if not info.installed:
        typer.echo(f"installed: no ({info.path}); install it with: slp service install")
    else:
        fresh = "up to date" if info.up_to_date else "differs from what `slp service install` would write now"
        typer.echo(f"installed: yes, {info.path} ({fresh})")
        typer.echo(f"enabled:   {_yes_no(info.enabled)}")
        pid = f", pid {info.pid}" if info.pid else ""
        typer.echo(f"active:    {_yes_no(info.active)} - {info.state}{pid}")
        if info.detail:
            typer.echo(f"status:    {info.detail}")
    if text is not None:
        typer.echo("")
        typer.echo(text, nl=False)
    if not info.active:
        raise typer.Exit(1)
