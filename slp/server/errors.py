"""One error envelope, OpenAI's, for everything the agent itself refuses, so clients need one parser."""

from __future__ import annotations

import json
from typing import Optional

from aiohttp import web

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


def error_response(status: int, message: str, code: Optional[str] = None, param: Optional[str] = None,
                   type_: Optional[str] = None, headers: Optional[dict] = None) -> web.Response:
    return web.Response(status=status, body=json.dumps(error_body(status, message, code, param, type_)),
                        content_type="application/json", headers=headers)


class APIError(web.HTTPException):
    """Raise from a handler to answer with the OpenAI error envelope.

    Subclassing aiohttp's HTTPException lets it pass through aiohttp's own machinery; the error
    middleware turns every HTTPException (ours or aiohttp's 404/405/413) into the same envelope.
    """

    def __init__(self, status: int, message: str, code: Optional[str] = None, param: Optional[str] = None,
                 headers: Optional[dict] = None):
        self.status_code = status
        super().__init__(headers=headers, content_type="application/json",
                         text=json.dumps(error_body(status, message, code, param)))
        self.message = message
        self.code = code
        self.param = param
