"""HTTP routes for projects under /v1/projects.

Validation lives in the pydantic models of `slp.projects.schema` (the OpenAPI doc is generated from
them); the handlers only parse JSON, call the store off the event loop and map store errors to
the OpenAI error envelope.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable

from aiohttp import web

from slp.projects.schema import ProjectCreate, ProjectUpdate
from slp.projects.store import (
    ProjectConflict,
    ProjectError,
    ProjectInvalid,
    ProjectNotFound,
    ProjectStore,
    parse,
)
from slp.server import keys
from slp.server.errors import APIError
from slp.server.jsonbody import read_json_object


def _api_error(exc: ProjectError) -> APIError:
    if isinstance(exc, ProjectNotFound):
        status = 404
    elif isinstance(exc, ProjectConflict):
        status = 409
    elif isinstance(exc, ProjectInvalid):
        status = 422
    else:
        status = 400
    return APIError(status, exc.message, code=exc.code, param=exc.param)


async def _call(fn: Callable[..., Any], *args: Any) -> Any:
    """Run a blocking store call in a thread, answering store errors in the API's envelope."""
    try:
        return await asyncio.to_thread(fn, *args)
    except ProjectError as exc:
        raise _api_error(exc) from None


def _validate(model: type, body: dict) -> Any:
    try:
        return parse(model, body)
    except ProjectInvalid as exc:
        raise _api_error(exc) from None


async def _settled(request: web.Request) -> None:
    """Let the usage recorder write what it holds, so reads include every answered request."""
    recorder = request.app.get(keys.RECORDER)  # absent where only the project routes are mounted
    if recorder is not None:
        await recorder.flush()


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status)


def add_project_routes(app: web.Application, store: ProjectStore, model_exists: Callable[[str], bool]) -> None:
    """Register the /v1/projects routes on `app`; `model_exists` says whether a model name or alias is installed."""

    async def check_model(model: str) -> None:
        if not await asyncio.to_thread(model_exists, model):
            raise APIError(422, f"model '{model}' is not installed (see: slp models list)",
                           code="model_not_found", param="model")

    async def list_projects(request: web.Request) -> web.Response:
        projects = await _call(store.list)
        return _json({"object": "list", "data": [p.model_dump(mode="json") for p in projects]})

    async def create_project(request: web.Request) -> web.Response:
        spec = _validate(ProjectCreate, await read_json_object(request))
        if "model" in spec.model_fields_set:  # the default alias may be pulled later
            await check_model(spec.model)
        project = await _call(store.create, spec)
        return _json(project.model_dump(mode="json"), status=201)

    async def get_project(request: web.Request) -> web.Response:
        project = await _call(store.get, request.match_info["project"])
        return _json(project.model_dump(mode="json"))

    async def update_project(request: web.Request) -> web.Response:
        patch = _validate(ProjectUpdate, await read_json_object(request))
        if patch.model is not None:
            await check_model(patch.model)
        project = await _call(store.update, request.match_info["project"], patch)
        return _json(project.model_dump(mode="json"))

    async def delete_project(request: web.Request) -> web.Response:
        await _settled(request)
        project = await _call(store.delete, request.match_info["project"])
        return _json({"id": project.id, "object": "project.deleted", "deleted": True})

    async def activate_project(request: web.Request) -> web.Response:
        project = await _call(store.activate, request.match_info["project"])
        return _json(project.model_dump(mode="json"))

    async def project_usage(request: web.Request) -> web.Response:
        await _settled(request)
        usage = await _call(store.usage, request.match_info["project"])
        return _json(usage.model_dump(mode="json"))

    async def list_sessions(request: web.Request) -> web.Response:
        await _settled(request)
        sessions = await _call(store.sessions, request.match_info["project"])
        return _json({"object": "list", "data": [s.model_dump(mode="json") for s in sessions]})

    async def get_session(request: web.Request) -> web.Response:
        await _settled(request)
        detail = await _call(store.session, request.match_info["project"], request.match_info["session_id"])
        return _json(detail.model_dump(mode="json"))

    router = app.router
    router.add_get("/v1/projects", list_projects)
    router.add_post("/v1/projects", create_project)
    router.add_get("/v1/projects/{project}", get_project)
    router.add_patch("/v1/projects/{project}", update_project)
    router.add_delete("/v1/projects/{project}", delete_project)
    router.add_post("/v1/projects/{project}/activate", activate_project)
    router.add_get("/v1/projects/{project}/usage", project_usage)
    router.add_get("/v1/projects/{project}/sessions", list_sessions)
    router.add_get("/v1/projects/{project}/sessions/{session_id}", get_session)
