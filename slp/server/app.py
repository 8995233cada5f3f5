"""`create_app(settings, ...)`: the aiohttp application, its middlewares, routes and long-lived parts.

The app's services (typed in `keys`) are made here and handed to the parts that use them; each one
that holds a resource gets its own cleanup context, torn down after in-flight requests have finished
(graceful shutdown): the engine pool, the RPC workers' checks, the control HTTP session (health probes,
metrics), the usage recorder, the project database and the request log.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import time
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable, Optional

import aiohttp
from aiohttp import web

from slp.engine.budget import (
    ComputeGate,
    cpu_cores,
    estimate_bytes,
    estimate_from_size,
    memory_budget_bytes,
)
from slp.engine.command import ENGINE_SETTINGS, engine_command, prompt_cache_dir
from slp.engine.gpu import gpu_memory_of
from slp.engine.pool import Engine, EnginePool, parse_keep_alive
from slp.engine.process import memory_of
from slp.engine.supervisor import EngineState, Supervisor
from slp.models.store import ModelError, ModelStore
from slp.projects.documents import index_of
from slp.projects.store import ProjectStore
from slp.server import keys
from slp.server.api import PUBLIC_PATHS, add_api_routes
from slp.server.engine_client import EngineClient
from slp.server.head_start import HeadStart
from slp.server.prompt_cache import PromptCache, PromptStore, build_id
from slp.server.middleware import error_middleware, make_auth, make_cors, make_host_check
from slp.server.projects_routes import ProjectRoutes
from slp.server.proxy import Proxy, name_unknown_fields
from slp.server.services import ProjectCache, UsageRecorder
from slp.server.observe import Metrics, RequestLog, make_observer
from slp.settings import Settings
from slp.sizes import parse_size
from slp.worker.metrics import WorkerCollector
from slp.worker.pool import WorkerPool


def create_app(settings: Settings, engine_bin: Path, engine_build: Optional[dict],
               on_engine_change: Optional[Callable[[Engine, EngineState, str], None]] = None,
               head_start: Optional[HeadStart] = None) -> web.Application:
    """Build the agent app. Engines start when a model is loaded (the runner loads the default one once
    the socket is bound); `head_start` is that model's engine, already started, for its supervisor to adopt."""
    metrics = Metrics()
    request_log = RequestLog(settings.paths.request_log)
    middlewares = [make_observer(metrics, request_log), error_middleware,
                   make_host_check([*settings.allowed_hosts, settings.host])]
    preflight, add_cors_headers = make_cors(settings.cors_origins)
    middlewares.append(preflight)
    if settings.api_key is not None:
        # /health stays open for service managers and load balancers: it says ready or not, no details.
        middlewares.append(make_auth(settings.api_key.get_secret_value(), PUBLIC_PATHS))
    app = web.Application(middlewares=middlewares, client_max_size=settings.max_body_bytes)
    app.on_response_prepare.extend([add_cors_headers, name_unknown_fields])

    models = ModelStore(settings.resolved_models_dir)
    projects = ProjectStore(settings.paths.db_file)
    app[keys.SETTINGS] = settings
    app[keys.MODELS] = models
    app[keys.PROJECTS] = projects
    app[keys.ENGINE_BUILD] = engine_build or {}
    app[keys.STARTED_AT] = time.time()
    app[keys.PUBLIC_URL] = []
    recorder = app[keys.RECORDER] = UsageRecorder(projects)
    project_cache = ProjectCache(projects)  # the proxy's own: only it reads projects per request
    app[keys.METRICS] = metrics
    app[keys.CONFIG] = {"loaded_at": time.time(), "error": None, "changed": [], "needs_agent_restart": []}
    workers = app[keys.WORKERS] = WorkerPool()  # RPC workers: checked before each engine start
    metrics.registry.register(WorkerCollector(workers))
    engine_key = head_start.api_key if head_start is not None else secrets.token_urlsafe(32)
    app[keys.ENGINE_AUTH] = f"Bearer {engine_key}"
    app[keys.PROMPT_CACHE] = _prompt_cache(app, settings, engine_bin, metrics)
    engines = app[keys.ENGINES] = _engine_pool(app, engine_bin, engine_key, on_engine_change, head_start)
    engines.max_admitted = settings.parallel + settings.max_queue  # requests served or waiting; more get a 429
    metrics.memory_budget.set(engines.budget)

    # One cleanup context per resource, in start order; aiohttp tears them down in reverse and goes on
    # past one that fails, so a supervisor that cannot stop never keeps the database or a socket open.
    app.cleanup_ctx.extend([
        _closing(request_log.close),
        _closing(projects.close),
        _started(recorder.start, recorder.stop),  # its last writes go to the project store
        _control_http,
        _started(lambda: workers.start(lambda: app[keys.SETTINGS].workers), workers.stop),
        _started(lambda: None, engines.stop),  # the engines stop first: their probes use the control session
    ])

    proxy = Proxy(settings=lambda: app[keys.SETTINGS], models=models, projects=project_cache, engines=engines,
                  recorder=recorder, workers=workers, engine_auth=app[keys.ENGINE_AUTH],
                  documents=index_of(projects), prompts=app[keys.PROMPT_CACHE])
    add_api_routes(app, proxy, ProjectRoutes(projects, lambda name: models.resolve(name) is not None))
    return app


