"""One typed record per request, shared by the observer middleware (which makes it) and the proxy (which
fills it in): what metrics and the request log say of the request once its answer has left.

The record's `finish()` runs once, after the response has been written: it first parses the reply's usage
(the proxy hands over that step with `account_after`, so parsing never sits between the engine's last
byte and the client's), then reports. One step in one order, instead of two callbacks whose order mattered.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Optional

from aiohttp import web

log = logging.getLogger("slp.server")


@dataclass(slots=True, eq=False)
class EngineRef:
    """The engine that served a request, as the request log names it."""

    model: str
    pid: Optional[int]


@dataclass(slots=True, eq=False)
class RequestRecord:
    """What one request did. Fields past `started` stay None/False for slp's own routes."""

    started: float  # time.perf_counter() when the observer first saw the request
    proxied: bool = False  # set by the proxy's handler as it begins: the request is logged, refused or not
    project: Optional[str] = None  # the project a proxied request runs in, once known
    model: Optional[str] = None  # the model the request asked for (or its project's)
    engine: Optional[EngineRef] = None
    ttft: Optional[float] = None  # seconds to the first streamed bytes
    usage: Optional[dict] = None  # token counts, once `finish()` parsed them
    disconnected: bool = False  # the client left before its answer ended
    engine_failed: Optional[str] = None  # why a started stream ended early
    unknown_fields: tuple[str, ...] = ()  # request fields slp does not know (passed to the engine)
    hide_usage: bool = False  # slp asked for a stream's usage event; the client did not
    error_code: Optional[str] = None  # the `code` of the error that answered it (slp's refusal or the engine's)
    citations: Optional[list] = None  # the document chunks (SearchHit) a chat's prompt was given: the reply names them
    _account: Optional[Callable[[], Optional[dict]]] = None

    def account_after(self, account: Callable[[], Optional[dict]]) -> None:
        """Parse the reply's usage (and queue it for the store) in `finish()`, after the bytes left."""
        self._account = account

    def finish(self) -> None:
        """Run the deferred accounting, once; the observer calls this before it reports the request."""
        account, self._account = self._account, None
        if account is None:
            return
        try:
            self.usage = account()
        except Exception:  # noqa: BLE001 - accounting must never take the agent down
            log.exception("could not account for a reply")


RECORD = web.RequestKey("slp_record", RequestRecord)
