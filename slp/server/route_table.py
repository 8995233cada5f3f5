"""What a route of the agent is, declared once (`Route`), and how a list of them fills an aiohttp router.

The list itself is `slp.server.api.ROUTES`; `slp.server.openapi` makes the OpenAPI document from the
same list, so a route cannot be served undocumented or documented unserved. slp's own handlers return
the response model their route declares (the router turns it into JSON and checks its type); proxied
routes name what the proxy needs (`Forward`) and stream the engine's bytes themselves.
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterable, Optional, Union

from aiohttp import web
from pydantic import BaseModel

from slp.server.responses import dump_json

Reply = Union[BaseModel, tuple[BaseModel, int], web.StreamResponse]
Handler = Callable[[web.Request], Awaitable[Reply]]


@dataclass(frozen=True)
class Stream:
    """The server-sent events a route answers with when asked to stream: one `event` model per `data:`
    line, ending with `[DONE]` when `done` (else with the last typed event); `lines` are the example."""

    event: type[BaseModel]
    lines: tuple[str, ...]
    description: str
    done: bool = True
    media: str = "text/event-stream"  # or "application/x-ndjson": one JSON object a line (the Ollama API)
    error_event: Optional[type[BaseModel]] = None  # an NDJSON stream's last object when it fails midway


@dataclass(frozen=True)
class Answer:
    """A documented answer that is not an error: a JSON `model` (with an optional `example` and `stream`),
    or, for bodies that are not JSON models (metrics, the docs page, files), their OpenAPI `content`."""

    description: str
    model: Optional[type[BaseModel]] = None
    example: Any = None
    stream: Optional[Stream] = None
    content: Optional[dict] = None
    headers: Optional[dict] = None


@dataclass(frozen=True)
class Forward:
    """A route the proxy forwards to the engine: `proxy.route(path, request, shape, end_marker=, account=)`
    (None: the proxy's default), or the Proxy's own method named `handler` (chat completions)."""

    shape: Optional[Callable] = None
    end_marker: Optional[bytes] = None
    account: bool = True
    handler: Optional[str] = None
    documents: bool = False  # give the messages the project's documents, as a chat gets them


@dataclass(frozen=True)
class Route:
    """One route: how it is served and how it is documented.

    `errors` maps the statuses it answers with the error envelope to what they mean there (None: the usual
    meaning). Every route may also answer 403 (Host check), 401 unless `public` (API key) and 413 when it
    reads a body (`request`): those are added for all. `public` routes need no API key. `error_model`: its
    own errors' body when it is not the OpenAI envelope (the Ollama routes; 401 and 403 come before the
    route and keep the envelope).
    """

    method: str
    path: str
    operation_id: str
    summary: str
    tag: str
    answers: dict[int, Answer]
    handler: Optional[Handler] = None
    forward: Optional[Forward] = None
    description: Optional[str] = None
    params: tuple[dict, ...] = ()
    request: Optional[type[BaseModel]] = None
    request_example: Any = None
    request_description: str = ""
    request_required: bool = True
    request_media: Optional[dict] = None  # the body's other media types (OpenAPI `content`), beside the JSON model
    errors: dict[int, Optional[str]] = field(default_factory=dict)
    public: bool = False
    error_model: Optional[type[BaseModel]] = None  # the body of its own errors, when not OpenAI's envelope

    def __post_init__(self) -> None:
        if (self.handler is None) == (self.forward is None):
            raise ValueError(f"{self.method} {self.path}: give a handler or a Forward, not both or neither")

    @functools.cached_property
    def status(self) -> int:
        """The status of a reply the handler returns without one: the route's first success."""
        return min(code for code in self.answers if code < 300)


def path_param(name: str, description: str, example: str, pattern: Optional[str] = None,
               enum: Optional[Iterable[str]] = None) -> dict:
    """An OpenAPI path parameter. With `enum`, the only values the route serves (a public route's
    public paths are its path with each of them)."""
    schema: dict[str, Any] = {"type": "string"}
    if pattern:
        schema["pattern"] = pattern
    if enum is not None:
        schema["enum"] = sorted(enum)
    return {"name": name, "in": "path", "required": True, "description": description, "schema": schema,
            "example": example}


def public_paths(routes: Iterable[Route]) -> frozenset[str]:
    """The request paths answered without an API key: each public route's path, a templated one once per
    value its parameter's `enum` allows (any other value needs the key like an unknown path)."""
    paths: set[str] = set()
    for route in routes:
        if not route.public:
            continue
        expanded = [route.path]
        for param in route.params:
            if param["in"] != "path":
                continue
            slot = "{" + param["name"] + "}"
            expanded = [path.replace(slot, value) for path in expanded for value in param["schema"]["enum"]]
        paths.update(expanded)
    return frozenset(paths)


def lazy_handler(module: str, name: str) -> Handler:
    """A handler imported on its route's first request: a module only some clients use (Ollama's API) costs
    the agent no memory and no start-up time until one of them calls."""
    found: list[Handler] = []

    async def handler(request: web.Request) -> Any:
        if not found:
            found.append(getattr(importlib.import_module(module), name))
        return await found[0](request)

    handler.__name__ = handler.__qualname__ = name
    return handler


def _answering(route: Route, handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """`handler` as aiohttp wants it: a returned model becomes its JSON, with the route's status unless the
    handler returned (model, status); a model the route does not declare for that status is a bug (500)."""

    async def answer(request: web.Request) -> web.StreamResponse:
        reply = await handler(request)
        if isinstance(reply, web.StreamResponse):
            return reply
        body, status = reply if isinstance(reply, tuple) else (reply, route.status)
        declared = route.answers.get(status)
        if declared is None or declared.model is None or not isinstance(body, declared.model):
            raise TypeError(f"{route.method} {route.path} answered {type(body).__name__} with {status}, "
                            "which its route does not declare")
        return web.Response(body=dump_json(body), status=status, content_type="application/json", charset="utf-8")

    answer.__name__ = answer.__qualname__ = getattr(handler, "__name__", route.operation_id)
    return answer


def register(app: web.Application, routes: Iterable[Route], proxy: Any = None) -> None:
    """Add `routes` to `app.router` (GET routes also answer HEAD); forwarded ones are `proxy`'s handlers."""
    for route in routes:
        if route.forward is not None:
            spec = route.forward
            if spec.handler is not None:
                handler = getattr(proxy, spec.handler)
            else:
                options: dict[str, Any] = {"account": spec.account, "documents": spec.documents}
                if spec.shape is not None:
                    options["shape"] = spec.shape
                if spec.end_marker is not None:
                    options["end_marker"] = spec.end_marker
                handler = proxy.route(route.path, route.request, **options)
        else:
            handler = _answering(route, route.handler)
        if route.method == "GET":
            app.router.add_get(route.path, handler)
        else:
            app.router.add_route(route.method, route.path, handler)
