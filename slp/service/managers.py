"""Which service manager this platform has: systemd (Linux) or launchd (macOS)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional

from slp.service.base import ServiceError, ServiceManager
from slp.service.launchd import LaunchdManager
from slp.service.spec import platform_name
from slp.service.systemd import SystemdManager


def get_manager(platform: Optional[str] = None, home: Optional[Path] = None,
                environ: Optional[Mapping[str, str]] = None) -> ServiceManager:
    """The agent's service manager for `platform` (default: this one). Raises ServiceError elsewhere."""
    name = platform_name(platform)
    if name.startswith("linux"):
        return SystemdManager(home, environ)
    if name.startswith("darwin"):
        return LaunchdManager(home, environ)
    raise ServiceError(f"slp service supports Linux (systemd) and macOS (launchd), not {name}")
