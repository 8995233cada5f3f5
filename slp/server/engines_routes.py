"""Handlers that show and steer the loaded engines: `GET /v1/engines`, `POST /v1/models/{model}/load|unload`
(routed and documented in `slp.server.api`)."""

from __future__ import annotations

import asyncio

from aiohttp import web

from slp.engine.pool import UNSET, ModelTooLarge
from slp.server import keys
from slp.server.errors import APIError, keep_alive_seconds, model_not_found, model_too_large
from slp.server.jsonbody import read_json_object, validate
from slp.models.store import engine_name
from slp.server.responses import ComputeState, EngineList, EngineRow, UnloadResult
from slp.server.routes import engines_payload
from slp.server.schemas import LoadModelRequest


def _installed(request: web.Request):
    name = request.match_info["model"]
    found = request.app[keys.MODELS].resolve(name)
    if found is None:
        raise model_not_found(name)
    return found


async def _options(request: web.Request) -> LoadModelRequest:
    """The optional JSON body of load; an empty body means no options."""
    if not request.can_read_body:
        return LoadModelRequest()
    return validate(LoadModelRequest, await read_json_object(request))


async def list_engines(request: web.Request) -> EngineList:
    """Every loaded engine (model, aliases, PID, state, memory, threads, slots, queue, leases, last use,
    expiry) and the memory budget: what `slp ps` shows."""
    app = request.app
    pool = app[keys.ENGINES]
    rows = await asyncio.to_thread(engines_payload, app)
    return EngineList(object="list", data=rows, budget_bytes=pool.budget, reserved_bytes=pool.used(),
                      waiting_for_memory=pool.waiting_for_room, compute=ComputeState.model_validate(pool.gate.snapshot()))


async def load_model(request: web.Request) -> EngineRow:
    """Load a model now and wait until its engine is ready; `pin` keeps it resident (no expiry, no eviction)."""
    app = request.app
    model = _installed(request)
    options = await _options(request)
    keep_alive = UNSET if options.keep_alive is None else keep_alive_seconds(options.keep_alive)
    name = engine_name(app[keys.MODELS], model.path)
    try:
        engine = await app[keys.ENGINES].load(name, model.path, pin=options.pin, keep_alive=keep_alive)
    except ModelTooLarge as exc:
        raise model_too_large(exc) from None
    for row in await asyncio.to_thread(engines_payload, app):
        if row.path == str(engine.path):
            return row
    raise APIError(503, f"the model '{name}' was unloaded as soon as it was ready; load it again",
                   code="engine_unavailable")


async def unload_model(request: web.Request) -> UnloadResult:
    """Unload a model once the requests it is serving have finished (none is cut)."""
    app = request.app
    model = _installed(request)
    unloaded = await app[keys.ENGINES].unload(model.path)
    app[keys.PROXY].forget_models()  # its settings may have changed (`slp model template` unloads it): look again
    return UnloadResult(model=engine_name(app[keys.MODELS], model.path), unloaded=unloaded, state="unloaded")
