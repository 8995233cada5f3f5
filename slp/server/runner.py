"""Run the agent in this process: bind, start the engine, record run state, stop gracefully.

Signal handlers only record the signal; the main coroutine acts on it. SIGTERM/SIGINT: stop accepting,
let in-flight responses finish (up to the grace period), stop the engine, clear the state file.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import time
from pathlib import Path
from typing import Optional

import psutil
from aiohttp import web
from pydantic import ValidationError

import slp
from slp.engine.binary import EngineNotFound, find_engine
from slp.engine.pool import Engine
from slp.engine.supervisor import EngineState
from slp.models.store import ModelError, ModelStore, engine_name
from slp.lifecycle import SHUTDOWN_GRACE, AgentError, clean_up_after_dead_agent
from slp.runstate import clear_state, live_state, write_state
from slp.server import keys
from slp.server.app import apply_settings, create_app
from slp.server.head_start import HeadStart, installed_model
from slp.server.security import check_security
from slp.service.notify import ServiceNotifier, under_systemd
from slp.settings import Settings, describe_settings_error, ensure_private_dir

log = logging.getLogger("slp.agent")

class ModelNotInstalled(AgentError):
    """The model the agent starts with is not installed, and this start may not fetch it."""


def pick_model(settings: Settings, fetch: bool = True) -> Path:
    """The model the engine starts with: the active project's, else `settings.model` (fetched if it is
    the embedded default, unless `fetch` is off)."""
    models = ModelStore(settings.resolved_models_dir)
    found = installed_model(settings, models)
    if found is not None:
        return found
    if not fetch:
        raise ModelNotInstalled(f"model {settings.model!r} is not installed")
    try:
        return models.pull(settings.model, progress=False).path
    except ModelError as exc:
        raise AgentError(f"model {settings.model!r} is not installed and cannot be fetched: {exc}")


def reload_config(app: web.Application) -> None:
    """SIGHUP / `slp agent reload`: re-read the settings; a bad config keeps the old one running."""
    try:
        result = apply_settings(app, Settings())
    except (ValidationError, ValueError, OSError) as exc:
        message = describe_settings_error(exc) if isinstance(exc, ValidationError) else str(exc).splitlines()[0]
        app[keys.CONFIG] = {**app[keys.CONFIG], "error": f"config not reloaded: {message}", "loaded_at": time.time()}
        log.error("config reload failed, still running on the previous settings: %s", message)
        return
    log.info("config reloaded: changed %s; needs an agent restart: %s", result["changed"] or "nothing",
             result["needs_agent_restart"] or "nothing")


def warm_metadata(models: ModelStore, model_path: Path) -> None:
    found = models.for_path(model_path)
    if found is not None:
        try:
            found.metadata
        except ModelError:
            pass  # a damaged file: the engine's own failure says so


async def load_default(app: web.Application, name: str, path: Path, head: Optional[HeadStart]) -> None:
    """The model the agent starts with stays resident (pinned): `slp status` describes it, and `/health`
    is ready when it is. Other models load on demand and follow keep-alive."""
    try:
        await app[keys.ENGINES].load(name, path, pin=True)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - status and /health say why; the agent keeps serving
        log.error("the default model %s did not load: %s", name, exc)
    finally:
        if head is not None:
            head.discard()  # the head start's engine, if the load did not take it over


def setup_logging(settings: Settings) -> None:
    ensure_private_dir(settings.paths.log_dir)
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=logging.INFO, format=fmt)
    if under_systemd():  # stderr goes to the journal; keep slp's own log too (`slp agent logs`)
        handler = logging.FileHandler(settings.paths.agent_log)
        handler.setFormatter(logging.Formatter(fmt))
        logging.getLogger().addHandler(handler)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


async def listen(runner: web.AppRunner, host: str, port: int, setting: str, advice: str) -> None:
    """Serve `runner`'s app on host:port too; a port taken or refused is the user's to fix (AgentError)."""
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise AgentError(f"port {port} on {host} ({setting}) is already in use by another program; {advice}")
        raise AgentError(f"cannot listen on {host}:{port} ({setting}): {exc.strerror or exc}")


async def serve(settings: Settings, ready: Optional[asyncio.Event] = None, head: Optional[HeadStart] = None,
                fetch: bool = True) -> None:
    """Run until SIGTERM/SIGINT. Raises AgentError for anything the user must fix."""
    check_security(settings)
    paths = settings.paths
    running = live_state(paths)
    if running and running.get("agent_pid") != os.getpid():
        raise AgentError(f"an slp agent is already running at {running['url']} (pid {running['agent_pid']})")
    if running is None:  # (a state file of this agent's own: its head start has cleaned up already)
        for pid in clean_up_after_dead_agent(paths):
            log.warning("killed engine pid %s left behind by a dead agent", pid)
    try:
        engine_bin, build = find_engine(settings)
    except EngineNotFound as exc:
        raise AgentError(str(exc))
    # The head start has picked it already (and its engine serves that file); else pick it now.
    model_path = head.model_path if head is not None else await asyncio.to_thread(pick_model, settings, fetch)

    me = psutil.Process()
    state = {"agent_pid": me.pid, "agent_create_time": me.create_time(), "host": settings.host,
             "port": settings.port, "url": None, "engine_pid": None, "engine_create_time": None,
             "started_at": time.time(), "version": slp.__version__, "start_timeout": settings.start_timeout,
             "stop_grace": settings.stop_grace}

    notifier = ServiceNotifier()  # systemd Type=notify (READY=1, STATUS=, STOPPING=1); no-op without NOTIFY_SOCKET

    warmed: set[Path] = set()

    def on_engine_change(engine: Engine, engine_state: EngineState, reason: str) -> None:
        if engine_state is EngineState.READY and engine.path not in warmed:
            # Reading GGUF metadata spawns a child process (the agent keeps gguf and numpy out of itself).
            # Done while the engine loads, it competed with the readiness probe; done once it is ready,
            # it only delays the first `slp status`.
            warmed.add(engine.path)
            asyncio.get_running_loop().run_in_executor(None, warm_metadata, app[keys.MODELS], engine.path)
        if engine.path == model_path:
            notifier.engine_changed(engine_state, reason)
        record_engines()

    def record_engines() -> None:
        """Every engine's PID and create time in the state file, so a next start can reap them all."""
        if not state["url"]:
            return
        engines = []
        for engine in app[keys.ENGINES].engines():
            pid = engine.supervisor.pid
            try:
                engines.append({"model": engine.name, "pid": pid,
                                "create_time": psutil.Process(pid).create_time() if pid else None})
            except psutil.NoSuchProcess:
                pass
        primary = next((e for e in engines if e["model"] == primary_name), engines[0] if engines else None)
        new = {"engine_pid": primary["pid"] if primary else None,
               "engine_create_time": primary["create_time"] if primary else None,
               "engines": [e for e in engines if e["pid"]]}
        if any(state.get(k) != v for k, v in new.items()):
            state.update(new)
            write_state(paths, state)

    primary_name = model_path.stem
    boot: Optional[asyncio.Task] = None
    app = create_app(settings, engine_bin, build, on_engine_change, head_start=head)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_GRACE, handle_signals=False)
    await runner.setup()
    try:
        await listen(runner, settings.host, settings.port, "SLP_PORT", "stop it or choose another port")
        host, port = runner.addresses[0][:2]
        shown = f"[{host}]" if ":" in host else host
        state.update(host=host, port=port, url=f"http://{shown}:{port}")
        if settings.ollama_port is not None:  # the same app on Ollama's port, for tools that cannot be told another
            await listen(runner, settings.host, settings.ollama_port, "SLP_OLLAMA_PORT",
                         "stop it (Ollama itself?) or unset SLP_OLLAMA_PORT")
            state["ollama_url"] = f"http://{shown}:{runner.addresses[1][1]}"
            log.info("serving Ollama's API on %s too", state["ollama_url"])
        app[keys.PUBLIC_URL].append(state["url"])
        write_state(paths, state)
        log.info("slp agent %s listening on %s", slp.__version__, state["url"])

        stop, reload = asyncio.Event(), asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, reload.set)  # handlers only record; the loop below acts
        primary_name = engine_name(app[keys.MODELS], model_path)
        boot = asyncio.create_task(load_default(app, primary_name, model_path, head))
        if ready is not None:
            ready.set()
        while not stop.is_set():
            waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(reload.wait())]
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            for waiter in waiters:
                waiter.cancel()
            if reload.is_set():
                reload.clear()
                reload_config(app)
        notifier.stopping()
        log.info("stopping: finishing in-flight requests (up to %.0fs), then the engine", SHUTDOWN_GRACE)
    finally:
        if boot is not None:
            boot.cancel()
        await runner.cleanup()
        clear_state(paths, agent_pid=me.pid)
        log.info("slp agent stopped")


def run_foreground(settings: Settings, head: Optional[HeadStart] = None, fetch: bool = True) -> None:
    """Blocking entry point for `python -m slp.server` and `slp agent start --foreground`."""
    from slp.models.metadata import isolate_parsing

    isolate_parsing()  # a long-lived process: keep gguf and numpy out of it
    setup_logging(settings)
    try:
        import uvloop

        uvloop.run(serve(settings, head=head, fetch=fetch))
    except ImportError:
        asyncio.run(serve(settings, head=head, fetch=fetch))
