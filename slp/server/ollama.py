"""Ollama's REST API (`/api/...`, `/`) on the agent, translated to the engines slp already runs.

No second engine and no second model store: a chat or generate request becomes a request to the model's
llama-server (`/v1/chat/completions`, or `/completion` / `/infill` for `raw` and `suffix`), leased,
shaped by its project and accounted through the proxy (`Proxy.exchange`), and the engine's event stream
is turned into Ollama's NDJSON objects as it arrives. A `"stream": false` request asks the engine for its
whole answer (its stream can hold back an unfinished tail), fed through the same translation (`Reply`) and
gathered into one object. Errors have Ollama's shape (`{"error": "..."}`); a stream that fails midway ends with one.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Optional

import aiohttp
from aiohttp import web
from pydantic import BaseModel

from slp.engine.budget import memory_budget_bytes
from slp.engine.pool import UNSET, ModelTooLarge
from slp.engine.supervisor import EngineUnavailable
from slp.models import hub
from slp.models.errors import ModelError
from slp.models.store import InstalledModel, ModelFile, ModelStore, valid_name
from slp.projects.schema import Project
from slp.projects.shaping import shape_chat, shape_completion, shape_plain
from slp.server import keys
from slp.server.engine_client import EngineResponse, EngineStreamError
from slp.server.errors import APIError, keep_alive_seconds
from slp.server.jsonbody import read_json_object, validate
from slp.server.ollama_schemas import (
    NDJSON,
    OllamaChatRequest,
    OllamaCopyRequest,
    OllamaDetails,
    OllamaEmbeddingResponse,
    OllamaEmbeddingsRequest,
    OllamaEmbedRequest,
    OllamaEmbedResponse,
    OllamaGenerateRequest,
    OllamaModelRequest,
    OllamaPs,
    OllamaPullRequest,
    OllamaRunning,
    OllamaShow,
    OllamaTag,
    OllamaTags,
    OllamaVersion,
)
from slp.server.proxy import engine_refusal
from slp.server.record import RECORD, RequestRecord

log = logging.getLogger("slp.ollama")

OLLAMA_VERSION = "0.12.6"  # the Ollama API these routes follow (clients compare it to a minimum)
FOREVER = "2318-11-26T00:00:00Z"  # Ollama's expires_at for a model kept loaded for good


# ----------------------------------------------------------------------------- errors

class OllamaError(APIError):
    """An APIError whose body is Ollama's `{"error": "..."}` (the error middleware passes APIErrors on)."""

    def __init__(self, status: int, message: str, headers: Optional[dict] = None, code: Optional[str] = None):
        super().__init__(status, message, code=code, headers=headers)
        self.body_dict = {"error": message}
        self.text = json.dumps(self.body_dict)


def _as_ollama(exc: BaseException) -> OllamaError:
    if isinstance(exc, OllamaError):
        return exc
    if isinstance(exc, APIError):
        headers = {k: v for k, v in exc.headers.items() if k in ("Retry-After", "WWW-Authenticate")}
        return OllamaError(exc.status, exc.message, headers=headers or None, code=exc.code)
    if isinstance(exc, EngineUnavailable):
        return _as_ollama(APIError.engine_unavailable(exc))
    if isinstance(exc, web.HTTPException):
        if exc.status == 413:
            return OllamaError(413, "request body too large", code="request_too_large")
        return OllamaError(exc.status, exc.reason)
    if isinstance(exc, ModelError):
        return OllamaError(400, str(exc), code="model_error")
    log.exception("unhandled error in an Ollama route", exc_info=exc)
    return OllamaError(500, "internal error in the slp agent; see the agent log", code="internal_error")


def ollama_route(handler: Callable[[web.Request], Awaitable[Any]]) -> Callable[[web.Request], Awaitable[Any]]:
    """Every refusal of an Ollama route in Ollama's shape, with the status Ollama uses."""

    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> Any:
        try:
            return await handler(request)
        except asyncio.CancelledError:
            raise
        except web.HTTPException as exc:
            if exc.status < 400 or exc.status in (401, 403):  # the agent's own guards keep its envelope (as documented)
                raise
            raise _as_ollama(exc) from None
        except Exception as exc:  # noqa: BLE001 - the envelope is the contract, the log keeps the details
            raise _as_ollama(exc) from None

    return wrapped


def not_found(name: str) -> OllamaError:
    return OllamaError(404, f"model '{name}' not found", code="model_not_found")


# ----------------------------------------------------------------------------- names

_HF_HOSTS = ("hf.co/", "huggingface.co/")


def _without_latest(name: str) -> str:
    return name[: -len(":latest")] if name.endswith(":latest") else name


def hub_spelling(name: str) -> Optional[str]:
    """`hf.co/OWNER/REPO[:QUANT]` (Ollama's spelling) as slp's `hf:OWNER/REPO[:QUANT]`, else None."""
    for host in _HF_HOSTS:
        if name.startswith(host):
            rest = _without_latest(name[len(host):])
            return hub.PREFIX + rest
    return None


