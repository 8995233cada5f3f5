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
OS. The names below are this package's interface.
"""

from __future__ import annotations

from slp.service.agent import (
    install,
    installed_service,
    managed_by_service,
    render,
    service_start,
    service_stop,
    status,
    uninstall,
    wait_ready,
)
from slp.service.base import InstallResult, ManagerUnavailable, ServiceError, ServiceManager, ServiceStatus
from slp.service.managers import get_manager
from slp.service.spec import (
    LAUNCHD_LABEL,
    MODEL_FETCH_ALLOWANCE,
    SERVICE_NAME,
    STOP_MARGIN,
    ServiceSpec,
    build_spec,
    service_environment,
)

__all__ = [
    "LAUNCHD_LABEL", "MODEL_FETCH_ALLOWANCE", "SERVICE_NAME", "STOP_MARGIN", "InstallResult",
    "ManagerUnavailable", "ServiceError", "ServiceManager", "ServiceSpec", "ServiceStatus", "build_spec",
    "get_manager", "install", "installed_service", "managed_by_service", "render", "service_environment",
    "service_start", "service_stop", "status", "uninstall", "wait_ready",
]
