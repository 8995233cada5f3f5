"""The OpenAI proxy: validate, apply the project, make sure the right engine is ready, forward.

The hot path parses only what it must change (the request body) and passes response bytes through
untouched: a stream is written to the client chunk by chunk as the engine sends it, never buffered
or re-encoded. Usage (and, for requests with a `session_id`, the reply text) is read from the bytes
after they were sent, and stored by a background writer, off the request path.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Callable, Optional

import aiohttp
from aiohttp import web

from slp.engine.pool import UNSET, Engine, EnginePool, ModelTooLarge
from slp.engine.supervisor import EngineState, EngineUnavailable
from slp.models.store import ModelStore, engine_name
from slp.projects.schema import Project
from slp.projects.shaping import added_usage, shape_chat, shape_plain
from slp.projects.store import ProjectError
from slp.server.engine_client import EngineConnectionError, EngineResponse, EngineStreamError
from slp.server.errors import APIError, keep_alive_seconds, model_not_found, model_too_large, project_error
from slp.server.jsonbody import read_json_object, validate
from slp.server.record import RECORD, EngineRef, RequestRecord
from slp.server.schemas import ChatCompletionRequest, validation_context
from slp.server.services import Admission, ProjectCache, Session, UsageRecorder
from slp.settings import Settings
from slp.worker.pool import WorkerPool

log = logging.getLogger("slp.proxy")

_DONE = b"data: [DONE]"
_TAIL_BYTES = 16384  # tail of a stream kept for its usage event and end marker (see _stream)


def _last_event(stream: bytearray) -> bytes:
    """The last SSE event of a stream (events end with a blank line)."""
    body = bytes(stream).rstrip(b"\n")
    start = body.rfind(b"\n\n")
    return body[start + 2:] if start >= 0 else body


UNKNOWN_FIELDS_HEADER = "X-SLP-Unknown-Fields"  # request fields slp does not know, passed to the engine as they are


def unknown_fields_value(unknown: tuple[str, ...]) -> str:
    """The header's value: field names as JSON strings when they hold anything but printable ASCII, so a
    name with a control character or a newline can never break (or inject into) the response headers."""
    return ", ".join(name if name.isascii() and name.isprintable() and "," not in name and '"' not in name
                     else json.dumps(name) for name in unknown)[:2048]


async def name_unknown_fields(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: every answer to a request with unknown fields names them, whether it is the
    engine's reply, a stream or a refusal (the record has them once the body was validated)."""
    record = request.get(RECORD)
    if record is not None and record.unknown_fields:
        response.headers[UNKNOWN_FIELDS_HEADER] = unknown_fields_value(record.unknown_fields)


class HiddenUsage:
    """Keeps from a streaming client the usage event it did not ask for.

    slp asks the engine for a stream's usage (`stream_options.include_usage`) to account for it; a
    client that did not ask must see the stream the engine would have sent it: no extra event with an
    empty `choices` list (a reader taking `choices[0]` of each event would crash on it). Only the end of
    a stream is touched, found by searching bytes, never by parsing each event: an event that finishes
    a choice is held back until the next bytes show whether the usage event follows; that event is
    dropped, and the `timings` llama-server put on it go back on the finish event, where the engine puts
    them when it sends no usage event. An incomplete event is held until it is whole (llama-server sends
    whole events, so in practice nothing waits).
    """

    FINISH = b'"finish_reason":"'  # a choice's last event ("finish_reason":null in the others)
    USAGE_ONLY = b'"choices":[]'  # (the marker bytes cannot occur inside a JSON string: quotes are escaped)

    def __init__(self) -> None:
        self.held = b""

    def feed(self, chunk: bytes) -> bytes:
        """The bytes of `chunk` (after those held back before) that may go to the client now."""
        data = self.held + chunk if self.held else chunk
        self.held = b""
        if data.endswith(b"\n\n") and self.FINISH not in data and self.USAGE_ONLY not in data:
            return data
        events = data.split(b"\n\n")
        tail = events.pop()  # an incomplete event, or b"" after a whole one
        kept: list[bytes] = []
        for event in events:
            if self.USAGE_ONLY in event and b'"usage":' in event:
                if kept and self.FINISH in kept[-1]:
                    kept[-1] = self._with_timings(kept[-1], event)
                continue
            kept.append(event)
        if kept and self.FINISH in kept[-1]:
            tail = kept.pop() + b"\n\n" + tail
        self.held = tail
        return b"".join(event + b"\n\n" for event in kept)

    def flush(self) -> bytes:
        """What is still held (the stream ended)."""
        data, self.held = self.held, b""
        return data

    @staticmethod
    def _with_timings(finish: bytes, usage: bytes) -> bytes:
        if b'"timings":' in finish or not finish.endswith(b"}"):
            return finish
        try:
            timings = json.loads(usage[usage.index(b"{"):]).get("timings")
        except (ValueError, AttributeError):
            return finish
        if timings is None:
            return finish
        return finish[:-1] + b',"timings":' + json.dumps(timings, separators=(",", ":")).encode() + b"}"


