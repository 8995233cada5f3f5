"""One error envelope, OpenAI's, for everything the agent itself refuses, so clients need one parser.

A request fails in one of two ways, both from the same `APIError`:
- before its response has started: raise it (the error middleware and aiohttp answer with its JSON body);
- after a stream has started (the status, 200, is already sent): `await error.send_as_event(response)`
  ends the stream with one SSE `data:` event that holds the same body.
"""

from __future__ import annotations

import json
from typing import Optional

from aiohttp import web

from slp.engine.pool import ModelTooLarge, parse_keep_alive
from slp.engine.supervisor import EngineUnavailable
from slp.projects.store import ProjectConflict, ProjectError, ProjectInvalid, ProjectNotFound

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
}


def error_body(status: int, message: str, code: Optional[str] = None, param: Optional[str] = None,
               type_: Optional[str] = None) -> dict:
    """The JSON body OpenAI clients expect: {"error": {"message", "type", "param", "code"}}."""
    return {"error": {"message": message, "type": type_ or _TYPES.get(status, "server_error"),
                      "param": param, "code": code}}


class APIError(web.HTTPException):
    """Raise from a handler (or a middleware) to answer with the OpenAI error envelope.

    Subclassing aiohttp's HTTPException lets it pass through aiohttp's own machinery; the error
    middleware turns every other HTTPException (aiohttp's 404/405/413) and every EngineUnavailable
    into one of these.
    """

    def __init__(self, status: int, message: str, code: Optional[str] = None, param: Optional[str] = None,
                 headers: Optional[dict] = None, type_: Optional[str] = None):
        self.status_code = status
        self.body_dict = error_body(status, message, code, param, type_)
        super().__init__(headers=headers, content_type="application/json", text=json.dumps(self.body_dict))
        self.message = message
        self.code = code
        self.param = param

    @classmethod
    def engine_unavailable(cls, exc: EngineUnavailable) -> "APIError":
        """503 for an engine that cannot serve now; `Retry-After` unless waiting will not help (failed)."""
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
        return cls(503, str(exc), code="engine_unavailable", headers=headers)

    async def send_as_event(self, response: web.StreamResponse) -> None:
        """End a started stream with this error as its last event (a client that left is no error)."""
        try:
            await response.write(b"data: " + json.dumps(self.body_dict).encode() + b"\n\n")
        except (ConnectionResetError, RuntimeError):
            pass


# ----------------------------------------------------------------------------- refusals several routes share
# Each has one home, so its status, code and words are the same wherever it is raised (`raise model_not_found(…)`).

def model_not_found(name: str, *, status: int = 404) -> APIError:
    """No installed model has this name: 404 where the model is what the request names (its path or its
    `model`); 422 (`status=422`) where it is a value a project would keep, like the project's other fields."""
    return APIError(status, f"The model '{name}' does not exist or is not installed; see GET /v1/models or "
                    "`slp model list`", code="model_not_found", param="model")


def no_chat_template(name: str) -> APIError:
    """A chat with a model that has no chat template and none slp knows for its architecture: refused, since
    llama.cpp would fall back to ChatML the model never saw and it would answer in those tokens."""
    return APIError(400, f"The model '{name}' is a base model without a chat template, so it cannot chat; "
                    f"pick one of llama.cpp's built-in templates with `slp model template {name} chatml` (or "
                    "llama3, gemma, mistral-v7, ...), or continue text with /v1/completions, which works for it",
                    code="model_has_no_chat_template", param="model")


def model_too_large(exc: ModelTooLarge) -> APIError:
    """The model needs more than the whole memory budget: a 400 at once, since waiting cannot help."""
    return APIError(400, str(exc), code="model_too_large", param="model")


def keep_alive_seconds(value: object) -> Optional[float]:
    """A request's `keep_alive` in seconds (None: keep the engine loaded); a 400 naming it when invalid."""
    try:
        return parse_keep_alive(value)
    except ValueError as exc:
        raise APIError(400, str(exc), code="invalid_value", param="keep_alive") from None


def project_error(exc: ProjectError, *, param: Optional[str] = None) -> APIError:
    """The project store's refusal: no such project 404, a conflict 409, an invalid project field 422 (as
    the project routes document it, wherever the store raises it), any other 400. `param` names the
    request's field when the store names none (the proxy's `project_id`)."""
    if exc.status is not None:
        status = exc.status
    elif isinstance(exc, ProjectNotFound):
        status = 404
    elif isinstance(exc, ProjectConflict):
        status = 409
    elif isinstance(exc, ProjectInvalid):
        status = 422
    else:
        status = 400
    return APIError(status, exc.message, code=exc.code, param=exc.param or param)
