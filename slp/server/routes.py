"""slp's own handlers: health, status, the model list and metrics (routed and documented in `slp.server.api`)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Optional

import aiohttp
import psutil
from aiohttp import web

import slp
from slp.engine.gpu import gpu_description, gpu_memory_of
from slp.engine.process import memory_of, tail_lines
from slp.engine.pool import Engine
from slp.engine.supervisor import EngineState
from slp.models.store import ModelError
from slp.projects.schema import Project
from slp.server import keys
from slp.server.errors import model_not_found
from slp.server.responses import (
    ActiveProject,
    AgentInfo,
    ComputeState,
    ConfigState,
    EngineHealth,
    EngineRow,
    EngineStatus,
    Health,
    MemoryBudget,
    MemoryUsage,
    Model,
    ModelDetails,
    ModelInfo,
    ModelList,
    Status,
    WorkerLoss,
    WorkerRow,
)


def human_size(n: int | None) -> str | None:
    if n is None:
        return None
    size = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1000
    return None


def primary_engine(app: web.Application, model: Optional[str] = None) -> Optional[Engine]:
    """The engine `slp status` describes: the one serving `model` (the active project's) if loaded, else
    the agent's default model's, else the most recently used one."""
    pool = app[keys.ENGINES]
    for name in (model, app[keys.SETTINGS].model):
        found = app[keys.MODELS].resolve(name) if name else None
        if found is not None and (engine := pool.get(found.path)) is not None:
            return engine
    engines = pool.engines()
    return max(engines, key=lambda e: e.last_used) if engines else None


async def health(request: web.Request) -> tuple[Health, int]:
    """Agent liveness and engine readiness: 200 when the default engine is ready (or was unloaded on
    purpose), 503 (with why) while it starts, restarts or has failed."""
    engine = primary_engine(request.app)
    if engine is None:
        if request.app[keys.ENGINES].loading():  # the first load is still checking the memory budget
            return Health(status="starting", agent="ok", engine=EngineHealth(state="starting", reason="loading")), 503
        return Health(status="ok", agent="ok", engine=EngineHealth(state="unloaded", reason="no model is loaded")), 200
    supervisor = engine.supervisor
    ready = supervisor.state is EngineState.READY
    body = Health(status="ok" if ready else supervisor.state.value, agent="ok",
                  engine=EngineHealth(state=supervisor.state.value, reason=supervisor.reason, model=engine.name))
    return body, 200 if ready else 503


def status_payload(app: web.Application, project: Project) -> Status:
    """Everything `slp status` shows, and more (the table describes the engine of the active `project`'s
    model; `engines` lists every loaded one). Blocks: reads process memory and maybe a model's metadata,
    so it runs in a thread, where it only reads: the pool is written on the event loop alone (`status`
    refreshes the engines' measured memory there first)."""
    settings = app[keys.SETTINGS]
    pool = app[keys.ENGINES]
    primary = primary_engine(app, project.model)
    if primary is not None:
        supervisor = primary.supervisor
        engine = {**supervisor.snapshot(), "model": primary.name}
        history = list(supervisor.history)[-10:]
    else:
        engine = {"state": "unloaded", "reason": "no model is loaded", "pid": None, "port": None, "model": None,
                  "model_path": None, "restarts": 0, "crashes": 0, "uptime_s": None, "last_exit": None}
        history = []
    pid = engine["pid"]
    memory = memory_of(pid)
    build = app[keys.ENGINE_BUILD]
    gpu_bytes = gpu_memory_of(pid) if build.get("preset") in ("cuda", "vulkan") else None
    if memory is not None:
        memory["gpu_bytes"] = gpu_bytes
    model = None
    model_path = Path(engine["model_path"]) if engine.get("model_path") else None
    if model_path is None and project.model:
        found = app[keys.MODELS].resolve(project.model)
        model_path = found.path if found is not None else None
    if model_path is not None:
        installed = app[keys.MODELS].for_path(model_path)
        if installed is not None:
            try:
                meta = installed.metadata.to_dict()
            except ModelError as exc:
                meta = {"error": str(exc)}
            meta["gguf_name"] = meta.pop("name", None)  # the file's own label; `name` is what requests use
            model = ModelInfo.model_validate({
                **meta, "name": installed.name, "aliases": list(installed.aliases), "path": str(installed.path),
                "size_bytes": installed.size_bytes, "size": human_size(installed.size_bytes)})
    if engine["state"] == EngineState.FAILED.value and engine.get("last_exit"):
        engine["log_tail"] = engine["last_exit"]["log_tail"]
    elif engine["state"] != EngineState.READY.value:
        engine["log_tail"] = tail_lines(settings.paths.engine_log, 10)
    engine["memory"] = memory
    engine["history"] = history
    workers = app[keys.WORKERS]
    return Status(
        object="slp.status",
        server=app[keys.PUBLIC_URL][0] if app[keys.PUBLIC_URL] else None,
        agent=AgentInfo(pid=os.getpid(), version=slp.__version__, uptime_s=round(time.time() - app[keys.STARTED_AT], 1),
                        rss_bytes=psutil.Process().memory_info().rss),
        engine=EngineStatus.model_validate(engine),
        engine_build=build,
        model=model,
        quantization=model.quantization if model is not None else None,
        context_window=settings.ctx_size,
        flash_attention=settings.flash_attn and not engine.get("degraded"),  # safe mode turns it off
        model_size=model.size if model is not None else None,
        memory_usage=MemoryUsage(percent=memory["percent"] if memory else None,
                                 rss_bytes=memory["rss_bytes"] if memory else None, gpu_bytes=gpu_bytes),
        gpu=gpu_description(build.get("preset"), settings.gpu_layers),
        restarts=engine["restarts"],
        crashes=engine["crashes"],
        engines=engines_payload(app),
        memory_budget=MemoryBudget(budget_bytes=pool.budget, reserved_bytes=pool.used(),
                                   waiting_for_memory=pool.waiting_for_room),
        compute=ComputeState.model_validate(pool.gate.snapshot()),
        config=ConfigState.model_validate(app[keys.CONFIG]),
        workers=[WorkerRow.model_validate(row) for row in workers.snapshot()],  # RPC workers (SLP_WORKERS)
        worker_losses=[WorkerLoss.model_validate(loss) for loss in workers.losses_since(0)[-5:]],
        active_project=ActiveProject(id=project.id, name=project.name),
    )


def engines_payload(app: web.Application) -> list[EngineRow]:
    """Every loaded engine: what `slp ps` shows (memory measured now, slots from the engine's own use)."""
    pool = app[keys.ENGINES]
    settings = app[keys.SETTINGS]
    build = app[keys.ENGINE_BUILD]
    rows = []
    for engine in pool.engines():
        row = engine.snapshot()
        memory = memory_of(engine.supervisor.pid)
        row["rss_bytes"] = memory["rss_bytes"] if memory else None
        row["gpu_bytes"] = gpu_memory_of(engine.supervisor.pid) if build.get("preset") in ("cuda", "vulkan") else None
        found = app[keys.MODELS].for_path(engine.path)
        row["aliases"] = list(found.aliases) if found is not None else []
        busy = engine.supervisor.in_flight
        row["slots"] = {"busy": min(busy, settings.parallel), "total": settings.parallel}
        row["queued"] = max(0, busy - settings.parallel)
        rows.append(EngineRow.model_validate(row))
    return rows


async def status(request: web.Request) -> Status:
    """The agent, its engines, the model and the active project (what `slp status` prints)."""
    project = await asyncio.to_thread(request.app[keys.PROJECTS].active)
    await request.app[keys.ENGINES].refresh()  # measures in a thread, writes the engines here (on the loop)
    # Off the event loop: the first read of a model's GGUF metadata takes seconds (then it is cached).
    return await asyncio.to_thread(status_payload, request.app, project)


def _model_entries(app: web.Application) -> list[Model]:
    entries = []
    for model in app[keys.MODELS].list():
        created = int(model.path.stat().st_mtime) if model.path.exists() else 0
        for name in (*model.aliases, model.name):
            entries.append(Model(id=name, object="model", created=created, owned_by="slp", root=model.name))
    return entries


async def list_models(request: web.Request) -> ModelList:
    """Models a request may name: every installed model and its aliases (OpenAI list shape)."""
    return ModelList(object="list", data=_model_entries(request.app))


async def get_model(request: web.Request) -> Model:
    """One model (OpenAI's shape) and, under `details`, what `slp model show --json` says of it."""
    name = request.match_info["model"]
    for entry in _model_entries(request.app):
        if entry.id == name:
            installed = request.app[keys.MODELS].resolve(entry.root)
            # Off the event loop: the first read of a model's GGUF metadata takes seconds (then it is cached).
            details = await asyncio.get_running_loop().run_in_executor(None, installed.facts) if installed else None
            entry.details = ModelDetails.model_validate(details) if details is not None else None
            return entry
    raise model_not_found(name)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format: slp's metrics, then each engine's own (re-exported with a model label)."""
    app = request.app
    m, pool = app[keys.METRICS], app[keys.ENGINES]
    settings = app[keys.SETTINGS]
    m.in_flight.set(pool.admitted)
    slots_total = settings.parallel * max(1, len(pool.engines()))  # each engine serves `parallel` at once
    m.queued.set(max(0, pool.admitted - slots_total))
    # Process reads (and nvidia-smi on a GPU build, up to seconds) run in threads; gauges are set here.
    await pool.refresh()
    engines = pool.engines()
    memories, agent_rss = await asyncio.to_thread(_memory_of_processes, [e.supervisor.pid for e in engines])
    for engine, memory in zip(engines, memories):
        m.engine_rss.labels(engine.name).set(memory["rss_bytes"] if memory else 0)
        m.engine_cpu.labels(engine.name).set(memory["cpu_seconds"] if memory else 0)
        m.engine_leases.labels(engine.name).set(engine.leases)
        m.engine_queued.labels(engine.name).set(max(0, engine.supervisor.in_flight - settings.parallel))
    m.memory_reserved.set(pool.used())
    m.waiting_for_memory.set(pool.waiting_for_room)
    m.agent_rss.set(agent_rss)
    body = m.render()
    families: dict[str, list[str]] = {}
    for engine in pool.engines():
        supervisor = engine.supervisor
        if supervisor.state is not EngineState.READY:
            continue
        try:
            async with app[keys.ENGINE_CONTROL_HTTP].get(f"{supervisor.base_url}/metrics", timeout=aiohttp.ClientTimeout(total=2),
                                                 headers={"Authorization": app[keys.ENGINE_AUTH]}) as resp:
                if resp.status == 200:
                    _label_engine_metrics(await resp.read(), engine.name, families)
        except (aiohttp.ClientError, asyncio.TimeoutError):
            pass  # the engine is busy or restarting: slp's own metrics still answer
    if families:
        body += b"# The engines' own metrics (llama-server /metrics), labelled by model:\n"
        body += ("\n".join(line for lines in families.values() for line in lines) + "\n").encode()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


def _memory_of_processes(pids: list[Optional[int]]) -> tuple[list[Optional[dict]], int]:
    """Each engine process's memory and CPU time, and the agent's RSS (blocking reads: run in a thread)."""
    return [memory_of(pid) for pid in pids], psutil.Process().memory_info().rss


def _label_engine_metrics(text: bytes, model: str, families: dict[str, list[str]]) -> None:
    """Add llama-server's samples to `families` with a `model` label, so several engines' series stay
    apart; each family's HELP and TYPE lines come once and its samples stay together, as the format asks."""
    label = model.replace("\\", "\\\\").replace('"', '\\"')
    for line in text.decode("utf-8", "replace").splitlines():
        if not line:
            continue
        if line.startswith("#"):
            parts = line.split(" ", 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                lines = families.setdefault(parts[2], [])
                if not any(existing.startswith(f"# {parts[1]} ") for existing in lines):
                    lines.append(line)
            continue
        name, _, value = line.partition(" ")
        family = name.split("{", 1)[0]
        labelled = name.replace("{", f'{{model="{label}",', 1) if "{" in name else f'{name}{{model="{label}"}}'
        families.setdefault(family, []).append(f"{labelled} {value}")

