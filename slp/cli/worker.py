"""`slp worker start|stop|status`: llama.cpp RPC workers on this machine, for engines elsewhere (or here)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Optional

import psutil
import typer
from tabulate import tabulate

from slp.cli.client import CliError, load_settings, run_cli
from slp.engine.process import tail_lines
from slp.runstate import wait_exited
from slp.settings import Settings, ensure_private_dir
from slp.worker import (
    TRUST_WARNING,
    WorkerError,
    WorkerSpec,
    all_worker_states,
    live_worker_state,
    log_file,
    read_worker_state,
    state_file,
    worker_binary,
)
from slp.worker.probe import DEFAULT_PORT, probe_worker

app = typer.Typer(help="Run llama.cpp RPC workers that engines can offload model layers to (see README: Workers).",
                  no_args_is_help=True)

START_TIMEOUT = 150.0  # the supervisor's own READY_TIMEOUT plus start-up
STOP_TIMEOUT = 15.0

_HOST = typer.Option("127.0.0.1", "--host", help="Address to listen on (IPv4). Anything but loopback needs "
                     "--trusted-network.")
_PORT = typer.Option(DEFAULT_PORT, "--port", help="Port to listen on.")
_TRUSTED = typer.Option(False, "--trusted-network", help=f"Allow a non-loopback --host. {TRUST_WARNING}")


def spec_from(host: str, port: int, device: Optional[str], threads: Optional[int], cache: bool,
              trusted_network: bool) -> WorkerSpec:
    spec = WorkerSpec(host=host, port=port, device=device, threads=threads, cache=cache,
                      trusted_network=trusted_network)
    try:
        spec.check()
    except WorkerError as exc:
        raise CliError(str(exc))
    return spec


@app.command()
@run_cli
def start(host: str = _HOST, port: int = _PORT,
          device: Optional[str] = typer.Option(None, "--device", help="Device(s) to serve, comma-separated "
                                               "(default: the GPUs, else the CPU)."),
          threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads (CPU device)."),
          cache: bool = typer.Option(False, "--cache", help="Keep received tensors in a local file cache "
                                     "(faster reloads of the same model)."),
          trusted_network: bool = _TRUSTED,
          foreground: bool = typer.Option(False, "--foreground", "-f", help="Run in this terminal (for services).")
          ) -> None:
    """Start an RPC worker under slp's supervision and wait until it answers the RPC hello.

    Restarted with backoff if it exits; `slp worker status` shows it, `slp worker stop` ends it.
    Example: slp worker start --port 50052
    """
    spec = spec_from(host, port, device, threads, cache, trusted_network)
    settings = load_settings()
    if foreground:
        from slp.worker.runner import run_foreground

        try:
            code = run_foreground(spec, settings)
        except WorkerError as exc:
            raise CliError(str(exc))
        if code:
            state = read_worker_state(state_file(settings.paths, spec.port)) or {}
            raise CliError(f"worker {spec.address} failed: {state.get('reason', 'see its log')}")
        return
    try:
        worker_binary(settings)
    except WorkerError as exc:
        raise CliError(str(exc))
    path = state_file(settings.paths, spec.port)
    running = live_worker_state(path)
    if running:
        if running.get("host") != spec.host:
            raise CliError(f"a worker already runs on port {spec.port}, bound to {running.get('host')}; "
                           f"`slp worker stop --port {spec.port}` first")
        typer.echo(f"slp worker already running on {running['address']} (pid {running.get('worker_pid')})")
        return
    path.unlink(missing_ok=True)
    log = log_file(settings.paths, spec.port)
    ensure_private_dir(log.parent)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
        proc = subprocess.Popen([sys.executable, "-m", "slp.worker", *spec.options()], stdin=subprocess.DEVNULL,
                                stdout=fd, stderr=fd, start_new_session=True, close_fds=True, env=env)
    finally:
        os.close(fd)
    state = _wait_ready(settings, spec, proc)
    version = f", RPC protocol {state['version']}" if state.get("version") else ""
    typer.echo(f"slp worker ready on {spec.address} (pid {state.get('worker_pid')}{version}); log: {log}")


def _wait_ready(settings: Settings, spec: WorkerSpec, proc: subprocess.Popen) -> dict:
    path = state_file(settings.paths, spec.port)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        state = read_worker_state(path)
        if proc.poll() is not None:
            reason = (state or {}).get("reason")
            if not reason:
                lines = tail_lines(log_file(settings.paths, spec.port), 3)
                reason = lines[-1] if lines else f"exit status {proc.returncode}"
            raise CliError(f"worker {spec.address} did not start: {reason}")
        if state and state.get("state") == "ready":
            return state
        time.sleep(0.1)
    raise CliError(f"worker {spec.address} did not become ready within {START_TIMEOUT:.0f}s; "
                   f"see {log_file(settings.paths, spec.port)}")


def stop_worker(settings: Settings, port: int) -> bool:
    """Stop the supervised worker on `port` (SIGTERM to its supervisor, then SIGKILL). True if one ran."""
    path = state_file(settings.paths, port)
    state = live_worker_state(path)
    if not state:
        path.unlink(missing_ok=True)  # stale
        return False
    pid = state["supervisor_pid"]
    try:
        os.kill(pid, signal.SIGTERM)
        wait_exited(psutil.Process(pid), STOP_TIMEOUT)
    except psutil.TimeoutExpired:
        try:
            os.killpg(pid, signal.SIGKILL)  # the supervisor leads its own session; the worker dies with it
        except (ProcessLookupError, PermissionError):
            pass
    except (ProcessLookupError, psutil.NoSuchProcess):
        pass
    path.unlink(missing_ok=True)
    return True


@app.command()
@run_cli
def stop(port: int = _PORT,
         all_: bool = typer.Option(False, "--all", help="Stop every worker slp supervises here.")) -> None:
    """Stop the RPC worker on --port (does nothing if none runs).

    Example: slp worker stop --port 50052
    """
    settings = load_settings()
    ports = [state.get("port") for _, state in all_worker_states(settings.paths)] if all_ else [port]
    stopped = [p for p in ports if isinstance(p, int) and stop_worker(settings, p)]
    if stopped:
        typer.echo("slp worker stopped on port " + ", ".join(map(str, stopped)))
    else:
        typer.echo("no slp worker was running" + ("" if all_ else f" on port {port}"))


def describe(state: dict, timeout: float = 1.0) -> dict:
    """A running worker as status shows it: the supervisor's record, the process, and a hello probe."""
    out = {"address": state.get("address"), "state": state.get("state"), "reason": state.get("reason"),
           "supervisor_pid": state.get("supervisor_pid"), "pid": state.get("worker_pid"),
           "restarts": state.get("restarts", 0), "last_exit": state.get("last_exit"), "log": state.get("log"),
           "rss_bytes": None, "rtt_ms": None, "version": state.get("version"), "memory": state.get("memory")}
    pid = state.get("worker_pid")
    try:
        proc = psutil.Process(pid) if pid else None
        if proc is not None:
            out["rss_bytes"] = proc.memory_info().rss
            if proc.status() == psutil.STATUS_STOPPED:
                out["state"], out["reason"] = "stopped", "the process is stopped (SIGSTOP); `kill -CONT` it"
                return out
    except psutil.Error:
        pass
    if out["state"] == "ready":
        probe = probe_worker(out["address"], timeout)
        if probe.ok:
            out.update(rtt_ms=probe.rtt_ms, version=probe.version, memory=probe.memory)
        elif probe.state == "not-answering":
            out["state"], out["reason"] = "busy", "serving an engine (a worker serves one at a time)"
        else:
            out["state"], out["reason"] = probe.state, probe.detail
    return out