def engine_refusal(status: int, data: bytes) -> APIError:
    """The engine's refusal in OpenAI's envelope (llama-server sends {"error": {"code": 400, ...}})."""
    try:
        error = json.loads(data).get("error") or {}
    except (ValueError, AttributeError):
        error = {}
    if not isinstance(error, dict):
        error = {"message": str(error)}
    message = error.get("message") or data.decode("utf-8", "replace")[:500] or f"engine answered HTTP {status}"
    code = error.get("type") if isinstance(error.get("code"), int) else error.get("code")
    type_ = error.get("type")
    if status == 501:  # a feature this engine/model does not serve (embeddings off, not a reranker)
        status, code, type_ = 400, "not_supported", "invalid_request_error"
    elif status == 500 and any(hint in message for hint in _CLIENT_FAULTS):
        status, code, type_ = 400, "invalid_request", "invalid_request_error"  # the request, not the engine
    param = error.get("param") if isinstance(error.get("param"), str) else None
    return APIError(status, f"engine: {message}", code=code, param=param, type_=type_)


# llama-server answers some malformed requests with a 500; these messages mean the input was at fault.
_CLIENT_FAULTS = ("Failed to parse", "[json.exception.", "_M_range_check", "out of range", "invalid token")


class Proxy:
    """Request handlers for the proxied routes; one instance per app, given the services it uses."""

    def __init__(self, *, settings: Callable[[], Settings], models: ModelStore, projects: ProjectCache,
                 engines: EnginePool, admission: Admission, recorder: UsageRecorder, workers: WorkerPool,
                 engine_auth: str):
        self._settings = settings  # read per request: a config reload replaces the settings
        self._models = models
        self._projects = projects
        self._engines = engines
        self._admission = admission
        self._recorder = recorder
        self._workers = workers
        self._engine_auth = engine_auth  # "Bearer <key>": the engines' private API key
        self._resolved: dict[str, tuple[int, Path, str]] = {}  # model name -> (store mtime, file, engine name)

    # ------------------------------------------------------------------ handlers

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        record = request[RECORD]
        record.proxied = True  # logged from here on, a refusal too
        body = await read_json_object(request)
        keep_alive = _pop_keep_alive(body)
        self._validate(record, ChatCompletionRequest, body)
        project = await self._project_for(request, body)
        session = (body["session_id"], body["messages"]) if body.get("session_id") else None
        shaped = shape_chat(body, project)
        record.hide_usage = added_usage(body, shaped)
        return await self._forward(request, record, "/v1/chat/completions", shaped, project, session,
                                   keep_alive=keep_alive)

    def route(self, path: str, schema: type, shape: Callable[[dict, Project], dict] = shape_plain,
              end_marker: bytes = _DONE, account: bool = True) -> Callable:
        """A handler for one of the engine's routes: read and validate the body, apply the project with
        `shape`, forward. `end_marker` is how the route's streams end; `account`: count its usage."""

        async def handler(request: web.Request) -> web.StreamResponse:
            record = request[RECORD]
            record.proxied = True  # logged from here on, a refusal too
            body = await read_json_object(request)
            keep_alive = _pop_keep_alive(body)
            self._validate(record, schema, body)
            project = await self._project_for(request, body)
            shaped = shape(body, project)
            record.hide_usage = added_usage(body, shaped)
            return await self._forward(request, record, path, shaped, project, None,
                                       end_marker=end_marker, account=account, keep_alive=keep_alive)

        handler.__doc__ = schema.__doc__
        return handler

    # ------------------------------------------------------------------ steps

    def _validate(self, record: RequestRecord, schema: type, body: dict) -> None:
        """Validate the body (refusing unknown fields under SLP_STRICT). The unknown field names, passed
        on to the engine, go in the record: the reply's headers name them."""
        context = validation_context(self._settings().strict)
        validate(schema, body, context=context)
        record.unknown_fields = context["unknown"]

    async def _project_for(self, request: web.Request, body: dict) -> Project:
        """The project a request runs in: body `project_id`, else `X-SLP-Project`, else the active one."""
        ref = body.get("project_id") or request.headers.get("X-SLP-Project")
        try:
            return await self._projects.get(str(ref) if ref else None)
        except ProjectError as exc:
            raise project_error(exc, param="project_id") from None

    def _model_path(self, model_name: str) -> tuple[Path, str]:
        """The file behind a model name and its engine's name; remembered until the models folder changes
        (one stat instead of a resolve per request). Unknown names are an OpenAI-style 404."""
        store = self._models
        try:
            stamp = store.root.stat().st_mtime_ns
        except OSError:
            stamp = -1
        known = self._resolved.get(model_name)
        if known is not None and known[0] == stamp:
            return known[1], known[2]
        model = store.resolve(model_name)
        if model is None:
            raise model_not_found(model_name)
        if len(self._resolved) > 256:
            self._resolved.clear()
        name = engine_name(store, model.path)  # as the runner and the load route name it: one engine per file
        self._resolved[model_name] = (stamp, model.path, name)
        return model.path, name

    async def _forward(self, request: web.Request, record: RequestRecord, path: str, body: dict,
                       project: Project, session: Optional[Session], end_marker: bytes = _DONE,
                       account: bool = True, keep_alive: object = UNSET) -> web.StreamResponse:
        """Admit the request, lease its model's engine (loading it if needed) and send it there."""
        record.project, record.model = project.name, body.get("model") or project.model
        if not self._admission.try_admit():
            raise APIError(429, "too many requests waiting for the engine; retry shortly",
                           code="rate_limit_exceeded", headers={"Retry-After": "1"})
        try:
            model_path, name = self._model_path(record.model)
            if keep_alive is UNSET and project.params.keep_alive is not None:
                keep_alive = keep_alive_seconds(project.params.keep_alive)  # valid: the project schema checked it
            try:
                async with self._engines.lease(name, model_path, keep_alive=keep_alive) as engine:
                    return await self._send(request, record, engine, path, body, project, session, end_marker,
                                            account)
            except ModelTooLarge as exc:
                raise model_too_large(exc) from None
            except EngineUnavailable as exc:
                raise APIError.engine_unavailable(exc) from None
        finally:
            self._admission.leave()

    async def _send(self, request: web.Request, record: RequestRecord, engine: Engine, path: str, body: dict,
                    project: Project, session: Optional[Session], end_marker: bytes,
                    account: bool) -> web.StreamResponse:
        """Forward to a leased, ready engine; its supervisor sees the work and every byte (progress)."""
        supervisor = engine.supervisor
        port = supervisor.port
        if supervisor.state is not EngineState.READY or port is None:  # it failed since the lease saw it ready
            raise await supervisor.unavailable("the engine stopped serving before the request was sent")
        record.engine = EngineRef(engine.name, supervisor.pid)
        payload = json.dumps(body).encode()
        headers = {"Content-Type": "application/json", "Authorization": self._engine_auth}
        supervisor.work_begin()
        try:
            try:
                upstream = await engine.extra["http"].post("127.0.0.1", port, path, payload, headers)
            except EngineConnectionError as exc:
                raise await supervisor.unavailable(str(exc))
            supervisor.progress()
            async with upstream:
                if body.get("stream") and upstream.status == 200:
                    return await self._stream(request, record, engine, upstream, project, session, end_marker)
                try:
                    data = await upstream.read()
                except EngineStreamError as exc:
                    raise await supervisor.unavailable(f"the engine failed before answering: {exc}")
                if upstream.status != 200:
                    raise engine_refusal(upstream.status, data)
                supervisor.served()  # a whole answer: the engine is past its first decode
                if account:
                    record.account_after(lambda: self._account_json(data, project, session))
                return web.Response(body=data, status=200, content_type=upstream.content_type or "application/json")
        finally:
            supervisor.work_end()

    async def _stream(self, request: web.Request, record: RequestRecord, engine: Engine, upstream: EngineResponse,
                      project: Project, session: Optional[Session], end_marker: bytes) -> web.StreamResponse:
        """Pass SSE bytes through as they arrive. Client gone: close upstream so the engine stops.
        Engine gone: end the stream with an error event, never a silently truncated success."""
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                               "X-Accel-Buffering": "no"})
        await response.prepare(request)
        keep_all = session is not None
        seen = bytearray()
        failure: Optional[str] = None
        hidden = HiddenUsage() if record.hide_usage else None
        progress = engine.supervisor.progress
        try:
            async for chunk in upstream.iter_chunks():
                progress()
                if not seen:
                    record.ttft = time.perf_counter() - record.started
                    engine.supervisor.served()  # a first event: the engine is past its first decode
                try:
                    if hidden is None:
                        await response.write(chunk)
                    else:
                        out = hidden.feed(chunk)
                        if out:
                            await response.write(out)
                except (ConnectionResetError, aiohttp.ClientConnectionResetError, RuntimeError):
                    upstream.close()  # drops the engine connection: llama-server cancels the generation
                    record.disconnected = True
                    return response
                seen += chunk
                if not keep_all and len(seen) > 2 * _TAIL_BYTES:
                    # Keep the last _TAIL_BYTES from an event's start on: the final event (usage, the end
                    # marker) stays whole however long it is (Responses' carries the full output).
                    cut = seen.rfind(b"\n\n", 0, len(seen) - _TAIL_BYTES)
                    if cut >= 0:
                        del seen[:cut + 2]
        except EngineStreamError as exc:
            failure = f"engine stream broke: {exc.__class__.__name__}"
        if hidden is not None and hidden.held:
            try:
                await response.write(hidden.flush())
            except (ConnectionResetError, aiohttp.ClientConnectionResetError, RuntimeError):
                record.disconnected = True
                return response
        if failure is None and end_marker not in _last_event(seen):
            failure = f"engine stream ended before {end_marker.decode()}"
        if failure is not None:
            await self._fail_stream(response, record, engine, failure)
        else:
            record.account_after(lambda: self._account_stream(bytes(seen), project, session))
        try:
            await response.write_eof()
        except (ConnectionResetError, RuntimeError):
            pass
        return response

    async def _fail_stream(self, response: web.StreamResponse, record: RequestRecord, engine: Engine,
                           failure: str) -> None:
        """End a started stream whose engine failed: the error event says why the engine went (crash,
        stall) and, for an engine with RPC workers, which worker it lost."""
        supervisor = engine.supervisor
        unavailable = await supervisor.unavailable(failure)  # waits until the supervisor knows why
        since = time.time() - (time.perf_counter() - record.started)
        lost = await self._workers.loss_note(since, supervisor)
        message = str(unavailable) + (f"; {lost}" if lost else "")
        await APIError(500, message, code="engine_failed", type_="server_error").send_as_event(response)
        log.warning("stream for project %s ended early: %s", record.project, failure)
        record.engine_failed = failure

    # ------------------------------------------------------------------ accounting (after the bytes left)

    def _account_json(self, data: bytes, project: Project, session: Optional[Session]) -> Optional[dict]:
        """Queue the usage (and the exchange, for a session) for storage; returns the usage."""
        try:
            reply = json.loads(data)
        except ValueError:
            return None
        if not isinstance(reply, dict):
            return None
        assistant = None
        if session and reply.get("choices"):
            assistant = reply["choices"][0].get("message")
        usage = merge_usage(None, reply)
        self._recorder.record(project.id, usage, session, assistant)
        return usage

    def _account_stream(self, data: bytes, project: Project, session: Optional[Session]) -> Optional[dict]:
        usage, parts = None, []
        for line in data.split(b"\n"):
            if not line.startswith(b"data: {"):
                continue
            try:
                event = json.loads(line[6:])
            except ValueError:
                continue
            usage = merge_usage(usage, event)
            if session:
                for choice in event.get("choices") or ():
                    delta = choice.get("delta") or {}
                    if delta.get("content"):
                        parts.append(delta["content"])
        assistant = {"role": "assistant", "content": "".join(parts)} if session else None
        self._recorder.record(project.id, usage, session, assistant)
        return usage


def _pop_keep_alive(body: dict) -> object:
    """The request's `keep_alive` (Ollama's convention; never sent to the engine), in seconds or None."""
    if "keep_alive" not in body:
        return UNSET
    return keep_alive_seconds(body.pop("keep_alive"))


def merge_usage(usage: Optional[dict], event: dict) -> Optional[dict]:
    """Token counts from one event of any of the engine's APIs (OpenAI chat/responses, Anthropic),
    merged with what earlier events said (Anthropic splits input and output across events)."""
    found = event.get("usage") or (event.get("message") or {}).get("usage") or (event.get("response") or {}).get("usage")
    if not isinstance(found, dict):
        return usage
    merged = dict(usage or {})
    for key in ("prompt_tokens", "completion_tokens", "input_tokens", "output_tokens"):
        if isinstance(found.get(key), int):
            merged[key] = max(merged.get(key, 0), found[key])
    return merged
