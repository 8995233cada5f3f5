"""What a service manager is asked to run: the program, the environment it needs, and its time limits.

`build_spec` describes the agent; `slp.service.worker` describes an RPC worker the same way.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Optional

from slp.lifecycle import SHUTDOWN_GRACE

if TYPE_CHECKING:
    from slp.settings import Settings

SERVICE_NAME = "slp.service"
LAUNCHD_LABEL = "dev.slp.agent"

# Time the agent may take to start before the manager gives up: fetching the default model (pip, ~100 MB)
# plus every engine attempt the supervisor makes before it settles (ready, or failed for good).
MODEL_FETCH_ALLOWANCE = 900.0
STOP_MARGIN = 10.0  # on top of the agent's drain grace and the engine's SIGTERM grace (covers STOPPING_GRACE)

# Path-valued variables: made absolute, since a service does not start in the caller's directory.
_PATH_SUFFIXES = ("_HOME", "_DIR", "_BIN", "_CACHE", "_PATH", "_FILE")
# platformdirs (Linux) reads these: the service must see the same config/data/log/cache dirs as the CLI.
_XDG_VARS = ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME")
_SECRET_VARS = ("SLP_API_KEY",)


@dataclass
class ServiceSpec:
    """What any service manager needs to run the agent (or a worker)."""

    program: list[str]
    environment: dict[str, str]
    agent_log: Path
    start_timeout: int  # seconds
    stop_timeout: int  # seconds
    label: str = LAUNCHD_LABEL  # launchd's job label

    @property
    def has_secrets(self) -> bool:
        return any(name.upper() in _SECRET_VARS for name in self.environment)


def platform_name(platform: Optional[str]) -> str:
    return platform or sys.platform


def service_environment(environ: Optional[Mapping[str, str]] = None, platform: Optional[str] = None
                        ) -> dict[str, str]:
    """The variables the service must carry: SLP_* set now (paths made absolute), and on Linux the XDG
    base dirs that decide where platformdirs puts slp's files. PYTHONUNBUFFERED keeps logs prompt."""
    environ = os.environ if environ is None else environ
    env: dict[str, str] = {}
    for name in sorted(environ):
        value = environ[name]
        if not name.upper().startswith("SLP_") or name.upper() == "SLP_":
            continue
        if value and name.upper().endswith(_PATH_SUFFIXES):
            value = os.path.abspath(os.path.expanduser(value))
        env[name] = value
    if not platform_name(platform).startswith("darwin"):
        for name in _XDG_VARS:
            value = environ.get(name)
            if value and os.path.isabs(value):  # the XDG spec ignores relative values
                env[name] = value
    env["PYTHONUNBUFFERED"] = "1"
    return env


def build_spec(settings: "Settings", environ: Optional[Mapping[str, str]] = None,
               executable: Optional[str] = None, platform: Optional[str] = None) -> ServiceSpec:
    """The agent's service: `python -m slp.server` with this environment's SLP_* settings."""
    python = os.path.abspath(executable or sys.executable)  # not resolved: a venv's python is a symlink
    start = MODEL_FETCH_ALLOWANCE + (settings.max_restarts + 1) * (settings.start_timeout + 5)
    stop = SHUTDOWN_GRACE + settings.stop_grace + STOP_MARGIN
    return ServiceSpec(program=[python, "-m", "slp.server"],  # the agent alone, without the CLI
                       environment=service_environment(environ, platform),
                       agent_log=settings.paths.agent_log,
                       start_timeout=int(math.ceil(start)), stop_timeout=int(math.ceil(stop)))
