"""Typed keys for everything the app keeps (aiohttp AppKey): one place to see the app's state."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from slp.engine.pool import EnginePool
from slp.models.store import ModelStore
from slp.projects.store import ProjectStore
from slp.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
ENGINES = web.AppKey("engines", EnginePool)  # one supervised engine per loaded model
MODELS = web.AppKey("models", ModelStore)
PROJECTS = web.AppKey("projects", ProjectStore)
ENGINE_CONTROL_HTTP = web.AppKey("engine_control_http", aiohttp.ClientSession)  # health probes, /metrics
ENGINE_AUTH = web.AppKey("engine_auth", str)  # "Bearer <key>" for the engine's private API key
ENGINE_BUILD = web.AppKey("engine_build", dict)  # the build record of the engine binary (may be empty)
LIMITER = web.AppKey("limiter", object)
PROJECT_CACHE = web.AppKey("project_cache", object)  # slp.server.proxy.ProjectCache
RECORDER = web.AppKey("recorder", object)
STARTED_AT = web.AppKey("started_at", float)
METRICS = web.AppKey("metrics", object)  # slp.server.observe.Metrics
CONFIG = web.AppKey("config", dict)  # the last config (re)load: when, what changed, any error
PUBLIC_URL = web.AppKey("public_url", list)  # [url]: filled in once the socket is bound
WORKERS = web.AppKey("workers", object)  # slp.worker.pool.WorkerPool: the RPC workers (SLP_WORKERS)