def _pulled_from(store: ModelStore, ref: str) -> Optional[InstalledModel]:
    """The installed model a hub pull of `ref` recorded (its source names the repository and file)."""
    try:
        wanted = hub.parse_ref(ref)
    except ModelError:
        return None
    for model in store.list():
        source = model.source
        if not source.startswith(hub.PREFIX):
            continue
        repo_file = source[len(hub.PREFIX):].rsplit("@", 1)[0]
        if not repo_file.lower().startswith(wanted.repo.lower() + "/"):
            continue
        filename = repo_file[len(wanted.repo) + 1:]
        if wanted.filename and wanted.filename != filename:
            continue
        if wanted.quant and (hub.quant_of(filename) or "").upper() != wanted.quant:
            continue
        return model
    return None


def installed(store: ModelStore, name: str) -> Optional[InstalledModel]:
    """The installed model an Ollama client means by `name`: the store's name or alias (`:latest`
    optional), or the model an `hf.co/...` pull installed."""
    ref = hub_spelling(name)
    if ref is not None:
        return _pulled_from(store, ref)
    return store.resolve(_without_latest(name))


async def _target(request: web.Request, body: dict) -> tuple[Project, Optional[str]]:
    """The project a request runs in and the model it names: an installed model (in the project named
    by `project_id` / `X-SLP-Project`, else the active one), else a project of that name (its model)."""
    proxy = request.app[keys.PROXY]
    name = body["model"]
    if name.startswith(_HF_HOSTS):
        model = await asyncio.to_thread(installed, request.app[keys.MODELS], name)
        found = model.name if model is not None else None
    else:  # the proxy's lookup, remembered until the models folder changes (as the OpenAI routes use it)
        found = _without_latest(name)
        try:
            proxy.model_file(found)
        except APIError:
            found = None
    if found is not None:
        project = await proxy.project_for(request, {"project_id": body.get("project_id")})
        return project, found
    try:
        return await proxy.project_for(request, {"project_id": name}), None
    except APIError as exc:
        if exc.status in (400, 404, 422):
            raise not_found(name) from None
        raise


_AGENT_FIELDS = ("project_id", "retrieval")  # slp's own fields beside Ollama's: known, never sent to the engine


def _validated(record: RequestRecord, model: type[BaseModel], body: dict) -> BaseModel:
    """The body as `model` (a 400 naming the field otherwise); undeclared fields are named in the record
    (the answer's `X-SLP-Unknown-Fields`)."""
    parsed = validate(model, body)
    unknown = [key for key in body if key not in model.model_fields and key not in _AGENT_FIELDS]
    options = body.get("options")
    if isinstance(options, dict):
        unknown += [f"options.{key}" for key in options if key not in _OPTIONS and key not in _PASSED_ON]
        unknown += [f"options.{key}" for key in options if key in _ENGINE_SIZED]
    record.unknown_fields = tuple(unknown)
    return parsed


# ----------------------------------------------------------------------------- requests to the engine

_OPTIONS = {  # Ollama option -> llama-server field
    "temperature": "temperature", "top_k": "top_k", "top_p": "top_p", "min_p": "min_p", "typical_p": "typical_p",
    "repeat_penalty": "repeat_penalty", "repeat_last_n": "repeat_last_n", "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty", "seed": "seed", "stop": "stop", "mirostat": "mirostat",
    "mirostat_tau": "mirostat_tau", "mirostat_eta": "mirostat_eta", "num_keep": "n_keep",
}
# Options that size the engine: the agent's settings decide them, never a request (named, not applied).
_ENGINE_SIZED = {"num_ctx", "num_batch", "num_gpu", "main_gpu", "num_thread", "use_mmap", "use_mlock", "numa",
                 "low_vram", "vocab_only", "f16_kv", "logits_all", "embedding_only"}
_PASSED_ON = {"num_predict"} | _ENGINE_SIZED


def engine_options(options: Optional[dict]) -> dict:
    """Ollama's `options` as llama-server's fields: known ones renamed, unknown ones passed on as they are
    (the engine ignores what it does not know), the engine-sizing ones left out."""
    fields: dict[str, Any] = {}
    for key, value in (options or {}).items():
        if value is None or key in _ENGINE_SIZED:
            continue
        if key == "num_predict":
            fields["max_tokens" if value >= 0 else "n_predict"] = value
        else:
            fields[_OPTIONS.get(key, key)] = value
    return fields


def _format_fields(fmt: Any, chat: bool) -> dict:
    """`format` as the engine's JSON constraint: `json` any JSON object, a dict that JSON schema."""
    if not fmt:
        return {}
    schema = {"type": "object"} if fmt == "json" else fmt
    if chat:
        if fmt == "json":
            return {"response_format": {"type": "json_object"}}
        return {"response_format": {"type": "json_schema", "json_schema": {"name": "format", "schema": schema}}}
    return {"json_schema": schema}


def _image_url(data: str) -> str:
    if data.startswith("data:"):
        return data
    kind = "image/png" if data.startswith("iVBOR") else "image/gif" if data.startswith("R0lGOD") else \
        "image/webp" if data.startswith("UklGR") else "image/jpeg"
    return f"data:{kind};base64,{data}"


