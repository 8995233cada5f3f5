"""Handlers for projects under /v1/projects (routed and documented in `slp.server.api`).

Validation lives in the pydantic models of `slp.projects.schema`; the handlers only parse JSON, call the
store off the event loop, map store errors to the OpenAI error envelope (`errors.project_error`, the one
mapping: an invalid project field is a 422 wherever it is refused) and return the store's models. What
they use is set on the app as `ProjectRoutes` (the store, and how to tell an installed model).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Callable

from aiohttp import web

from slp.projects.schema import (
    Project,
    ProjectCreate,
    ProjectUpdate,
    ProjectUsage,
    SessionDetail,
)
from slp.projects.store import ProjectError, ProjectInvalid, ProjectStore, parse
from slp.server import keys
from slp.server.errors import model_not_found, project_error
from slp.server.jsonbody import read_json_object
from slp.server.responses import ProjectDeleted, ProjectList, PromptCacheCleared, SessionList


@dataclass(frozen=True)
class ProjectRoutes:
    """What the project handlers use: the store, and `model_exists(name)` (a model name or alias is
    installed; it may block: it runs in a thread)."""

    store: ProjectStore
    model_exists: Callable[[str], bool]


PROJECT_ROUTES = web.AppKey("project_routes", ProjectRoutes)


async def call(fn: Callable[..., Any], *args: Any) -> Any:
    """Run a blocking store call in a thread, answering store errors in the API's envelope."""
    try:
        return await asyncio.to_thread(fn, *args)
    except ProjectError as exc:
        raise project_error(exc) from None


def validated(model: type, body: dict) -> Any:
    try:
        return parse(model, body)
    except ProjectInvalid as exc:
        raise project_error(exc) from None


async def _settled(request: web.Request) -> None:
    """Let the usage recorder write what it holds, so reads include every answered request."""
    recorder = request.app.get(keys.RECORDER)  # absent where only the project routes are mounted
    if recorder is not None:
        await recorder.flush()


def store_of(request: web.Request) -> ProjectStore:
    return request.app[PROJECT_ROUTES].store


async def _check_model(request: web.Request, model: str) -> None:
    if not await asyncio.to_thread(request.app[PROJECT_ROUTES].model_exists, model):
        raise model_not_found(model, status=422)  # a project's field: 422 like its others


async def list_projects(request: web.Request) -> ProjectList:
    return ProjectList(object="list", data=await call(store_of(request).list))


async def create_project(request: web.Request) -> Project:
    spec = validated(ProjectCreate, await read_json_object(request))
    if "model" in spec.model_fields_set:  # the default alias may be pulled later
        await _check_model(request, spec.model)
    return await call(store_of(request).create, spec)


async def get_project(request: web.Request) -> Project:
    project = await call(store_of(request).get, request.match_info["project"])
    prompts = request.app.get(keys.PROMPT_CACHE)
    if prompts is None:
        return project
    return project.model_copy(update={"prompt_cache": await asyncio.to_thread(prompts.entries, project.id)})


async def clear_prompt_cache(request: web.Request) -> PromptCacheCleared:
    project = await call(store_of(request).get, request.match_info["project"])
    prompts = request.app.get(keys.PROMPT_CACHE)
    deleted, freed = await asyncio.to_thread(prompts.clear, project.id) if prompts is not None else (0, 0)
    return PromptCacheCleared(object="project.prompt_cache.cleared", project_id=project.id, deleted=deleted,
                              bytes=freed)


async def update_project(request: web.Request) -> Project:
    patch = validated(ProjectUpdate, await read_json_object(request))
    if patch.model is not None:
        await _check_model(request, patch.model)
    return await call(store_of(request).update, request.match_info["project"], patch)


async def delete_project(request: web.Request) -> ProjectDeleted:
    await _settled(request)
    project = await call(store_of(request).delete, request.match_info["project"])
    prompts = request.app.get(keys.PROMPT_CACHE)
    if prompts is not None:
        await asyncio.to_thread(prompts.clear, project.id)
    return ProjectDeleted(id=project.id, object="project.deleted", deleted=True)


async def activate_project(request: web.Request) -> Project:
    return await call(store_of(request).activate, request.match_info["project"])


async def project_usage(request: web.Request) -> ProjectUsage:
    await _settled(request)
    return await call(store_of(request).usage, request.match_info["project"])


async def list_sessions(request: web.Request) -> SessionList:
    await _settled(request)
    return SessionList(object="list", data=await call(store_of(request).sessions, request.match_info["project"]))


async def get_session(request: web.Request) -> SessionDetail:
    await _settled(request)
    return await call(store_of(request).session, request.match_info["project"], request.match_info["session_id"])
