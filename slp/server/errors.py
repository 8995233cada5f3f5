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

from slp.engine.supervisor import EngineUnavailable

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