def _content(text: str, images: Optional[list[str]]) -> Any:
    if not images:
        return text
    return [*([{"type": "text", "text": text}] if text else []),
            *({"type": "image_url", "image_url": {"url": _image_url(image)}} for image in images)]


def chat_messages(messages: list[dict]) -> list[dict]:
    """Ollama's messages as OpenAI's: images as content parts, tool call arguments as JSON text with an
    id, a tool's answer tied to the call it answers (by the tool's name)."""
    out: list[dict] = []
    calls_by_name: dict[str, str] = {}
    for n, message in enumerate(messages):
        role = message["role"]
        converted: dict[str, Any] = {"role": role, "content": _content(message.get("content") or "",
                                                                      message.get("images"))}
        if role == "assistant":
            if message.get("thinking"):
                converted["reasoning_content"] = message["thinking"]
            calls = []
            for i, call in enumerate(message.get("tool_calls") or ()):
                function = call["function"]
                call_id = call.get("id") or f"call_{n}_{i}"
                calls_by_name[function["name"]] = call_id
                calls.append({"id": call_id, "type": "function",
                              "function": {"name": function["name"],
                                           "arguments": json.dumps(function.get("arguments") or {})}})
            if calls:
                converted["tool_calls"] = calls
        elif role == "tool":
            name = message.get("tool_name") or ""
            converted["tool_call_id"] = calls_by_name.get(name, name or f"call_{n}")
            if name:
                converted["name"] = name
        out.append(converted)
    return out


def _thinking_fields(think: Any) -> dict:
    if think is None:
        return {}
    enabled = think is not False
    fields: dict[str, Any] = {"chat_template_kwargs": {"enable_thinking": enabled}}
    if isinstance(think, str):
        fields["reasoning_effort"] = think
    return fields


# ----------------------------------------------------------------------------- the engine's answers

class StreamFailed(Exception):
    """The engine's stream ended with an error event, or broke."""


async def engine_events(upstream: EngineResponse, engine: Any, record: RequestRecord) -> AsyncIterator[dict]:
    """The JSON events of the engine's SSE stream as they arrive (the supervisor sees the progress)."""
    supervisor = engine.supervisor
    buffer = b""
    first = True
    try:
        async for chunk in upstream.iter_chunks():
            supervisor.progress()
            if first:
                record.ttft = time.perf_counter() - record.started
                supervisor.served()
                first = False
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if not line.startswith(b"data: "):
                    continue
                data = line[6:].strip()
                if data == b"[DONE]":
                    return
                try:
                    event = json.loads(data)
                except ValueError:
                    continue
                if isinstance(event, dict) and event.get("error") is not None:
                    error = event["error"]
                    raise StreamFailed("engine: " + str(error.get("message") if isinstance(error, dict) else error))
                if isinstance(event, dict):
                    yield event
    except EngineStreamError as exc:
        raise StreamFailed(f"engine stream broke: {exc.__class__.__name__}") from None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


_DONE_REASONS = {"stop": "stop", "length": "length", "tool_calls": "stop", "eos": "stop", "word": "stop",
                 "limit": "length"}


