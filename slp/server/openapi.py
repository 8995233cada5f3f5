"""The agent's OpenAPI 3.1 document, made from the route table (`slp.server.api.ROUTES`).

Each route's entry gives its operation: request bodies are the pydantic models the handlers validate with
(`slp.server.schemas`, `slp.projects.schema`), answers the models the handlers return
(`slp.server.responses`), errors the envelope with what each status means there. Only the parts every
operation shares live here: the document's info, tags and security, the error envelope, server-sent events.
Imported only when /openapi.json is first asked for (the agent's idle memory is a target).
"""

from __future__ import annotations

import copy
from typing import Any, Iterable, Optional

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode

import slp
from slp.server.responses import ErrorResponse
from slp.server.route_table import Answer, Route, Stream
from slp.server.schemas import _Known

OPENAPI_VERSION = "3.1.0"
REF_TEMPLATE = "#/components/schemas/{model}"


def ref(name: str) -> dict:
    return {"$ref": REF_TEMPLATE.format(model=name)}


# ----------------------------------------------------------------------------- models

def request_models(routes: Iterable[Route]) -> list[type[BaseModel]]:
    """The request bodies the routes validate, once each, in table order."""
    return list(dict.fromkeys(route.request for route in routes if route.request is not None))


def response_models(routes: Iterable[Route]) -> list[type[BaseModel]]:
    """The error envelope and every model a route answers with (stream events included), once each."""
    found: list[type[BaseModel]] = [ErrorResponse]
    for route in routes:
        found += [route.error_model] if route.error_model else []
        for answer in route.answers.values():
            found += [model for model in (answer.model, answer.stream and answer.stream.event,
                                          answer.stream and answer.stream.error_event) if model]
    return list(dict.fromkeys(found))


def with_known_fields(model: type[BaseModel], schema: dict) -> dict:
    """`_Known` models pass top-level fields they do not declare to the engine (refused only under
    SLP_STRICT, unless llama-server or OpenAI defines them: ENGINE_FIELDS): say so."""
    if issubclass(model, _Known) and UNKNOWN_FIELDS_NOTE not in schema.get("description", ""):
        schema["description"] = (schema.get("description", "").rstrip() + "\n\n" + UNKNOWN_FIELDS_NOTE).strip()
    return schema


UNKNOWN_FIELDS_NOTE = ("Besides the fields listed, any field is passed to the engine as it is (llama-server "
                       "ignores what it does not know); fields that neither llama-server nor OpenAI define are "
                       "named in the `X-SLP-Unknown-Fields` response header, and refused when the agent runs "
                       "with `SLP_STRICT=true`.")


def component_schemas(routes: Iterable[Route]) -> dict[str, dict]:
    """Every model's JSON schema, its nested models (`$defs`) gathered as components beside it."""
    routes = list(routes)
    schemas: dict[str, dict] = {}

    def put(name: str, schema: dict) -> None:
        if name in schemas and schemas[name] != schema:
            raise ValueError(f"two different OpenAPI schemas are named {name!r}")
        schemas[name] = schema

    def add(model: type[BaseModel], mode: JsonSchemaMode) -> None:
        schema = model.model_json_schema(ref_template=REF_TEMPLATE, mode=mode)
        for name, nested in schema.pop("$defs", {}).items():
            put(name, nested)
        put(model.__name__, with_known_fields(model, schema))

    for model in request_models(routes):
        add(model, "validation")
    for model in response_models(routes):
        add(model, "serialization")
    return schemas


# ----------------------------------------------------------------------------- answers and errors

ERROR_CODES = {
    400: "Invalid request: bad JSON, a field of the wrong type or out of range (`param` names it).",
    401: "Missing or wrong API key (only when the agent has one): send `Authorization: Bearer <key>`.",
    403: "The Host header is not the agent's (DNS-rebinding protection; see SLP_ALLOWED_HOSTS).",
    404: "Not found.",
    409: "Conflict: the name is taken, or the built-in project cannot be changed this way.",
    413: "Request body larger than the agent accepts (SLP_MAX_BODY_BYTES, 8 MiB by default).",
    415: "Content-Type is not JSON.",
    422: "A value the project models refuse (`param` names it), or a model that is not installed.",
    429: "Too many requests are waiting for the engine; retry after `Retry-After` seconds.",
    500: "Internal error in the agent (a bug): see the agent log.",
    503: "The engine is (re)starting or has failed; retry after `Retry-After` seconds when it is sent.",
}
RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}}
WWW_AUTHENTICATE = {"WWW-Authenticate": {"description": "`Bearer`.", "schema": {"type": "string"}}}


def error(status: int, description: Optional[str] = None, model: str = "ErrorResponse") -> dict:
    response: dict[str, Any] = {"description": description or ERROR_CODES[status],
                                "content": {"application/json": {"schema": ref(model)}}}
    if status in (429, 503):
        response["headers"] = copy.deepcopy(RETRY_AFTER)
    elif status == 401:
        response["headers"] = copy.deepcopy(WWW_AUTHENTICATE)
    return response


def sse(schema_name: str, lines: list[str], description: str, done: bool = True) -> dict:
    """An event stream: OpenAPI 3.1's `schema` describes one event. Its `data` is JSON (a `schema_name`, or an
    ErrorResponse when the engine fails mid-stream) or, with `done`, the final `[DONE]`."""
    data: dict[str, Any] = {"type": "string", "contentMediaType": "application/json",
                            "contentSchema": {"anyOf": [ref(schema_name), ref("ErrorResponse")]}}
    if done:
        data = {"type": "string", "if": {"const": "[DONE]"}, "else": data}
    data["description"] = f"A {schema_name} (or ErrorResponse) as JSON" + (", or `[DONE]`." if done else ".")
    return {"schema": {"type": "object", "description": description, "required": ["data"],
                       "properties": {"data": data, "event": {"type": "string"}, "id": {"type": "string"},
                                      "retry": {"type": "integer"}}},
            "example": "".join(line if line.startswith("event:") else f"data: {line}\n\n" for line in lines)}


