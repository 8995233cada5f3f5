"""The security check the agent starts with: never listen beyond this machine without an API key.

Kept apart from the server so the CLI can run it before it detaches the agent, and stay quick to start.
"""

from __future__ import annotations

import ipaddress

from slp.lifecycle import AgentError
from slp.settings import Settings


def is_loopback(host: str) -> bool:
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_security(settings: Settings) -> None:
    """Raises AgentError when the agent would listen on a non-loopback address without an API key."""
    if not is_loopback(settings.host) and settings.api_key is None:
        raise AgentError(f"refusing to listen on {settings.host} without an API key: anyone on the network "
                         "could use it; set SLP_API_KEY (clients send 'Authorization: Bearer <key>')")