class Reply:
    """One generation's translation: the engine's events in, Ollama's objects out. `kind` is "chat"
    (objects carry a `message`) or "generate" (a `response`); `native` reads llama-server's /completion
    events instead of OpenAI chunks."""

    def __init__(self, name: str, kind: str, native: bool, started: float):
        self.name, self.kind, self.native, self.started = name, kind, native, started
        self.loaded = started
        self.text: list[str] = []
        self.thinking: list[str] = []
        self.calls: dict[int, dict] = {}
        self.finish: Optional[str] = None
        self.usage: dict = {}
        self.timings: dict = {}
        self.ended = False

    def _object(self, content: str, thinking: Optional[str] = None, tool_calls: Optional[list] = None,
                done: bool = False) -> dict:
        obj: dict[str, Any] = {"model": self.name, "created_at": _now()}
        if self.kind == "chat":
            message: dict[str, Any] = {"role": "assistant", "content": content}
            if thinking:
                message["thinking"] = thinking
            if tool_calls:
                message["tool_calls"] = tool_calls
            obj["message"] = message
        else:
            obj["response"] = content
            if thinking:
                obj["thinking"] = thinking
        obj["done"] = done
        return obj

    def feed(self, event: dict) -> list[dict]:
        """The objects one engine event makes (none for an event with no text)."""
        if "timings" in event and isinstance(event["timings"], dict):
            self.timings = event["timings"]
        if self.native:
            return self._feed_native(event)
        if isinstance(event.get("usage"), dict):
            self.usage = event["usage"]
        out = []
        for choice in event.get("choices") or ():
            delta = choice.get("delta") or {}
            content, reasoning = delta.get("content") or "", delta.get("reasoning_content") or ""
            for call in delta.get("tool_calls") or ():
                slot = self.calls.setdefault(call.get("index", len(self.calls)), {"id": None, "name": "", "args": ""})
                slot["id"] = call.get("id") or slot["id"]
                function = call.get("function") or {}
                slot["name"] += function.get("name") or ""
                slot["args"] += function.get("arguments") or ""
            if content or reasoning:
                self.text.append(content)
                self.thinking.append(reasoning)
                out.append(self._object(content, reasoning or None))
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]
                if self.calls:
                    out.append(self._object("", tool_calls=self.tool_calls()))
        return out

    def _feed_native(self, event: dict) -> list[dict]:
        out = []
        content = event.get("content") or ""
        if content:
            self.text.append(content)
            out.append(self._object(content))
        if event.get("stop"):
            self.finish = event.get("stop_type") or "stop"
            self.usage = {"prompt_tokens": event.get("tokens_evaluated"),
                          "completion_tokens": event.get("tokens_predicted")}
            self.ended = True
        return out

    def tool_calls(self) -> list[dict]:
        calls = []
        for index in sorted(self.calls):
            slot = self.calls[index]
            try:
                arguments = json.loads(slot["args"]) if slot["args"] else {}
            except ValueError:
                arguments = {"_raw": slot["args"]}
            if not isinstance(arguments, dict):
                arguments = {"value": arguments}
            call: dict[str, Any] = {"function": {"name": slot["name"], "arguments": arguments, "index": index}}
            if slot["id"]:
                call["id"] = slot["id"]
            calls.append(call)
        return calls

    @property
    def complete(self) -> bool:
        return self.finish is not None

    def counters(self) -> dict:
        timings = self.timings
        prompt = self.usage.get("prompt_tokens")
        generated = self.usage.get("completion_tokens")
        return {
            "done_reason": _DONE_REASONS.get(self.finish or "stop", self.finish),
            "total_duration": int((time.perf_counter() - self.started) * 1e9),
            "load_duration": int((self.loaded - self.started) * 1e9),
            "prompt_eval_count": prompt if isinstance(prompt, int) else int(timings.get("prompt_n") or 0),
            "prompt_eval_duration": int(float(timings.get("prompt_ms") or 0) * 1e6),
            "eval_count": generated if isinstance(generated, int) else int(timings.get("predicted_n") or 0),
            "eval_duration": int(float(timings.get("predicted_ms") or 0) * 1e6),
        }

    def final(self) -> dict:
        """The last object of a stream: no text, `done`, the counters."""
        return {**self._object("", done=True), **self.counters()}

    def whole(self) -> dict:
        """The answer as one object (`"stream": false`)."""
        thinking = "".join(self.thinking) or None
        calls = self.tool_calls() if self.calls else None
        return {**self._object("".join(self.text), thinking, calls, done=True), **self.counters()}

    def usage_for_project(self) -> Optional[dict]:
        counters = self.counters()
        return {"prompt_tokens": counters["prompt_eval_count"], "completion_tokens": counters["eval_count"]}


def _as_event(answer: dict) -> dict:
    """A whole answer of the engine as the one event that says all of it (what `Reply.feed` reads)."""
    if "choices" not in answer:  # /completion, /infill: their last event has the same fields
        return {**answer, "stop": True}
    choices = [{"index": c.get("index", 0), "delta": c.get("message") or {}, "finish_reason": c.get("finish_reason")
                or "stop"} for c in answer["choices"][:1]]
    return {**answer, "choices": choices}


def _line(obj: dict) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


async def _run(request: web.Request, path: str, shaped: dict, project: Project, keep_alive: object,
               reply: Reply, stream: bool) -> web.StreamResponse:
    """Send a shaped request to the engine and answer with its translation: NDJSON objects as the engine
    streams, or one object. A failure after the first object ends the stream with an error object."""
    proxy, record = request.app[keys.PROXY], request[RECORD]
    if not stream:  # the engine's own whole answer (its stream can hold back an unfinished tail)
        shaped = {key: value for key, value in shaped.items() if key != "stream_options"}
        shaped["stream"] = False
    async with proxy.exchange(record, path, shaped, project, keep_alive) as (engine, upstream):
        reply.loaded = time.perf_counter()
        if not stream:
            try:
                data = await upstream.read()
            except EngineStreamError as exc:
                raise await engine.supervisor.unavailable(f"the engine failed before answering: {exc}")
            if upstream.status != 200:
                raise engine_refusal(upstream.status, data)
            engine.supervisor.served()
            reply.feed(_as_event(json.loads(data)))
            proxy.account(record, project, reply.usage_for_project())
            return web.json_response(reply.whole(), dumps=lambda o: json.dumps(o, ensure_ascii=False))
        if upstream.status != 200:
            raise engine_refusal(upstream.status, await upstream.read())
        response = web.StreamResponse(headers={"Content-Type": NDJSON, "Cache-Control": "no-cache",
                                               "X-Accel-Buffering": "no"})
        await response.prepare(request)
        failure: Optional[str] = None
        try:
            async for event in engine_events(upstream, engine, record):
                for obj in reply.feed(event):
                    await response.write(_line(obj))
                if reply.ended:
                    break
            if not reply.complete:
                failure = "the engine's stream ended early"
            else:
                await response.write(_line(reply.final()))
        except StreamFailed as exc:
            failure = str(exc)
        except (ConnectionResetError, aiohttp.ClientConnectionResetError, RuntimeError):
            upstream.close()  # llama-server stops generating for a client that left
            record.disconnected = True
            return response
        if failure is not None:
            record.engine_failed = failure
            try:
                await response.write(_line({"error": failure}))
            except (ConnectionResetError, RuntimeError):
                pass
        else:
            proxy.account(record, project, reply.usage_for_project())
        try:
            await response.write_eof()
        except (ConnectionResetError, RuntimeError):
            pass
        return response