def _size(n: Optional[int]) -> str:
    return "n/a" if n is None else f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


@app.command()
@run_cli
def status(port: Optional[int] = typer.Option(None, "--port", help="Only the worker on this port."),
           as_json: bool = typer.Option(False, "--json", help="Print as JSON.")) -> None:
    """Show the RPC workers slp supervises here: address, state, PID, memory, round trip (exit 1 if none runs).

    Example: slp worker status
    """
    settings = load_settings()
    found = []
    for path, _ in all_worker_states(settings.paths):
        state = live_worker_state(path)
        if state and (port is None or state.get("port") == port):
            found.append(describe(state))
    if as_json:
        typer.echo(json.dumps(found, indent=2))
    elif found:
        rows = [(w["address"], w["state"], w["pid"], _size(w["rss_bytes"]),
                 "n/a" if w["rtt_ms"] is None else f"{w['rtt_ms']:.2f} ms",
                 "n/a" if not w["memory"] else f"{_size(w['memory']['free_bytes'])} / {_size(w['memory']['total_bytes'])}",
                 w["restarts"], w["reason"]) for w in found]
        typer.echo(tabulate(rows, headers=["Address", "State", "PID", "RSS", "Hello RTT", "Free / total",
                                           "Restarts", "Detail"], tablefmt="simple"))
    else:
        typer.echo("no slp worker is running" + ("" if port is None else f" on port {port}")
                   + "; start one with: slp worker start", err=True)
    if not found:
        raise typer.Exit(1)


# ----------------------------------------------------------------------------- `slp service ... --worker`

def service_install(spec: WorkerSpec, print_: bool, no_start: bool, platform: Optional[str]) -> None:
    """`slp service install --worker`: the worker on spec.port as a user service."""
    from slp.service import ServiceError
    from slp.service.worker import install_worker, render_worker

    settings = load_settings()
    try:
        if print_:
            typer.echo(render_worker(settings, spec, platform), nl=False)
            return
        worker_binary(settings)
        if not no_start and live_worker_state(state_file(settings.paths, spec.port)):
            typer.echo(f"Stopping the worker on port {spec.port} started outside the service")
            stop_worker(settings, spec.port)
        result = install_worker(settings, spec, platform, start=not no_start)
    except (ServiceError, WorkerError) as exc:
        raise CliError(str(exc))
    verb = "wrote" if result.changed else "unchanged:"
    tail = "not started" if no_start else f"worker ready on {spec.address}"
    typer.echo(f"slp worker service {verb} {result.path} ({tail})")


def service_uninstall(port: int, platform: Optional[str]) -> None:
    from slp.service import ServiceError
    from slp.service.worker import uninstall_worker

    try:
        removed, unreachable = uninstall_worker(port, platform)
    except ServiceError as exc:
        raise CliError(str(exc))
    if not removed:
        typer.echo(f"no slp worker service is installed for port {port}")
    else:
        typer.echo(f"slp worker service for port {port} " + (f"removed; nothing was stopped: {unreachable}"
                                                            if unreachable else "stopped and removed"))


def service_status(port: int, platform: Optional[str]) -> None:
    from slp.service import ServiceError
    from slp.service.worker import worker_status

    try:
        info = worker_status(port, platform)
    except ServiceError as exc:
        raise CliError(str(exc))
    if not info.installed:
        typer.echo(f"installed: no ({info.path}); install it with: slp service install --worker --port {port}")
        raise typer.Exit(1)
    pid = f", pid {info.pid}" if info.pid else ""
    typer.echo(f"installed: yes, {info.path}\nactive:    {info.state}{pid}")
    if info.detail:
        typer.echo(f"status:    {info.detail}")
    if not info.active:
        raise typer.Exit(1)
