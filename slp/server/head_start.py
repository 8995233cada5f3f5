"""The agent's head start: its default model's engine is spawned before the agent imports its web stack.

Cold start is Python importing aiohttp, pydantic models and the rest (most of a second on a small machine),
then the engine loading its model. Nothing in the engine's start needs the agent's web stack, so
`python -m slp.server` spawns it first, from the few modules imported here, and the two overlap; once the
event loop runs, the default model's supervisor adopts this engine instead of spawning another
(`Supervisor.adopt`). It is in the state file from the start, so a next start reaps it like any engine of
a dead agent; one nobody adopted (the default model did not fit the memory budget, the agent failed later
in its start) is killed. Without a head start (RPC workers configured, the model not installed yet,
another agent running, a start the agent will refuse) the agent starts its engine as always.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import psutil

from slp.engine.binary import find_engine
from slp.engine.command import engine_command
from slp.engine.process import StartedProcess, free_port, spawn_now
from slp.server import head_plan
from slp.server.head_plan import Planned
from slp.lifecycle import clean_up_after_dead_agent, port_free
from slp.models.store import ModelStore, engine_name
from slp.projects.store import ProjectStore
from slp.runstate import live_state, write_state
from slp.server.security import check_security
from slp.settings import Settings


@dataclass
class HeadStart:
    """An engine already loading `model_path` on `port`, guarded by `api_key` (the agent's engine key)."""

    model_path: Path
    name: str
    port: int
    api_key: str
    process: StartedProcess
    adopted: bool = False

    def discard(self) -> None:
        """Kill the engine unless a supervisor took it over."""
        if not self.adopted:
            self.process.kill()


def installed_model(settings: Settings, models: ModelStore) -> Optional[Path]:
    """The model the agent starts with, if it is installed: the active project's, else `settings.model`."""
    with ProjectStore(settings.paths.db_file) as projects:
        wanted = [projects.active().model, settings.model]
    for name in wanted:
        found = models.resolve(name)
        if found is not None:
            return found.path
    return None


def head_start(settings: Settings, planned: Optional[Planned] = None) -> Optional[HeadStart]:
    """Spawn the default model's engine now, or None when the agent should start it itself: whenever the
    agent is about to refuse (another agent runs, an unsafe address, its port taken) or the start needs
    what only the agent does (fetching the model, checking RPC workers).

    `planned` is the engine `head_plan` spawned from the last start's command: kept if it is exactly the
    engine worked out here, else killed. The command used is recorded as the plan for the next start."""
    try:
        head = _head_start(settings, planned)
    finally:
        if planned is not None and not planned.taken:
            planned.kill()
    if head is None:
        head_plan.forget(settings.paths)
    return head


def _head_start(settings: Settings, planned: Optional[Planned]) -> Optional[HeadStart]:
    paths = settings.paths
    if settings.workers or live_state(paths) or not port_free(settings.host, settings.port):
        return None
    try:
        check_security(settings)
        binary, _ = find_engine(settings)
        models = ModelStore(settings.resolved_models_dir)
        model_path = installed_model(settings, models)
    except Exception:  # noqa: BLE001 - only a head start: the agent says what is wrong in its own words
        model_path = None
    if model_path is None:
        return None
    found = models.for_path(model_path)
    name = engine_name(models, model_path)
    mmproj = found.mmproj if found is not None else None
    process = None
    if planned is not None:
        command = engine_command(settings, binary, model_path, planned.port, planned.key, name, mmproj=mmproj)
        if command == planned.command:
            port, key, process = planned.port, planned.key, StartedProcess(planned.popen)
            planned.taken = True
        else:
            planned.kill()  # now, so its memory is free before the right one loads
    if process is None:
        clean_up_after_dead_agent(paths)  # a dead agent's engines free their memory before this one loads
        port, key = free_port(), secrets.token_urlsafe(32)
        command = engine_command(settings, binary, model_path, port, key, name, mmproj=mmproj)
        try:
            process = spawn_now(command)
        except OSError:
            return None
    if settings.port:
        # In the state file at once, so a next start reaps it even if this agent is killed before it
        # serves (the parent-death signal does that on Linux only). The URL is where it will listen.
        me, engine = psutil.Process(), psutil.Process(process.pid)
        host = f"[{settings.host}]" if ":" in settings.host else settings.host
        write_state(paths, {"agent_pid": me.pid, "agent_create_time": me.create_time(), "host": settings.host,
                            "port": settings.port, "url": f"http://{host}:{settings.port}",
                            "start_timeout": settings.start_timeout,
                            "engine_pid": process.pid, "engine_create_time": engine.create_time(),
                            "engines": [{"model": name, "pid": process.pid, "create_time": engine.create_time()}]})
        head_plan.save(paths, command, port, key, (settings.host, settings.port))
    return HeadStart(model_path=model_path, name=name, port=port, api_key=key, process=process)