async def _load_only(request: web.Request, project: Project, model: Optional[str], keep_alive: object,
                     reply: Reply) -> web.Response:
    """An empty prompt: load the model (`done_reason: load`), or unload it with `keep_alive: 0`."""
    app, proxy = request.app, request.app[keys.PROXY]
    path, name = proxy.model_file(model or project.model)
    pool = app[keys.ENGINES]
    try:
        if keep_alive == 0:
            await pool.unload(path)
            reason = "unload"
        else:
            await pool.load(name, path, keep_alive=keep_alive)
            reason = "load"
    except ModelTooLarge as exc:
        raise OllamaError(400, str(exc), code="model_too_large") from None
    obj = reply._object("", done=True)
    obj["done_reason"] = reason
    return web.json_response(obj)


def _keep_alive(body: dict) -> object:
    value = body.get("keep_alive")
    return UNSET if value is None else keep_alive_seconds(value)


def _start(request: web.Request) -> RequestRecord:
    record = request[RECORD]
    record.proxied = True  # logged from here on, a refusal too
    return record


# ----------------------------------------------------------------------------- chat and generate

@ollama_route
async def chat(request: web.Request) -> web.StreamResponse:
    """POST /api/chat"""
    record = _start(request)
    started = record.started
    body = await read_json_object(request)
    _validated(record, OllamaChatRequest, body)
    project, model = await _target(request, body)
    keep_alive = _keep_alive(body)
    reply = Reply(body["model"], "chat", native=False, started=started)
    if not body.get("messages"):
        return await _load_only(request, project, model, keep_alive, reply)
    if body.get("think") and not await _template_thinks(request, project, model):
        raise OllamaError(400, f"\"{body['model']}\" does not support thinking", code="not_supported")
    await _check_images(request, project, model, any(m.get("images") for m in body["messages"]))
    oa: dict[str, Any] = {"messages": chat_messages(body["messages"]), "stream": True,
                          **engine_options(body.get("options")), **_format_fields(body.get("format"), chat=True),
                          **_thinking_fields(body.get("think"))}
    if model:
        oa["model"] = model
    if body.get("tools"):
        oa["tools"] = body["tools"]
    shaped = await proxy_of(request).with_documents(record, project, body, shape_chat(oa, project))
    return await _run(request, "/v1/chat/completions", shaped, project, keep_alive, reply,
                      stream=body.get("stream") is not False)


@ollama_route
async def generate(request: web.Request) -> web.StreamResponse:
    """POST /api/generate"""
    record = _start(request)
    body = await read_json_object(request)
    _validated(record, OllamaGenerateRequest, body)
    project, model = await _target(request, body)
    keep_alive = _keep_alive(body)
    prompt = body.get("prompt") or ""
    native = bool(body.get("raw") or body.get("suffix"))
    reply = Reply(body["model"], "generate", native=native, started=record.started)
    if not prompt and not body.get("suffix"):
        return await _load_only(request, project, model, keep_alive, reply)
    await _check_images(request, project, model, bool(body.get("images")))
    fields = {**engine_options(body.get("options")), **_format_fields(body.get("format"), chat=not native),
              "stream": True}
    if model:
        fields["model"] = model
    if native:
        if body.get("images"):
            raise OllamaError(400, "images need the chat template: send them without `raw` and `suffix`")
        if body.get("suffix"):
            path, payload = "/infill", {"input_prefix": prompt, "input_suffix": body["suffix"], "prompt": "", **fields}
        else:
            path, payload = "/completion", {"prompt": prompt, **fields}
        shaped = shape_completion(payload, project)
    else:
        messages: list[dict] = []
        if body.get("system"):
            messages.append({"role": "system", "content": body["system"]})
        messages.append({"role": "user", "content": _content(prompt, body.get("images"))})
        if body.get("think") and not await _template_thinks(request, project, model):
            raise OllamaError(400, f"\"{body['model']}\" does not support thinking", code="not_supported")
        path, payload = "/v1/chat/completions", {"messages": messages, **fields, **_thinking_fields(body.get("think"))}
        shaped = await proxy_of(request).with_documents(record, project, body, shape_chat(payload, project))
    return await _run(request, path, shaped, project, keep_alive, reply, stream=body.get("stream") is not False)


def proxy_of(request: web.Request) -> Any:
    return request.app[keys.PROXY]


