"""Middlewares: the error envelope, DNS-rebinding protection, API-key auth and CORS.

Order matters (outermost first): errors wrap everything so even a refused Host or key gets the
OpenAI envelope; the host check runs before auth so a rebinding page learns nothing.
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
import logging
from typing import Awaitable, Callable, Iterable, Optional

from aiohttp import web

from slp.engine.supervisor import EngineUnavailable
from slp.server import keys
from slp.server.errors import APIError

log = logging.getLogger("slp.server")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every refusal leaves as an APIError (OpenAI's envelope); a bug becomes a 500, never a stack trace."""
    try:
        return await handler(request)
    except APIError:
        raise
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
        if exc.status == 413:
            message = f"request body too large (limit {request.app[keys.SETTINGS].max_body_bytes} bytes)"
        elif exc.status == 404:
            message = f"no route for {request.method} {request.path}"
        elif exc.status == 405:
            message = f"method {request.method} not allowed for {request.path}"
        raise APIError(exc.status, message, code=_code_for(exc.status), headers=_keep_headers(exc)) from None
    except EngineUnavailable as exc:
        raise APIError.engine_unavailable(exc) from None
    except Exception:  # noqa: BLE001 - the envelope is the contract, the log keeps the details
        log.exception("unhandled error on %s %s", request.method, request.path)
        raise APIError(500, "internal error in the slp agent; see the agent log", code="internal_error") from None


def _code_for(status: int) -> Optional[str]:
    return {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(status)


def _keep_headers(exc: web.HTTPException) -> dict:
    return {k: v for k, v in exc.headers.items() if k.lower() == "allow"}


def host_is_allowed(host_header: str, allowed: Iterable[str]) -> bool:
    """True for loopback names/addresses and configured hosts, ignoring the port."""
    host = host_header.strip().lower()
    if host.startswith("["):
        host = host[1:].split("]", 1)[0]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    if not host:
        return False
    if host in LOOPBACK_NAMES or host in {h.lower() for h in allowed}:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def make_host_check(allowed_hosts: Iterable[str]) -> Callable:
    allowed = tuple(allowed_hosts)

    @functools.lru_cache(maxsize=256)  # clients send the same few Host values: parse each once
    def allowed_host(host_header: str) -> bool:
        return host_is_allowed(host_header, allowed)

    @web.middleware
    async def host_check(request: web.Request, handler: Handler) -> web.StreamResponse:
        """Refuse requests whose Host is not ours: a web page that rebinds a DNS name to 127.0.0.1
        would otherwise reach the agent with the browser's credentials-free fetches."""
        if not allowed_host(request.host or ""):
            raise APIError(403, f"Host {request.host!r} is not allowed; add it to SLP_ALLOWED_HOSTS",
                           code="host_not_allowed")
        return await handler(request)

    return host_check


def make_auth(api_key: str, public_paths: Iterable[str]) -> Callable:
    """Bearer-key check (constant time) on every route but `public_paths`."""
    expected = f"Bearer {api_key}".encode()
    public = frozenset(public_paths)

    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in public and request.method != "OPTIONS":
            given = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                raise APIError(401, "missing or invalid API key; send 'Authorization: Bearer <key>'",
                               code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
        return await handler(request)

    return auth


def origin_allowed(origin: Optional[str], allowed: Iterable[str]) -> bool:
    """True when `origin` is one of the configured CORS origins (or they include `*`)."""
    return origin is not None and any(item == "*" or item == origin for item in allowed)


def make_cors(origins: Iterable[str]) -> tuple[Callable, Callable]:
    """CORS only for configured origins (none by default): (preflight middleware, on_response_prepare).

    Headers are added when a response is prepared so streamed responses get them too.
    """
    allowed = set(origins)

    def origin_ok(origin: Optional[str]) -> bool:
        return origin is not None and ("*" in allowed or origin in allowed)

    @web.middleware
    async def preflight(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            origin = request.headers.get("Origin")
            if not origin_ok(origin):
                raise APIError(403, f"origin {origin!r} is not allowed; add it to SLP_CORS_ORIGINS",
                               code="origin_not_allowed")
            return web.Response(status=204, headers=_cors_headers(origin, request))
        return await handler(request)

    async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
        origin = request.headers.get("Origin")
        if origin_ok(origin):
            response.headers.update(_cors_headers(origin, request))

    return preflight, on_prepare


def _cors_headers(origin: str, request: web.Request) -> dict:
    return {"Access-Control-Allow-Origin": origin, "Vary": "Origin",
            "Access-Control-Allow-Methods": "GET, POST, PATCH, DELETE, OPTIONS",
            "Access-Control-Allow-Headers": request.headers.get("Access-Control-Request-Headers",
                                                                "Authorization, Content-Type"),
            "Access-Control-Max-Age": "600"}
