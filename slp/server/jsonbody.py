"""Reading a request's JSON body, the one way every route does it.

Refuses what would surprise a handler or the engine: a body over the size limit (413, enforced by
aiohttp), invalid UTF-8, invalid JSON, nesting deeper than MAX_DEPTH (llama.cpp's JSON parser recurses,
so a deep body could crash the engine), or anything but an object (400).

The Content-Type is not required to be JSON (`curl -d` sends a form type; the engine reads the body as
JSON whatever it is labelled), except from a browser page: a page may POST a form or text type to any
site without a CORS preflight, so a request with an `Origin` header that SLP_CORS_ORIGINS does not allow
must say application/json (which a browser only sends after a preflight, which such an origin fails).
A body that is not JSON under a type that is not JSON is a 415.
"""

from __future__ import annotations

import json

from aiohttp import web
from pydantic import BaseModel, ValidationError

from slp.server import keys
from slp.server.errors import APIError
from slp.server.middleware import origin_allowed

MAX_DEPTH = 64
_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none", "function-after", "literal"}


def nesting_depth(raw: bytes) -> int:
    """Deepest bracket nesting outside strings (only walked when the body has many brackets)."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


async def read_json_object(request: web.Request) -> dict:
    """The body as a JSON object, or an APIError (400/413/415) that says what is wrong with it."""
    ctype = request.content_type  # application/octet-stream when there is none
    json_typed = ctype == "application/json" or ctype.endswith("+json")
    if not json_typed:
        origin = request.headers.get("Origin")
        if origin is not None and not origin_allowed(origin, request.app[keys.SETTINGS].cors_origins):
            raise APIError(403, f"a request from the browser origin {origin!r} must send Content-Type: "
                           "application/json (or the origin be listed in SLP_CORS_ORIGINS)", code="origin_not_allowed")
    raw = await request.read()  # aiohttp enforces client_max_size here (413)
    if not raw:
        raise APIError(400, "request body is empty; send a JSON object", code="invalid_json")
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH and nesting_depth(raw) > MAX_DEPTH:
        raise APIError(400, f"request body is nested deeper than {MAX_DEPTH} levels", code="invalid_json")
    try:
        body = json.loads(raw)
    except UnicodeDecodeError:
        raise APIError(400, "request body is not valid UTF-8", code="invalid_json")
    except ValueError as exc:
        if not json_typed and request.headers.get("Content-Type"):
            raise APIError(415, f"Content-Type must be application/json, got {ctype!r} with a body that is not "
                           f"JSON ({exc})", code="unsupported_media_type")
        raise APIError(400, f"request body is not valid JSON: {exc}", code="invalid_json")
    if not isinstance(body, dict):
        raise APIError(400, "request body must be a JSON object", code="invalid_json")
    return body


def validation_message(exc: ValidationError) -> tuple[str, str | None]:
    """One readable line naming the field, e.g. "messages.0.role: Input should be 'system', …"."""
    err = exc.errors()[0]
    # Drop pydantic's union/constraint tags ("str", "constrained-str", "list[str]") from the path.
    parts = [str(p) for p in err["loc"] if not (isinstance(p, str) and (p in _TYPE_TAGS or "[" in p or "-" in p))]
    param = ".".join(parts) or (err.get("ctx") or {}).get("key")
    return (f"{param}: {err['msg']}" if param else err["msg"]), param


def validate(model: type[BaseModel], body: dict, status: int = 400, context: dict | None = None) -> BaseModel:
    """Validate `body` against `model` (with a validation `context`, see schemas.validation_context); a
    mistake becomes an APIError naming the field."""
    try:
        return model.model_validate(body, context=context)
    except ValidationError as exc:
        message, param = validation_message(exc)
        raise APIError(status, message, code="invalid_request", param=param)
