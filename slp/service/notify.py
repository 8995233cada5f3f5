"""sd_notify for `Type=notify` services, with the standard library only.

systemd passes the path of a datagram socket in `NOTIFY_SOCKET` (`/run/user/1000/systemd/notify`, or an
abstract socket written `@name`); the service sends newline-separated `KEY=value` assignments to it:
`READY=1` when it is ready, `STATUS=...` free text for `systemctl status`, `STOPPING=1` when it begins
to shut down. Without `NOTIFY_SOCKET` every call is a cheap no-op, and no failure here ever reaches the
caller: a lost status line must not take the agent down.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Optional, Union

log = logging.getLogger("slp.service")

_SEND_TIMEOUT = 2.0  # seconds; systemd reads its notify socket promptly


def _address(value: str) -> Optional[str]:
    """The AF_UNIX address for a NOTIFY_SOCKET value, or None for kinds we do not speak (vsock:...)."""
    if value.startswith("@"):
        return "\0" + value[1:]  # the abstract namespace (Linux)
    if value.startswith("/"):
        return value
    return None


def _message(fields: dict) -> bytes:
    lines = []
    for key, value in fields.items():
        if value is None:
            continue
        if isinstance(value, bool):
            value = int(value)
        text = " ".join(str(value).split())  # one line: systemd splits assignments on newlines
        lines.append(f"{key}={text}")
    return "\n".join(lines).encode("utf-8", "replace")


def notify(socket_path: Optional[str] = None, **fields: Union[str, int, bool, None]) -> bool:
    """Send `KEY=value` assignments (e.g. `notify(READY=1, STATUS="engine ready")`) to the service manager.

    `socket_path` defaults to `$NOTIFY_SOCKET`. Returns True when the datagram was sent, False when there
    is no socket to send to or sending failed (logged, never raised).
    """
    target = socket_path if socket_path is not None else os.environ.get("NOTIFY_SOCKET")
    if not target:
        return False
    address = _address(target)
    if address is None:
        log.debug("NOTIFY_SOCKET=%r is not a unix socket; not notifying", target)
        return False
    data = _message(fields)
    if not data:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(_SEND_TIMEOUT)
            sock.connect(address)
            sock.sendall(data)
        return True
    except OSError as exc:
        log.warning("could not notify the service manager at %s: %s", target, exc)
        return False


def under_systemd() -> bool:
    """True when this process looks started by systemd (it sets INVOCATION_ID for every unit it runs)."""
    return bool(os.environ.get("INVOCATION_ID") or os.environ.get("NOTIFY_SOCKET"))


class ServiceNotifier:
    """Turns the agent's life into sd_notify messages.

    `engine_changed(state, reason)` (from the supervisor's `on_change`) sends `STATUS=` on each change
    and `READY=1` the first time the engine settles: ready, or failed for good. A failed engine still
    ends start-up so `systemctl start` does not hang for TimeoutStartSec while the agent is up and can
    report the failure (`slp agent status`, STATUS=) or be repaired (`slp model use`, restart).
    `stopping()` sends `STOPPING=1`. Without NOTIFY_SOCKET (read once, here) every method is a no-op.
    """

    def __init__(self, socket_path: Optional[str] = None):
        self.socket_path = (socket_path if socket_path is not None else os.environ.get("NOTIFY_SOCKET")) or None
        self.ready_sent = False

    @property
    def enabled(self) -> bool:
        return self.socket_path is not None

    def status(self, text: str) -> None:
        if self.socket_path:
            notify(self.socket_path, STATUS=text)

    def engine_changed(self, state: object, reason: str) -> None:
        if not self.socket_path:
            return
        name = getattr(state, "value", state)
        status = f"engine {name}: {reason}"
        if not self.ready_sent and name in ("ready", "failed"):
            self.ready_sent = True
            notify(self.socket_path, READY=1, STATUS=status)
        else:
            notify(self.socket_path, STATUS=status)

    def stopping(self) -> None:
        if self.socket_path:
            notify(self.socket_path, STOPPING=1, STATUS="stopping: finishing requests, then the engine")