def _model_of(request: web.Request, project: Project, model: Optional[str]) -> Optional[InstalledModel]:
    return request.app[keys.MODELS].resolve(model or project.model)


async def _check_images(request: web.Request, project: Project, model: Optional[str], has_images: bool) -> None:
    if not has_images:
        return
    found = _model_of(request, project, model)
    if found is not None and found.mmproj is None:
        raise OllamaError(400, f"the model '{found.name}' does not take images (it has no vision projector)",
                          code="not_supported")


async def _template_thinks(request: web.Request, project: Project, model: Optional[str]) -> bool:
    found = _model_of(request, project, model)
    if found is None:
        return False
    info = await asyncio.to_thread(gguf_facts, found.path, False)
    return "thinking" in info["capabilities"]


# ----------------------------------------------------------------------------- embeddings

async def _embeddings(request: web.Request, body: dict, texts: Any) -> tuple[list[list[float]], dict, float, float]:
    project, model = await _target(request, body)
    record, proxy = request[RECORD], request.app[keys.PROXY]
    payload: dict[str, Any] = {"input": texts, **({"model": model} if model else {})}
    if body.get("dimensions"):
        payload["dimensions"] = body["dimensions"]
    shaped = shape_plain(payload, project)
    async with proxy.exchange(record, "/v1/embeddings", shaped, project, _keep_alive(body)) as (engine, upstream):
        loaded = time.perf_counter()
        data = await upstream.read()
    if upstream.status != 200:
        raise engine_refusal(upstream.status, data)
    reply = json.loads(data)
    vectors = [item["embedding"] for item in sorted(reply.get("data") or (), key=lambda item: item.get("index", 0))]
    usage = reply.get("usage") or {}
    proxy.account(record, project, {"prompt_tokens": usage.get("prompt_tokens", 0), "completion_tokens": 0})
    return vectors, usage, record.started, loaded


@ollama_route
async def embed(request: web.Request) -> web.Response:
    """POST /api/embed"""
    record = _start(request)
    body = await read_json_object(request)
    _validated(record, OllamaEmbedRequest, body)
    vectors, usage, started, loaded = await _embeddings(request, body, body["input"])
    dims = body.get("dimensions")
    if dims:
        vectors = [_normalized(vector[:dims]) for vector in vectors]
    answer = OllamaEmbedResponse(model=body["model"], embeddings=vectors,
                                 total_duration=int((time.perf_counter() - started) * 1e9),
                                 load_duration=int((loaded - started) * 1e9),
                                 prompt_eval_count=int(usage.get("prompt_tokens") or 0))
    return answer


def _normalized(vector: list[float]) -> list[float]:
    norm = sum(x * x for x in vector) ** 0.5
    return [x / norm for x in vector] if norm else vector


@ollama_route
async def embeddings(request: web.Request) -> OllamaEmbeddingResponse:
    """POST /api/embeddings (the older call)"""
    record = _start(request)
    body = await read_json_object(request)
    _validated(record, OllamaEmbeddingsRequest, body)
    vectors, _, _, _ = await _embeddings(request, body, body["prompt"])
    return OllamaEmbeddingResponse(embedding=vectors[0] if vectors else [])


# ----------------------------------------------------------------------------- models

def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _digest(model: InstalledModel) -> str:
    """The file's sha256 when known; else a stable stand-in from its path, size and time (reading a large
    user file to hash it would take the agent minutes)."""
    if model.sha256:
        return model.sha256
    try:
        stat = model.path.stat()
        stamp = f"{model.path}:{stat.st_size}:{stat.st_mtime_ns}"
    except OSError:
        stamp = str(model.path)
    return hashlib.sha256(stamp.encode()).hexdigest()


def _human_count(n: int) -> str:
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            value = n / size
            return f"{value:.1f}{unit}" if value < 10 else f"{value:.0f}{unit}"
    return str(n)


def _details(model: InstalledModel) -> OllamaDetails:
    try:
        meta = model.metadata
    except ModelError:
        return OllamaDetails(family="unknown", families=["unknown"], parameter_size="unknown",
                             quantization_level="unknown")
    size = meta.size_label or (_human_count(meta.parameters) if meta.parameters else "unknown")
    return OllamaDetails(family=meta.architecture, families=[meta.architecture], parameter_size=size,
                         quantization_level=meta.quantization)


def _modified(model: InstalledModel) -> str:
    try:
        return _iso(model.path.stat().st_mtime)
    except OSError:
        return _iso(0)


def _tag(model: InstalledModel) -> OllamaTag:
    return OllamaTag(name=model.name, model=model.name, modified_at=_modified(model), size=model.size_bytes,
                     digest=_digest(model), details=_details(model))


@ollama_route
async def tags(request: web.Request) -> OllamaTags:
    """GET /api/tags"""
    store = request.app[keys.MODELS]
    models = await asyncio.to_thread(lambda: [_tag(model) for model in store.list()])
    return OllamaTags(models=models)


_LONG = 64  # GGUF arrays longer than this (the vocabulary, merges) are null in model_info unless `verbose`


