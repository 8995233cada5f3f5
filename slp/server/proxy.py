"""The OpenAI proxy: validate, apply the project, make sure the right engine is ready, forward.

The hot path parses only what it must change (the request body) and passes response bytes through
untouched: a stream is written to the client chunk by chunk as the engine sends it, never buffered
or re-encoded. Usage (and, for requests with a `session_id`, the reply text) is read from the bytes
after they were sent, and stored by a background writer, off the request path.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from pathlib import Path
from typing import AsyncIterator, Callable, Iterator, Optional

import aiohttp
from aiohttp import web

from slp.engine.pool import UNSET, Engine, EnginePool, ModelTooLarge, Overloaded
from slp.engine.supervisor import EngineState, EngineUnavailable
from slp.models.store import ModelStore, engine_name
from slp.projects.documents import DocumentIndex
from slp.projects.retrieval import (
    CANDIDATES,
    CitationsAtEnd,
    annotate_reply,
    citations,
    last_user_text,
    pick,
    sources,
    with_documents,
)
from slp.projects.schema import Project
from slp.projects.shaping import added_usage, plan_of, shape_chat, shape_plain
from slp.projects.store import ProjectError
from slp.server.engine_client import EngineConnectionError, EngineResponse, EngineStreamError
from slp.server.errors import (
    APIError,
    keep_alive_seconds,
    model_not_found,
    model_too_large,
    no_chat_template,
    project_error,
)
from slp.server.jsonbody import read_json_object, validate
from slp.server.prompt_cache import PromptCache
from slp.server.record import RECORD, EngineRef, RequestRecord
from slp.server.schemas import ChatCompletionRequest, plainly_valid_chat, validation_context
from slp.server.services import ProjectCache, Session, UsageRecorder
from slp.settings import Settings
from slp.worker.pool import WorkerPool

log = logging.getLogger("slp.proxy")

_DONE = b"data: [DONE]"
_TAIL_BYTES = 16384  # tail of a stream kept for its usage event and end marker (see _stream)
_MODELS_RECHECK_S = 1.0  # how often the model lookup looks at the models folder again
# The engine's routes that format messages with the model's chat template: refused for a model without one,
# and the ones whose prompt opens with the project's system prompt (its prefix may be restored for them).
CHAT_PATHS = frozenset({"/v1/chat/completions", "/v1/responses", "/v1/messages"})


def _last_event(stream: bytes) -> bytes:
    """The last SSE event of a stream (events end with a blank line)."""
    body = stream.rstrip(b"\n")
    start = body.rfind(b"\n\n")
    return body[start + 2:] if start >= 0 else body


class StreamTail:
    """The end of a stream, kept as references to its last chunks (no copy per chunk): at least `keep`
    bytes, starting at an event's start, so the final event (usage, the end marker) stays whole however
    long it is (Responses' carries the full output); every chunk when `keep` is None (a session stores
    the whole reply)."""

    __slots__ = ("chunks", "size", "keep")

    def __init__(self, keep: Optional[int]):
        self.chunks: deque[bytes] = deque()
        self.size = 0
        self.keep = keep

    def add(self, chunk: bytes) -> None:
        chunks = self.chunks
        chunks.append(chunk)
        self.size += len(chunk)
        if self.keep is None:
            return
        # llama-server writes whole events, so a chunk ends where the next event starts: drop whole chunks.
        while len(chunks) > 1 and self.size - len(chunks[0]) >= self.keep and chunks[0].endswith(b"\n\n"):
            self.size -= len(chunks.popleft())
        if self.size > 4 * self.keep:  # chunks that do not end with their events: cut at an event's start
            data = b"".join(chunks)
            cut = data.rfind(b"\n\n", 0, len(data) - self.keep)
            if cut >= 0:
                data = data[cut + 2:]
            chunks.clear()
            chunks.append(data)
            self.size = len(data)

    def __bool__(self) -> bool:
        return self.size > 0

    def data(self) -> bytes:
        return b"".join(self.chunks)


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
        self.finishing = False  # a choice finished: the usage event may come from now on

    def feed(self, chunk: bytes) -> bytes:
        """The bytes of `chunk` (after those held back before) that may go to the client now."""
        data = self.held + chunk if self.held else chunk
        self.held = b""
        if not self.finishing:  # the usage event comes after a finish: until one, a single scan per chunk
            if self.FINISH not in data and data.endswith(b"\n\n"):
                return data
            self.finishing = True
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


@contextlib.contextmanager
def lease_refusals() -> Iterator[None]:
    """What the pool's lease refuses, as the client's error: a full queue (429), a model too large for the
    memory budget, an engine that cannot serve."""
    try:
        yield
    except Overloaded:
        raise APIError(429, "too many requests waiting for the engine; retry shortly",
                       code="rate_limit_exceeded", headers={"Retry-After": "1"}) from None
    except ModelTooLarge as exc:
        raise model_too_large(exc) from None
    except EngineUnavailable as exc:
        raise APIError.engine_unavailable(exc) from None


class Proxy:
    """Request handlers for the proxied routes; one instance per app, given the services it uses."""

    def __init__(self, *, settings: Callable[[], Settings], models: ModelStore, projects: ProjectCache,
                 engines: EnginePool, recorder: UsageRecorder, workers: WorkerPool, engine_auth: str,
                 documents: DocumentIndex, prompts: Optional[PromptCache] = None):
        self._settings = settings  # read per request: a config reload replaces the settings
        self._models = models
        self._projects = projects
        self._documents = documents
        self._prompts = prompts  # projects' prefixes restored from disk (None: the prompt cache is off)
        self._engines = engines
        self._recorder = recorder
        self._workers = workers
        # The same dict for every request to the engines: their client builds the request head once from it.
        self._engine_headers = {"Content-Type": "application/json", "Authorization": engine_auth}
        self._resolved: dict[str, tuple[Path, str, bool]] = {}  # model name -> (file, engine name, it can chat)
        self._models_stamp = (-1.0, -2)  # (when the models folder was last looked at, its mtime then)

    # ------------------------------------------------------------------ handlers

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        record = request[RECORD]
        record.proxied = True  # logged from here on, a refusal too
        body = await read_json_object(request)
        keep_alive = _pop_keep_alive(body)
        if plainly_valid_chat(body):  # the common request, known valid without building the model
            record.unknown_fields = ()
        else:
            self._validate(record, ChatCompletionRequest, body)
        project = await self._project_for(request, body)
        session = (body["session_id"], body["messages"]) if body.get("session_id") else None
        shaped = shape_chat(body, project)
        if plan_of(project).documents and body.get("retrieval") is not False:
            shaped = await self._given_documents(record, project, body, shaped, cite=True)
        record.hide_usage = added_usage(body, shaped)
        payload = await _unchanged(request, body, shaped, keep_alive)
        return await self._forward(request, record, "/v1/chat/completions", shaped, project, session,
                                   keep_alive=keep_alive, payload=payload)

    def route(self, path: str, schema: type, shape: Callable[[dict, Project], dict] = shape_plain,
              end_marker: bytes = _DONE, account: bool = True, documents: bool = False) -> Callable:
        """A handler for one of the engine's routes: read and validate the body, apply the project with
        `shape`, forward. `end_marker` is how the route's streams end; `account`: count its usage;
        `documents`: give its messages the project's documents as a chat gets them (`/apply-template`)."""

        async def handler(request: web.Request) -> web.StreamResponse:
            record = request[RECORD]
            record.proxied = True  # logged from here on, a refusal too
            body = await read_json_object(request)
            keep_alive = _pop_keep_alive(body)
            self._validate(record, schema, body)
            project = await self._project_for(request, body)
            shaped = shape(body, project)
            if documents and plan_of(project).documents and body.get("retrieval") is not False:
                shaped = await self._given_documents(record, project, body, shaped, cite=False)
            record.hide_usage = added_usage(body, shaped)
            return await self._forward(request, record, path, shaped, project, None, end_marker=end_marker,
                                       account=account, keep_alive=keep_alive,
                                       payload=await _unchanged(request, body, shaped, keep_alive))

        handler.__doc__ = schema.__doc__
        return handler

    # ------------------------------------------------------------------ for routes that translate (slp.server.ollama)

    async def with_documents(self, record: RequestRecord, project: Project, body: dict, shaped: dict) -> dict:
        """`shaped` given the project's documents as a chat gets them (for a route that translates its
        answer, Ollama's: its replies have no place to name them), unless the project or `body` turns
        retrieval off; unchanged, and free, for a project without documents."""
        if not plan_of(project).documents or body.get("retrieval") is False:
            return shaped
        return await self._given_documents(record, project, shaped, shaped, cite=False)

    async def project_for(self, request: web.Request, body: dict) -> Project:
        return await self._project_for(request, body)

    def model_file(self, model_name: str) -> tuple[Path, str]:
        """The file behind a model name and its engine's name (404 when none)."""
        return self._model_path(model_name)[:2]

    def forget_models(self) -> None:
        """Look models up afresh at the next request (a model's settings changed: its chat template)."""
        self._resolved.clear()

    def account(self, record: RequestRecord, project: Project, usage: Optional[dict]) -> None:
        """Count a translated reply's usage for its project, after its bytes left (as `_forward` does)."""
        def account() -> Optional[dict]:
            self._recorder.record(project.id, usage, None, None)
            return usage
        record.account_after(account)

    @contextlib.asynccontextmanager
    async def exchange(self, record: RequestRecord, path: str, body: dict, project: Project,
                       keep_alive: object = UNSET) -> AsyncIterator[tuple[Engine, EngineResponse]]:
        """Lease the model's engine and POST `body` to `path` there, for a route that translates the
        engine's answer instead of relaying its bytes: the same admission, loading, lease and refusals
        as `_forward`. Yields (engine, the engine's response); the lease lasts until the block ends."""
        record.proxied = True
        async with self._leased(record, path, body, project, keep_alive) as (engine, _):
            async with await self._post(record, engine, path, body, None) as upstream:
                yield engine, upstream

    @contextlib.asynccontextmanager
    async def _leased(self, record: RequestRecord, path: str, body: dict, project: Project,
                      keep_alive: object) -> AsyncIterator[tuple[Engine, bool]]:
        """The engine of the model the body names (or the project's), leased for the block: admitted,
        loaded if needed, kept alive as the request or its project says; the pool's refusals as the
        client's errors. Relayed (`_forward`) and translated (`exchange`) requests both lease through here.
        A chat (`path` in CHAT_PATHS) with a model that has no chat template is refused before any lease; a
        chat in a project with a system prompt gets its prefix restored from disk where the engine lacks it
        (the prompt cache). Yields (engine, whether `body` changed: it names the restored slot)."""
        record.project, record.model = project.name, body.get("model") or project.model
        model_path, name, chats = self._model_path(record.model)
        chat = path in CHAT_PATHS
        if chat and not chats:
            raise no_chat_template(record.model)
        if keep_alive is UNSET:
            keep_alive = plan_of(project).keep_alive
        with lease_refusals():
            async with self._engines.lease(name, model_path, keep_alive=keep_alive) as engine:
                changed = chat and bool(project.system_prompt) and self._prompts is not None and \
                    await self._prompts.prepare(engine, project, body)
                yield engine, changed

    # ------------------------------------------------------------------ steps

    async def _given_documents(self, record: RequestRecord, project: Project, body: dict, shaped: dict,
                               cite: bool) -> dict:
        """`shaped` with the project's best chunks for the last user message in its system message, within
        the retrieval budget (a share of the context window); as it was when nothing matches. With `cite`
        the reply names them (`record.citations`). The search runs in a thread, as the store's calls do."""
        query = last_user_text(body.get("messages"))
        if not query:
            return shaped
        settings = self._settings()
        try:
            hits = await asyncio.to_thread(self._documents.search_id, project.id, query, CANDIDATES)
        except ProjectError as exc:
            raise project_error(exc) from None
        chosen = pick(hits, int(settings.ctx_size * settings.retrieval_share))
        if not chosen:
            return shaped
        if cite:
            record.citations = chosen
        return with_documents(shaped, chosen)

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

    def _model_path(self, model_name: str) -> tuple[Path, str, bool]:
        """The file behind a model name, its engine's name and whether it can chat (a template of its own,
        chosen, or known for its architecture: a header read, once per file version); remembered until the
        models folder changes (a model's template setting is a file there), which is looked at (one stat)
        at most once a second. Unknown names are an OpenAI-style 404."""
        store = self._models
        now = time.monotonic()
        checked, stamp = self._models_stamp
        if now - checked >= _MODELS_RECHECK_S:
            try:
                mtime = store.root.stat().st_mtime_ns
            except OSError:
                mtime = -1
            if mtime != stamp:
                self._resolved.clear()
            self._models_stamp = (now, mtime)
        known = self._resolved.get(model_name)
        if known is not None:
            return known
        model = store.resolve(model_name)
        if model is None:
            raise model_not_found(model_name)
        if len(self._resolved) > 256:
            self._resolved.clear()
        name = engine_name(store, model.path)  # as the runner and the load route name it: one engine per file
        self._resolved[model_name] = known = (model.path, name, model.chat_format() is not None)
        return known

    async def _forward(self, request: web.Request, record: RequestRecord, path: str, body: dict,
                       project: Project, session: Optional[Session], end_marker: bytes = _DONE,
                       account: bool = True, keep_alive: object = UNSET,
                       payload: Optional[bytes] = None) -> web.StreamResponse:
        """Lease the model's engine (admitted, loading it if needed) and send the request there; `payload`
        is the body's bytes when they can go as the client sent them."""
        async with self._leased(record, path, body, project, keep_alive) as (engine, changed):
            if changed:
                payload = None  # the body names the slot its prefix was restored into
            return await self._send(request, record, engine, path, body, payload, project, session, end_marker,
                                    account)

    async def _post(self, record: RequestRecord, engine: Engine, path: str, body: dict,
                    payload: Optional[bytes]) -> EngineResponse:
        """POST to a leased engine (`payload`: the body's bytes when they can go as the client sent them);
        returns once the engine's status and headers are in. A failure to send is the engine unavailable."""
        supervisor = engine.supervisor
        port = supervisor.port
        if supervisor.state is not EngineState.READY or port is None:  # it failed since the lease saw it ready
            raise await supervisor.unavailable("the engine stopped serving before the request was sent")
        record.engine = EngineRef(engine.name, supervisor.pid)
        if payload is None:
            payload = json.dumps(body, separators=(",", ":")).encode()
        try:
            upstream = await engine.extra["http"].post("127.0.0.1", port, path, payload, self._engine_headers)
        except EngineConnectionError as exc:
            raise await supervisor.unavailable(str(exc))
        supervisor.progress()
        return upstream

    async def _send(self, request: web.Request, record: RequestRecord, engine: Engine, path: str, body: dict,
                    payload: Optional[bytes], project: Project, session: Optional[Session], end_marker: bytes,
                    account: bool) -> web.StreamResponse:
        """Forward to a leased, ready engine (the lease counts the work in flight); its supervisor sees
        every byte (progress)."""
        supervisor = engine.supervisor
        async with await self._post(record, engine, path, body, payload) as upstream:
            if body.get("stream") and upstream.status == 200:
                return await self._stream(request, record, engine, upstream, project, session, end_marker)
            try:
                data = await upstream.read()
            except EngineStreamError as exc:
                raise await supervisor.unavailable(f"the engine failed before answering: {exc}")
            if upstream.status != 200:
                raise engine_refusal(upstream.status, data)
            supervisor.served()  # a whole answer: the engine is past its first decode
            if record.citations:
                data = annotate_reply(data, citations(record.citations))
            if account:
                record.account_after(lambda: self._account_json(data, project, session, record.citations))
            return web.Response(body=data, status=200, content_type=upstream.content_type or "application/json")

    async def _stream(self, request: web.Request, record: RequestRecord, engine: Engine, upstream: EngineResponse,
                      project: Project, session: Optional[Session], end_marker: bytes) -> web.StreamResponse:
        """Pass SSE bytes through as they arrive. Client gone: close upstream so the engine stops.
        Engine gone: end the stream with an error event, never a silently truncated success."""
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                               "X-Accel-Buffering": "no"})
        await response.prepare(request)
        seen = StreamTail(None if session is not None else _TAIL_BYTES)
        failure: Optional[str] = None
        hidden = HiddenUsage() if record.hide_usage else None
        cite = CitationsAtEnd(citations(record.citations)) if record.citations else None
        progress = engine.supervisor.progress
        try:
            async for chunk in upstream.iter_chunks():
                progress()
                if not seen:
                    record.ttft = time.perf_counter() - record.started
                    engine.supervisor.served()  # a first event: the engine is past its first decode
                try:
                    if hidden is None and cite is None:
                        await response.write(chunk)
                    else:
                        out = hidden.feed(chunk) if hidden is not None else chunk
                        if cite is not None:
                            out = cite.feed(out)
                        if out:
                            await response.write(out)
                except (ConnectionResetError, aiohttp.ClientConnectionResetError, RuntimeError):
                    upstream.close()  # drops the engine connection: llama-server cancels the generation
                    record.disconnected = True
                    return response
                seen.add(chunk)  # the final event (usage, the end marker) stays whole however long it is
        except EngineStreamError as exc:
            failure = f"engine stream broke: {exc.__class__.__name__}"
        held = hidden.flush() if hidden is not None else b""
        if cite is not None:
            held = cite.feed(held) + cite.flush()
        if held:
            try:
                await response.write(held)
            except (ConnectionResetError, aiohttp.ClientConnectionResetError, RuntimeError):
                record.disconnected = True
                return response
        tail = seen.data()
        if failure is None and end_marker not in _last_event(tail):
            failure = f"engine stream ended before {end_marker.decode()}"
        if failure is not None:
            await self._fail_stream(response, record, engine, failure)
        else:
            record.account_after(lambda: self._account_stream(tail, project, session, record.citations))
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

    def _account_json(self, data: bytes, project: Project, session: Optional[Session],
                      cited: Optional[list] = None) -> Optional[dict]:
        """Queue the usage (and the exchange, with the chunks `cited`, for a session) for storage; returns
        the usage."""
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
        self._recorder.record(project.id, usage, session, assistant, sources(cited) if session and cited else None)
        return usage

    def _account_stream(self, data: bytes, project: Project, session: Optional[Session],
                        cited: Optional[list] = None) -> Optional[dict]:
        """Usage from the events that carry it, read from the end (the last one or two: Anthropic's are
        split); for a session, every event, for the reply's text."""
        usage, parts = None, []
        lines = data.split(b"\n")
        if session is None:
            lines = [line for line in reversed(lines) if b'"usage"' in line][:_USAGE_EVENTS]
        for line in lines:
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
        if assistant is not None and cited:
            assistant["annotations"] = citations(cited)
        self._recorder.record(project.id, usage, session, assistant, sources(cited) if session and cited else None)
        return usage


_USAGE_EVENTS = 3  # events with usage read at a stream's end (Anthropic: message_start and message_delta)


async def _unchanged(request: web.Request, body: dict, shaped: dict, keep_alive: object) -> Optional[bytes]:
    """The request's own bytes when the project changed nothing in it (they go to the engine as they
    came, not serialised again); None when the shaped body must be sent. (aiohttp keeps the body it read:
    reading it again is free.)"""
    if keep_alive is UNSET and shaped == body:
        return await request.read()
    return None


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
