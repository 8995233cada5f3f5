"""Run the agent under the platform's service manager: a systemd user unit (Linux) or a launchd
LaunchAgent (macOS).

`install()` writes the unit for *this* interpreter and *this* environment's SLP_* settings (rewriting it
only when it changed) and starts it; `uninstall()` stops and removes it; `status()` says whether it is
installed, enabled and active. `managed_by_service()`, `service_start()` and `service_stop()` let
`slp agent start|stop` go through the service manager when the service is installed.

One module a concern:
- `spec`: what a service runs (program, environment, time limits);
- `base`: the errors, answers and file handling every manager shares, and "is it running";
- `systemd`, `launchd`: each platform's unit text and commands; `managers`: which one this platform has;
- `flow`: install / uninstall / status, the same for the agent and for an RPC worker (`worker`);
- `agent`: the agent's service, and starting/stopping the agent through it;
- `notify`: sd_notify, used by the running agent and worker.

The platform is an argument everywhere (default: `sys.platform`) so both generators are testable on any
OS. The names below are this package's interface; each is imported when first asked for, so the running
agent, which needs only `notify`, does not load the service managers.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "slp.service.agent": ("install", "installed_service", "managed_by_service", "render", "service_start",
                          "service_stop", "status", "uninstall", "wait_ready"),
    "slp.service.base": ("InstallResult", "ManagerUnavailable", "ServiceError", "ServiceManager", "ServiceStatus"),
    "slp.service.managers": ("get_manager",),
    "slp.service.spec": ("LAUNCHD_LABEL", "MODEL_FETCH_ALLOWANCE", "SERVICE_NAME", "STOP_MARGIN", "ServiceSpec",
                         "build_spec", "service_environment"),
}
_HOME_OF = {name: module for module, names in _HOMES.items() for name in names}
__all__ = sorted(_HOME_OF)


def __getattr__(name: str) -> Any:
    if name not in _HOME_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_HOME_OF[name]), name)
