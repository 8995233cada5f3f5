"""Typed keys for everything the app keeps (aiohttp AppKey): one place to see the app's state.

Each service is made in `create_app` and, when it holds a resource (a process, a socket, a file), set up and
torn down by its own cleanup context there, so one that fails to stop does not keep the others open.
"""

from __future__ import annotations

import aiohttp
from aiohttp import web

from slp.engine.pool import EnginePool
from slp.models.store import ModelStore
from slp.projects.store import ProjectStore
from slp.server.observe import Metrics
from slp.server.services import UsageRecorder
from slp.settings import Settings
from slp.worker.pool import WorkerPool

SETTINGS = web.AppKey("settings", Settings)  # replaced by a config reload (see app.apply_settings)
ENGINES = web.AppKey("engines", EnginePool)  # one supervised engine per loaded model
MODELS = web.AppKey("models", ModelStore)
PROJECTS = web.AppKey("projects", ProjectStore)
ENGINE_CONTROL_HTTP = web.AppKey("engine_control_http", aiohttp.ClientSession)  # health probes, /metrics
ENGINE_AUTH = web.AppKey("engine_auth", str)  # "Bearer <key>" for the engine's private API key
ENGINE_BUILD = web.AppKey("engine_build", dict)  # the build record of the engine binary (may be empty)
RECORDER = web.AppKey("recorder", UsageRecorder)  # usage and conversations, written off the request path
STARTED_AT = web.AppKey("started_at", float)
METRICS = web.AppKey("metrics", Metrics)
CONFIG = web.AppKey("config", dict)  # the last config (re)load: when, what changed, any error
PUBLIC_URL = web.AppKey("public_url", list)  # [url]: filled in once the socket is bound
WORKERS = web.AppKey("workers", WorkerPool)  # the RPC workers (SLP_WORKERS)
PROMPT_CACHE = web.AppKey("prompt_cache", object)  # projects' prefixes on disk (PromptCache), None when off
PROXY = web.AppKey("proxy", object)  # the Proxy, for routes that translate through its lease (Ollama's)
