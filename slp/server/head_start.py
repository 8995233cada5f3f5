"""The agent's head start: its default model's engine is spawned before the agent imports its web stack.

Cold start is Python importing aiohttp, pydantic models and the rest (most of a second on a small machine),
then the engine loading its model. Nothing in the engine's start needs the agent's web stack, so
`python -m slp.server` spawns it first, from the few modules imported here, and the two overlap; once the
event loop runs, the default model's supervisor adopts this engine instead of spawning another
(`Supervisor.adopt`). An engine nobody adopted (the agent refused to start, the model no longer fits the
memory budget) is killed. Without a head start (RPC workers configured, the model not installed yet,
another agent running) the agent starts its engine as always.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from slp.engine.binary import EngineNotFound, find_engine
from slp.engine.command import engine_command
from slp.engine.process import StartedProcess, free_port, spawn_now
from slp.models.store import ModelStore, engine_name
from slp.projects.store import ProjectStore
from slp.runstate import live_state
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


def installed_model(settings: Settings) -> Optional[Path]:
    """The model the agent starts with, if it is installed: the active project's, else `settings.model`."""
    models = ModelStore(settings.resolved_models_dir)
    with ProjectStore(settings.paths.db_file) as projects:
        wanted = [projects.active().model, settings.model]
    for name in wanted:
        found = models.resolve(name)
        if found is not None:
            return found.path
    return None


def head_start(settings: Settings) -> Optional[HeadStart]:
    """Spawn the default model's engine now, or None when the agent should start it itself."""
    if settings.workers or live_state(settings.paths):
        return None  # workers are checked before each start; a running agent makes this one refuse
    try:
        binary, _ = find_engine(settings)
        model_path = installed_model(settings)
    except (EngineNotFound, Exception):  # noqa: BLE001 - only a head start: the agent reports it in its words
        return None
    if model_path is None:
        return None
    models = ModelStore(settings.resolved_models_dir)
    found = models.for_path(model_path)
    name, port, key = engine_name(models, model_path), free_port(), secrets.token_urlsafe(32)
    command = engine_command(settings, binary, model_path, port, key, name,
                             mmproj=found.mmproj if found is not None else None)
    try:
        process = spawn_now(command)
    except OSError:
        return None
    return HeadStart(model_path=model_path, name=name, port=port, api_key=key, process=process)