def _prompt_cache(app: web.Application, settings: Settings, engine_bin: Path, metrics: Metrics) -> Optional[PromptCache]:
    """The projects' prompt cache on disk (None when `prompt_cache` is off)."""
    if not settings.prompt_cache:
        return None
    store = PromptStore(prompt_cache_dir(settings), limit_bytes=0)
    root = store.ready()  # made first: a share such as '5%' is of the disk it is on
    store.limit = parse_size(settings.prompt_cache_size, shutil.disk_usage(root).total, "prompt cache size")
    models = app[keys.MODELS]

    def model_sha(path: Path) -> Optional[str]:
        found = models.for_path(path)
        return found.sha256 if found is not None else None

    return PromptCache(store, settings=lambda: app[keys.SETTINGS], http=lambda: app[keys.ENGINE_CONTROL_HTTP],
                       engine_auth=app[keys.ENGINE_AUTH], build=build_id(app[keys.ENGINE_BUILD], engine_bin),
                       model_sha=model_sha, metrics=metrics)


def _closing(close: Callable[[], None]) -> Callable:
    """A cleanup context for a resource that is ready once made: it only needs closing."""
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        yield
        close()
    return ctx


def _started(start: Callable[[], object], stop: Callable[[], Awaitable[object]]) -> Callable:
    """A cleanup context for a service with a background task: started with the app, stopped after it."""
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        start()
        yield
        await stop()
    return ctx


async def _control_http(app: web.Application) -> AsyncIterator[None]:
    """The session for health probes and metrics scrapes: apart from requests, so they never queue behind
    requests for the engines' slots."""
    control = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=16, keepalive_timeout=4))
    app[keys.ENGINE_CONTROL_HTTP] = control
    yield
    await control.close()


def _engine_pool(app: web.Application, engine_bin: Path, engine_key: str,
                 on_engine_change: Optional[Callable[[Engine, EngineState, str], None]],
                 head_start: Optional[HeadStart]) -> EnginePool:
    """The pool of engines, one per loaded model, with the factories it needs: how to make a supervised
    engine, how to estimate and measure a model's memory, and what to tell metrics when engines come and go."""
    settings, models, metrics, workers = app[keys.SETTINGS], app[keys.MODELS], app[keys.METRICS], app[keys.WORKERS]
    prompts = app[keys.PROMPT_CACHE]
    cpu_build = app[keys.ENGINE_BUILD].get("preset", "cpu") in ("cpu", "cpu-portable")

    safe_modes: dict[Path, str] = {}  # model path -> why its engine needed safe mode (for its next load)

    def make_engine(name: str, path: Path) -> Engine:
        current = app[keys.SETTINGS]
        engine: Optional[Engine] = None
        asked = time.monotonic()

        async def make_command(model_path: Path, port: int):
            # Read at each spawn: a config reload changes what the next engine gets. Only the RPC
            # workers that answer now are passed (probed in a thread: ~2 s at most).
            current = app[keys.SETTINGS]
            rpc = await workers.select_async(current.workers, supervisor) if current.workers else []
            found = models.for_path(model_path)  # a vision model's projector travels with it
            command = engine_command(current, engine_bin, model_path, port, engine_key, name, workers=rpc,
                                     mmproj=found.mmproj if found is not None else None)
            engine.extra["argv"] = command.argv  # what its KV state depends on (the prompt cache's key)
            return command

        def changed(state: EngineState, reason: str) -> None:
            nonlocal asked
            metrics.engine_changed(name, state, supervisor.degraded)
            if supervisor.degraded is not None:  # the next load of this model starts in safe mode at once
                safe_modes[path] = supervisor.degraded["reason"]
            if state is EngineState.READY and asked is not None:
                metrics.engine_load_seconds.labels(name).observe(time.monotonic() - asked)
                asked = None
            if on_engine_change is not None and engine is not None:
                on_engine_change(engine, state, reason)

        supervisor = Supervisor(
            make_command, app[keys.ENGINE_CONTROL_HTTP], start_timeout=current.start_timeout,
            health_interval=current.health_interval, health_timeout=current.health_timeout,
            stop_grace=current.stop_grace, max_restarts=current.max_restarts, restart_window=current.restart_window,
            stall_timeout=current.stall_timeout, name=name, log_path=current.paths.engine_log, on_change=changed,
            on_restart=lambda reason: metrics.engine_restarted(name, reason),
            on_kill=lambda: engine.extra["http"].abort(),  # a killed engine's requests end now, not at its exit
            safe_mode=safe_modes.get(path), on_stopping=(lambda: prompts.save(engine)) if prompts is not None else None)
        threads = (current.threads or cpu_cores()) if cpu_build else 0
        engine = Engine(name=name, path=path, supervisor=supervisor, threads=threads, estimate=0,
                        keep_alive=parse_keep_alive(current.keep_alive))
        head = head_start
        if head is not None and not head.adopted and head.model_path == path and head.name == name:
            supervisor.adopt(head.process, head.port)  # started before the agent's imports: take it over
            head.adopted = True
            found = models.for_path(path)  # its plan matched these settings: the command it runs is this one
            engine.extra["argv"] = engine_command(current, engine_bin, path, head.port, engine_key, name,
                                                  mmproj=found.mmproj if found is not None else None).argv
        # llama-server serves `parallel + 4` connections at once (its HTTP threads); more only wait in
        # its accept queue in no order. Waiting in our client instead is first come, first served.
        engine.extra["http"] = EngineClient(max_connections=current.parallel + 4)
        return engine

    def estimate(path: Path) -> int:
        # Through the store: its metadata cache lives in the store (never beside a user's own file),
        # and a model of several files (split parts, projector) counts all of them.
        found = models.for_path(path)
        current = app[keys.SETTINGS]
        try:
            if found is None:
                raise ModelError(f"{path} is not in the store")
            meta = found.metadata
        except ModelError:
            return estimate_from_size(path.stat().st_size, current.cache_ram)
        return estimate_bytes(meta, current.ctx_size, current.cache_ram)

    def measure(engine: Engine) -> int:
        pid = engine.supervisor.pid
        memory = memory_of(pid)
        gpu = gpu_memory_of(pid) if not cpu_build else None
        return (memory["rss_bytes"] if memory else 0) + (gpu or 0)

    def pool_event(event: str, engine: Engine) -> None:
        if event == "load":
            metrics.engine_loads.labels(engine.name).inc()
            return
        metrics.engine_gone(engine.name, event)
        asyncio.get_running_loop().create_task(engine.extra["http"].close())
        if on_engine_change is not None:
            on_engine_change(engine, EngineState.STOPPED, event)

    return EnginePool(make_engine, estimate, measure, budget=memory_budget_bytes(settings),
                      gate=ComputeGate(cpu_cores()), wait_timeout=settings.request_wait_timeout,
                      max_waiting=settings.max_queue, on_event=pool_event, extra_room=workers.free_memory)