@functools.lru_cache(maxsize=16)
def _gguf_facts(path: str, mtime_ns: int, verbose: bool) -> dict:
    from slp.models.gguf_header import Skipped, read_header

    # The header's key/values by struct (milliseconds; gguf's reader took seconds over the vocabulary);
    # the tokenizer's long arrays are decoded only when asked for.
    fields = read_header(path, decode=lambda key: verbose or not key.startswith("tokenizer.ggml."),
                         tensors=False).fields
    info: dict[str, Any] = {}
    for name, value in fields.items():
        if isinstance(value, Skipped) or (isinstance(value, (list, tuple)) and len(value) > _LONG and not verbose):
            value = None
        info[name] = list(value) if isinstance(value, tuple) else value
    template = info.pop("tokenizer.chat_template", None) or ""
    capabilities = ["completion"]
    if "tools" in template:
        capabilities.append("tools")
    if "enable_thinking" in template or "<think>" in template:
        capabilities.append("thinking")
    if "tokenizer.ggml.fim_pre_token_id" in info:
        capabilities.append("insert")
    return {"model_info": info, "template": template, "capabilities": capabilities}


def gguf_facts(path: Path, verbose: bool) -> dict:
    """The GGUF's key-value facts (Ollama's `model_info`), its chat template and what that allows
    (`capabilities`); cached per file version."""
    return _gguf_facts(str(path), path.stat().st_mtime_ns, verbose)


def _parameters(params: dict) -> str:
    lines = []
    for key, value in params.items():
        for item in value if isinstance(value, list) else [value]:
            lines.append(f"{key:<15} {json.dumps(item) if isinstance(item, str) else item}")
    return "\n".join(lines)


def _names_of(body: dict) -> str:
    name = body.get("model") or body.get("name")
    if not name:
        raise OllamaError(400, "model is required", code="invalid_request")
    return name


@ollama_route
async def show(request: web.Request) -> OllamaShow:
    """POST /api/show"""
    record = _start(request)
    body = await read_json_object(request)
    _validated(record, OllamaModelRequest, body)
    name = _names_of(body)
    store = request.app[keys.MODELS]
    model = installed(store, name)
    project = None
    if model is None:
        project, _ = await _target(request, {"model": name})
        model = store.resolve(project.model)
        if model is None:
            raise not_found(name)
    try:
        facts = await asyncio.to_thread(gguf_facts, model.path, bool(body.get("verbose")))
    except (OSError, ValueError) as exc:
        raise OllamaError(500, f"cannot read {model.path}: {exc}", code="model_error") from None
    meta_license = facts["model_info"].get("general.license") or ""
    capabilities = list(facts["capabilities"])
    if model.mmproj is not None:
        capabilities.append("vision")
    params = project.params.values() if project is not None else {}
    params.pop("keep_alive", None)
    modelfile = f"# Modelfile for {name}, as slp serves it\nFROM {model.path}\n"
    if project is not None and project.system_prompt:
        modelfile += f'SYSTEM """{project.system_prompt}"""\n'
    return OllamaShow(modelfile=modelfile, parameters=_parameters(params), template=facts["template"],
                      license=str(meta_license), details=_details(model), model_info=facts["model_info"],
                      capabilities=capabilities, modified_at=_modified(model),
                      system=project.system_prompt if project is not None and project.system_prompt else None)


@ollama_route
async def ps(request: web.Request) -> OllamaPs:
    """GET /api/ps"""
    from slp.server.routes import engines_payload

    app = request.app
    store, settings = app[keys.MODELS], app[keys.SETTINGS]
    rows = await asyncio.to_thread(engines_payload, app)
    now = datetime.now(timezone.utc)
    running = []
    for row in rows:
        model = store.for_path(row.path)
        if model is None:
            continue
        if row.pinned or row.keep_alive_s is None:
            expires = FOREVER
        else:
            left = row.expires_in_s if row.expires_in_s is not None else row.keep_alive_s
            try:
                expires = (now + timedelta(seconds=left)).isoformat().replace("+00:00", "Z")
            except OverflowError:  # a keep_alive past the calendar's end: kept for good
                expires = FOREVER
        running.append(OllamaRunning(name=model.name, model=model.name,
                                     size=row.measured_bytes or row.estimate_bytes, digest=_digest(model),
                                     details=_details(model), expires_at=expires, size_vram=row.gpu_bytes or 0,
                                     context_length=settings.ctx_size))
    return OllamaPs(models=running)


@ollama_route
async def version(request: web.Request) -> OllamaVersion:
    """GET /api/version"""
    return OllamaVersion(version=OLLAMA_VERSION)


async def root(request: web.Request) -> web.Response:
    """GET / (and HEAD /): what Ollama answers, which clients probe to find a server."""
    return web.Response(text="Ollama is running", content_type="text/plain")


# ----------------------------------------------------------------------------- pull, delete, copy

def pull_source(name: str) -> str:
    """What `slp model pull` would be given for an Ollama pull name."""
    return hub_spelling(name) or _without_latest(name)