def answer(spec: Answer) -> dict:
    """A documented success: a JSON model (and its event stream), other content, or only a description."""
    response: dict[str, Any] = {"description": spec.description}
    if spec.model is not None:
        media: dict[str, Any] = {"schema": ref(spec.model.__name__)}
        if spec.example is not None:
            media["example"] = spec.example
        response["content"] = {"application/json": media}
        if spec.stream is not None:
            response["content"][spec.stream.media] = stream(spec.stream)
    elif spec.content is not None:
        response["content"] = copy.deepcopy(spec.content)
    return response


def stream(spec: Stream) -> dict:
    if spec.media == "application/x-ndjson":
        return ndjson(spec)
    return sse(spec.event.__name__, list(spec.lines), spec.description, done=spec.done)


def ndjson(spec: Stream) -> dict:
    """Newline-delimited JSON: the schema describes one line (an event, or the error that ends a stream
    that failed midway)."""
    kinds = [ref(spec.event.__name__)] + ([ref(spec.error_event.__name__)] if spec.error_event else [])
    return {"schema": {"anyOf": kinds, "description": spec.description},
            "example": "".join(line + "\n" for line in spec.lines)}


def operation(route: Route) -> dict:
    """The OpenAPI operation of one route. Besides its own errors, every route may answer 403 (the Host
    check), 401 unless it is public (the API key) and 413 when it reads a body (its size limit)."""
    op: dict[str, Any] = {"tags": [route.tag], "operationId": route.operation_id, "summary": route.summary}
    if route.description:
        op["description"] = route.description
    if route.public:
        op["security"] = []
    if route.params:
        op["parameters"] = copy.deepcopy(list(route.params))
    if route.request is not None:
        op["requestBody"] = {"required": route.request_required, "description": route.request_description,
                             "content": {"application/json": {"schema": ref(route.request.__name__),
                                                              "example": copy.deepcopy(route.request_example)},
                                         **copy.deepcopy(route.request_media or {})}}
    errors: dict[int, Optional[str]] = {403: None}
    if not route.public:
        errors[401] = None
    if route.request is not None:
        errors[413] = None
    errors.update(route.errors)
    responses = {code: answer(spec) for code, spec in route.answers.items()}
    own = route.error_model.__name__ if route.error_model is not None else "ErrorResponse"
    responses.update({code: error(code, description, own if code not in (401, 403) else "ErrorResponse")
                      for code, description in errors.items()})
    op["responses"] = {str(code): responses[code] for code in sorted(responses)}
    return op


# ----------------------------------------------------------------------------- the document

def build_openapi(routes: Iterable[Route], api_key_required: bool = False) -> dict:
    """The OpenAPI 3.1 document of `routes`. With `api_key_required`, operations other than the public ones
    (/health, /docs, /openapi.json) require the bearer key; without, sending one is optional."""
    routes = list(routes)
    paths: dict[str, dict] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = operation(route)
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "slp agent API",
            "version": slp.__version__,
            "summary": "A local LLM agent: llama.cpp's llama-server behind an OpenAI-compatible API, with projects.",
            "description": (
                "The OpenAI-compatible routes (`/v1/chat/completions`, `/v1/completions`, `/v1/embeddings`, "
                "`/v1/models`) work with any OpenAI client: base URL `http://127.0.0.1:38540/v1`, any API key "
                "unless the agent has one. slp adds projects (a model, a system prompt and generation defaults "
                "per project, usage and stored conversations) and status.\n\n"
                "Every error is OpenAI's envelope `{\"error\": {\"message\", \"type\", \"param\", \"code\"}}`. "
                "Requests must carry a loopback Host (or one in SLP_ALLOWED_HOSTS) and, when the agent has "
                "an API key, `Authorization: Bearer <key>` (use Authorize). Bodies over 8 MiB "
                "(SLP_MAX_BODY_BYTES) are refused with 413."),
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        "servers": [{"url": "/", "description": "This agent"}],
        "tags": [
            {"name": "OpenAI-compatible", "description": "Proxied to llama-server, OpenAI's request/response shapes."},
            {"name": "Engine", "description": "llama-server's other APIs (Anthropic, rerank, tokenizer), proxied."},
            {"name": "Agent", "description": "Health and status of the agent and its engine."},
            {"name": "Projects", "description": "Projects, their usage and conversations."},
            {"name": "Documents", "description": "A project's documents: its chats are given the best chunks for "
                                                 "each question and name them in `annotations`."},
            {"name": "Ollama", "description": "Ollama's REST API, translated to the same engines and projects."},
            {"name": "Docs", "description": "This documentation."},
            {"name": "Chat", "description": "The chat page in the browser (`/chat`, and `/` for a browser)."},
        ],
        "security": [{"bearerAuth": []}] if api_key_required else [{}, {"bearerAuth": []}],
        "paths": paths,
        "components": {
            "schemas": component_schemas(routes),
            "securitySchemes": {"bearerAuth": {
                "type": "http", "scheme": "bearer",
                "description": "The agent's API key (SLP_API_KEY), when it has one."}},
        },
    }