# Settings a reload can apply: the engine's own (it is restarted when they change) and the agent's timing.
LIVE_SETTINGS = ("start_timeout", "request_wait_timeout", "health_interval", "health_timeout", "stop_grace",
                 "max_restarts", "restart_window", "max_queue", "model", "memory_budget", "keep_alive",
                 "stall_timeout", "strict", "workers", "max_document_bytes", "retrieval_share")


def apply_settings(app: web.Application, new: Settings) -> dict:
    """Switch a running app to `new` settings; restart the engine only if its own settings changed.

    Settings bound when the agent started (host, port, key, CORS, hosts, folders, binary) are reported
    in `needs_agent_restart` and left as they were.
    """
    old = app[keys.SETTINGS]
    changed = [name for name in Settings.model_fields if getattr(old, name) != getattr(new, name)]
    fixed = [name for name in changed if name not in ENGINE_SETTINGS + LIVE_SETTINGS]
    keep = {name: getattr(old, name) for name in fixed}
    applied = new.model_copy(update=keep)
    app[keys.SETTINGS] = applied
    pool = app[keys.ENGINES]
    pool.budget = memory_budget_bytes(applied)
    pool.wait_timeout, pool.max_waiting = applied.request_wait_timeout, applied.max_queue
    app[keys.METRICS].memory_budget.set(pool.budget)
    pool.max_admitted = applied.parallel + applied.max_queue
    restart = any(name in ENGINE_SETTINGS or name == "workers" for name in changed)  # workers: --rpc
    for engine in pool.engines():
        engine.supervisor.configure(start_timeout=applied.start_timeout, health_interval=applied.health_interval,
                                    health_timeout=applied.health_timeout, stop_grace=applied.stop_grace,
                                    max_restarts=applied.max_restarts, restart_window=applied.restart_window,
                                    stall_timeout=applied.stall_timeout)
        engine.extra["http"].max_connections = applied.parallel + 4
        if "keep_alive" in changed:
            engine.keep_alive = parse_keep_alive(applied.keep_alive)
        if restart:
            engine.supervisor.restart("config")
    result = {"loaded_at": time.time(), "error": None, "changed": [n for n in changed if n not in fixed],
              "needs_agent_restart": fixed}
    app[keys.CONFIG] = result
    return result