class _Throttle:
    """Progress from the pulling thread to the event loop: at most ~10 updates a second per file, and
    always the last one."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue):
        self.loop, self.queue, self.last = loop, queue, {}

    def __call__(self, label: str, done: int, total: Optional[int]) -> None:
        now = time.monotonic()
        if done != total and now - self.last.get(label, 0.0) < 0.1:
            return
        self.last[label] = now
        self.loop.call_soon_threadsafe(self.queue.put_nowait, (label, done, total))


@ollama_route
async def pull(request: web.Request) -> web.StreamResponse:
    """POST /api/pull"""
    record = _start(request)
    body = await read_json_object(request)
    _validated(record, OllamaPullRequest, body)
    name = _names_of(body)
    source = pull_source(name)
    app = request.app
    store = app[keys.MODELS]
    if hub.is_hub_ref(source):
        plan = await asyncio.to_thread(hub.plan, source, memory_budget_bytes(app[keys.SETTINGS]))
        work: Callable[[Any], object] = lambda progress: hub.pull(store, plan, progress=progress)
    else:
        if not valid_name(source) and not Path(source).expanduser().is_file():
            raise OllamaError(400, f"cannot pull {name!r}: give a catalog model, hf.co/OWNER/REPO[:QUANT] "
                                   "or a path to a .gguf file", code="invalid_request")
        work = lambda progress: store.pull(source, progress=progress)
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    task = asyncio.ensure_future(asyncio.to_thread(work, _Throttle(loop, queue)))
    if body.get("stream") is False:
        await task  # ModelError: a 400 in Ollama's shape
        return web.json_response({"status": "success"})
    response = web.StreamResponse(headers={"Content-Type": NDJSON, "Cache-Control": "no-cache"})
    await response.prepare(request)
    try:
        await response.write(_line({"status": "pulling manifest"}))
        while True:
            getter = asyncio.ensure_future(queue.get())
            await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():
                getter.cancel()
                while not queue.empty():
                    await _write_progress(response, *queue.get_nowait())
                break
            await _write_progress(response, *getter.result())
        error = task.exception()
        if error is not None:
            message = str(error) if isinstance(error, ModelError) else "the pull failed; see the agent log"
            if not isinstance(error, ModelError):
                log.error("pull of %s failed", name, exc_info=error)
            await response.write(_line({"error": message}))
        else:
            for status in ("verifying sha256 digest", "writing manifest", "success"):
                await response.write(_line({"status": status}))
        await response.write_eof()
    except (ConnectionResetError, aiohttp.ClientConnectionResetError, RuntimeError):
        record.disconnected = True  # the pull goes on in its thread; the same pull later finds it done
    return response


async def _write_progress(response: web.StreamResponse, label: str, done: int, total: Optional[int]) -> None:
    obj: dict[str, Any] = {"status": f"pulling {label}", "digest": label, "completed": done}
    if total is not None:
        obj["total"] = total
    await response.write(_line(obj))


@ollama_route
async def delete(request: web.Request) -> web.Response:
    """DELETE /api/delete"""
    record = _start(request)
    body = await read_json_object(request)
    _validated(record, OllamaModelRequest, body)
    name = _names_of(body)
    app = request.app
    model = installed(app[keys.MODELS], name)
    if model is None:
        raise not_found(name)
    shared = [m for m in app[keys.MODELS].list() if m.path == model.path and m.name != model.name]
    if not shared:  # the file goes (or is forgotten): its engine first, once its requests have finished
        await app[keys.ENGINES].unload(model.path)
    await asyncio.to_thread(app[keys.MODELS].remove, model.name)
    return web.Response(status=200)


@ollama_route
async def copy(request: web.Request) -> web.Response:
    """POST /api/copy"""
    record = _start(request)
    body = await read_json_object(request)
    _validated(record, OllamaCopyRequest, body)
    store: ModelStore = request.app[keys.MODELS]
    source = installed(store, body["source"])
    if source is None:
        raise not_found(body["source"])
    destination = _without_latest(body["destination"])
    if not valid_name(destination):
        raise OllamaError(400, f"invalid model name {destination!r}: use letters, digits, '.', '_' and '-'",
                          code="invalid_request")
    if store.resolve(destination, include_missing=True) is not None:
        raise OllamaError(400, f"a model named {destination!r} exists; delete it first", code="invalid_request")
    files = [ModelFile(path=f.path, role=f.role, sha256=f.sha256, size=f.size, owned=False)
             for f in source.files] or [ModelFile(path=source.path, size=source.size_bytes)]
    await asyncio.to_thread(store.record, destination, files, f"copy of {source.name}")
    return web.Response(status=200)


@ollama_route
async def unsupported(request: web.Request) -> web.Response:
    """POST /api/create and /api/push: slp keeps GGUF files, not Ollama's images."""
    what = "create models from a Modelfile" if request.path.endswith("create") else "push models to a registry"
    raise OllamaError(400, f"slp does not {what}: add a GGUF with `slp model pull` (a file, a catalog model or "
                           "hf.co/OWNER/REPO) or POST /api/pull, and use a project for a system prompt and "
                           "defaults", code="not_supported")
