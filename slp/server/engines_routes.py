"""Routes that show and steer the loaded engines: `GET /v1/engines`, `POST /v1/models/{model}/load|unload`."""

from __future__ import annotations

import asyncio

from aiohttp import web

from slp.engine.pool import UNSET, ModelTooLarge, parse_keep_alive
from slp.server import keys
from slp.server.errors import APIError
from slp.server.jsonbody import read_json_object, validate
from slp.server.schemas import LoadModelRequest
from slp.server.proxy import engine_name
from slp.server.routes import engines_payload


def _installed(request: web.Request):
    name = request.match_info["model"]
    found = request.app[keys.MODELS].resolve(name)
    if found is None:
        raise APIError(404, f"The model '{name}' does not exist or is not installed; see GET /v1/models or "
                       "`slp model list`", code="model_not_found", param="model")
    return found


async def _options(request: web.Request) -> LoadModelRequest:
    """The optional JSON body of load; an empty body means no options."""
    if not request.can_read_body:
        return LoadModelRequest()
    return validate(LoadModelRequest, await read_json_object(request))


def _row(app: web.Application, path) -> dict:
    for row in engines_payload(app):
        if row["path"] == str(path):
            return row
    return {"model": None, "state": "unloaded"}


async def list_engines(request: web.Request) -> web.Response:
    """Every loaded engine (model, aliases, PID, state, memory, threads, slots, queue, leases, last use,
    expiry) and the memory budget: what `slp ps` shows."""
    app = request.app
    pool = app[keys.ENGINES]
    rows = await asyncio.to_thread(engines_payload, app)
    return web.json_response({"object": "list", "data": rows, "budget_bytes": pool.budget,
                              "reserved_bytes": pool.used(), "waiting_for_memory": pool.waiting_for_room,
                              "compute": pool.gate.snapshot()})


async def load_model(request: web.Request) -> web.Response:
    """Load a model now and wait until its engine is ready; `pin` keeps it resident (no expiry, no eviction)."""
    app = request.app
    model = _installed(request)
    options = await _options(request)
    keep_alive = UNSET
    if options.keep_alive is not None:
        try:
            keep_alive = parse_keep_alive(options.keep_alive)
        except ValueError as exc:
            raise APIError(400, str(exc), code="invalid_value", param="keep_alive")
    name = engine_name(app[keys.MODELS], model.path)
    try:
        engine = await app[keys.ENGINES].load(name, model.path, pin=options.pin, keep_alive=keep_alive)
    except ModelTooLarge as exc:
        raise APIError(400, str(exc), code="model_too_large", param="model")
    return web.json_response(await asyncio.to_thread(_row, app, engine.path))


async def unload_model(request: web.Request) -> web.Response:
    """Unload a model once the requests it is serving have finished (none is cut)."""
    app = request.app
    model = _installed(request)
    unloaded = await app[keys.ENGINES].unload(model.path)
    return web.json_response({"model": engine_name(app[keys.MODELS], model.path), "unloaded": unloaded,
                              "state": "unloaded"})


def add_engine_routes(app: web.Application) -> None:
    app.router.add_get("/v1/engines", list_engines)
    app.router.add_post("/v1/models/{model}/load", load_model)
    app.router.add_post("/v1/models/{model}/unload", unload_model)
