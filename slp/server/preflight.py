"""What the agent refuses to start with, checkable without loading the server (the CLI runs these
before it detaches the agent, and must stay quick to start)."""

from __future__ import annotations

import ipaddress

from slp.settings import Settings

SHUTDOWN_GRACE = 10.0  # seconds in-flight responses get to finish on stop


class AgentError(Exception):
    """The agent cannot start: one line that says why and what to do."""


def is_loopback(host: str) -> bool:
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_security(settings: Settings) -> None:
    if not is_loopback(settings.host) and settings.api_key is None:
        raise AgentError(f"refusing to listen on {settings.host} without an API key: anyone on the network "
                         "could use it; set SLP_API_KEY (clients send 'Authorization: Bearer <key>')")
