"""slp's own routes: health, status and the model list."""

from __future__ import annotations

import asyncio
import os
import time

import aiohttp
import psutil
from aiohttp import web

import slp
from slp.engine.gpu import gpu_description, gpu_memory_of
from slp.engine.process import memory_of, tail_lines
from slp.engine.supervisor import EngineState
from slp.models.store import ModelError
from slp.server import keys
from slp.server.errors import APIError


def human_size(n: int | None) -> str | None:
    if n is None:
        return None
    size = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1000
    return None


async def health(request: web.Request) -> web.Response:
    """Agent liveness and engine readiness: 200 when the engine is ready, 503 (with why) otherwise."""
    supervisor = request.app[keys.SUPERVISOR]
    ready = supervisor.state is EngineState.READY
    body = {"status": "ok" if ready else supervisor.state.value,
            "agent": "ok", "engine": {"state": supervisor.state.value, "reason": supervisor.reason}}
    return web.json_response(body, status=200 if ready else 503)


def status_payload(app: web.Application) -> dict:
    """Everything `slp status` shows, and more, as one JSON object."""
    settings, supervisor = app[keys.SETTINGS], app[keys.SUPERVISOR]
    engine = supervisor.snapshot()
    memory = memory_of(supervisor.pid)
    build = app[keys.ENGINE_BUILD]
    gpu_bytes = gpu_memory_of(supervisor.pid) if build.get("preset") in ("cuda", "vulkan") else None
    if memory is not None:
        memory["gpu_bytes"] = gpu_bytes
    model = None
    if supervisor.model_path is not None:
        installed = app[keys.MODELS].resolve(supervisor.model_path.stem)
        if installed is not None:
            try:
                meta = installed.metadata.to_dict()
            except ModelError as exc:
                meta = {"error": str(exc)}
            meta["gguf_name"] = meta.pop("name", None)  # the file's own label; `name` is what requests use
            model = {**meta, "name": installed.name, "aliases": list(installed.aliases), "path": str(installed.path),
                     "size_bytes": installed.size_bytes, "size": human_size(installed.size_bytes)}
    if supervisor.state is EngineState.FAILED and engine.get("last_exit"):
        engine["log_tail"] = engine["last_exit"]["log_tail"]
    elif supervisor.state is not EngineState.READY:
        engine["log_tail"] = tail_lines(settings.paths.engine_log, 10)
    engine["memory"] = memory
    engine["history"] = list(supervisor.history)[-10:]
    return {
        "object": "slp.status",
        "server": app[keys.PUBLIC_URL][0] if app[keys.PUBLIC_URL] else None,
        "agent": {"pid": os.getpid(), "version": slp.__version__,
                  "uptime_s": round(time.time() - app[keys.STARTED_AT], 1),
                  "rss_bytes": psutil.Process().memory_info().rss},
        "engine": engine,
        "engine_build": build,
        "model": model,
        "quantization": (model or {}).get("quantization"),
        "context_window": settings.ctx_size,
        "flash_attention": settings.flash_attn,
        "model_size": (model or {}).get("size"),
        "memory_usage": {"percent": memory["percent"] if memory else None,
                         "rss_bytes": memory["rss_bytes"] if memory else None,
                         "gpu_bytes": gpu_bytes},
        "gpu": gpu_description(build.get("preset"), settings.gpu_layers),
        "restarts": supervisor.restarts,
        "config": app[keys.CONFIG],
    }


async def status(request: web.Request) -> web.Response:
    """The agent, its engine, the model and the active project (what `slp status` prints)."""
    # Off the event loop: the first read of a model's GGUF metadata takes seconds (then it is cached).
    payload = await asyncio.to_thread(status_payload, request.app)
    project = await asyncio.to_thread(request.app[keys.PROJECTS].active)
    payload["active_project"] = {"id": project.id, "name": project.name}
    return web.json_response(payload)


def _model_entries(app: web.Application) -> list[dict]:
    entries = []
    for model in app[keys.MODELS].list():
        created = int(model.path.stat().st_mtime) if model.path.exists() else 0
        for name in (*model.aliases, model.name):
            entries.append({"id": name, "object": "model", "created": created, "owned_by": "slp",
                            "root": model.name})
    return entries


async def list_models(request: web.Request) -> web.Response:
    """Models a request may name: every installed model and its aliases (OpenAI list shape)."""
    return web.json_response({"object": "list", "data": _model_entries(request.app)})


async def get_model(request: web.Request) -> web.Response:
    name = request.match_info["model"]
    for entry in _model_entries(request.app):
        if entry["id"] == name:
            return web.json_response(entry)
    raise APIError(404, f"The model '{name}' does not exist or is not installed", code="model_not_found",
                   param="model")


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format: slp's metrics, then the engine's own (re-exported as it sends them)."""
    app = request.app
    m, supervisor, limiter = app[keys.METRICS], app[keys.SUPERVISOR], app[keys.LIMITER]
    settings = app[keys.SETTINGS]
    m.in_flight.set(limiter.in_flight)
    m.queued.set(max(0, limiter.in_flight - settings.parallel))
    memory = memory_of(supervisor.pid)
    m.engine_rss.set(memory["rss_bytes"] if memory else 0)
    m.engine_cpu.set(memory["cpu_seconds"] if memory else 0)
    m.agent_rss.set(psutil.Process().memory_info().rss)
    body = m.render()
    if supervisor.state is EngineState.READY:
        try:
            async with app[keys.ENGINE_CONTROL_HTTP].get(f"{supervisor.base_url}/metrics", timeout=aiohttp.ClientTimeout(total=2),
                                                 headers={"Authorization": app[keys.ENGINE_AUTH]}) as resp:
                if resp.status == 200:
                    body += b"# The engine's own metrics (llama-server /metrics):\n" + await resp.read()
        except (aiohttp.ClientError, asyncio.TimeoutError):
            pass  # the engine is busy or restarting: slp's own metrics still answer
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/health", health)
    app.router.add_get("/v1/status", status)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model}", get_model)
    app.router.add_get("/metrics", metrics)
