"""An RPC worker as a user service (`slp service install --worker`): `slp-worker-<port>.service` under
systemd, `dev.slp.worker.<port>` under launchd, running `python -m slp.worker <options>`.

The unit is `Type=notify`: the worker supervisor sends READY=1 once the rpc-server answers the RPC hello,
so `systemctl --user start` returns when the worker can be used. The supervisor restarts the worker
itself; the manager restarts the supervisor if it fails for good (Restart=on-failure).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Mapping, Optional

from slp.service import flow
from slp.service.base import InstallResult, ServiceError, ServiceManager, ServiceStatus
from slp.service.launchd import LaunchdManager
from slp.service.managers import get_manager
from slp.service.spec import ServiceSpec, service_environment
from slp.service.systemd import SystemdManager, render_unit
from slp.settings import Settings
from slp.worker import WorkerSpec, live_worker_state, log_file, state_file
from slp.worker.runner import READY_TIMEOUT, STOP_GRACE

WORKER_LAUNCHD_PREFIX = "dev.slp.worker."


def worker_unit(port: int) -> str:
    return f"slp-worker-{port}.service"


def build_worker_spec(settings: Settings, spec: WorkerSpec, environ: Optional[Mapping[str, str]] = None,
                      executable: Optional[str] = None, platform: Optional[str] = None) -> ServiceSpec:
    python = os.path.abspath(executable or sys.executable)
    return ServiceSpec(program=[python, "-m", "slp.worker", *spec.options()],
                       environment=service_environment(environ, platform),
                       agent_log=log_file(settings.paths, spec.port),
                       start_timeout=int(READY_TIMEOUT + 30), stop_timeout=int(STOP_GRACE + 10),
                       label=f"{WORKER_LAUNCHD_PREFIX}{spec.port}")


def render_worker_unit(spec: ServiceSpec, port: int) -> str:
    comments = ("# slp RPC worker as a systemd user service. Written by `slp service install --worker`.",
                f"# Logs: journalctl --user -u slp-worker-{port} and {spec.agent_log}")
    description = (f"slp RPC worker on port {port} (llama.cpp ggml-rpc-server; no authentication: "
                   "trusted networks only)")
    return render_unit(spec, comments, description, identifier=f"slp-worker-{port}", journal=False)


class WorkerSystemdManager(SystemdManager):
    kind = "systemd user unit (RPC worker)"

    def __init__(self, port: int, home=None, environ=None):
        super().__init__(home, environ)
        self.port = port
        self.unit = worker_unit(port)

    def render(self, spec: ServiceSpec) -> bytes:
        return render_worker_unit(spec, self.port).encode()

    def logs_hint(self) -> str:
        return f"see `journalctl --user -u slp-worker-{self.port}`"


class WorkerLaunchdManager(LaunchdManager):
    kind = "launchd agent (RPC worker)"

    def __init__(self, port: int, home=None, environ=None):
        super().__init__(home, environ)
        self.port = port
        self.label = f"{WORKER_LAUNCHD_PREFIX}{port}"

    def logs_hint(self) -> str:
        return "see `slp worker status` and the worker log"


def worker_manager(port: int, platform: Optional[str] = None, environ: Optional[Mapping[str, str]] = None
                   ) -> ServiceManager:
    generic = get_manager(platform, environ=environ)  # raises ServiceError on other platforms
    cls = WorkerSystemdManager if isinstance(generic, SystemdManager) else WorkerLaunchdManager
    return cls(port, environ=environ)


def render_worker(settings: Settings, spec: WorkerSpec, platform: Optional[str] = None,
                  environ: Optional[Mapping[str, str]] = None, executable: Optional[str] = None) -> str:
    spec.check()
    manager = worker_manager(spec.port, platform, environ)
    return manager.render(build_worker_spec(settings, spec, environ, executable, platform)).decode()


def install_worker(settings: Settings, spec: WorkerSpec, platform: Optional[str] = None, start: bool = True,
                   environ: Optional[Mapping[str, str]] = None, executable: Optional[str] = None) -> InstallResult:
    """Write the worker's service file (if it changed) and, with `start`, enable and start it; waits until
    the worker answers. Raises WorkerError for a spec that must not run, ServiceError otherwise."""
    spec.check()
    manager = worker_manager(spec.port, platform, environ)
    service = build_worker_spec(settings, spec, environ, executable, platform)
    result = flow.install(manager, service, start, instead="slp worker start")
    if not start:
        return result
    deadline = time.monotonic() + service.start_timeout
    while time.monotonic() < deadline:  # launchd has no readiness protocol; under systemd this is at once
        state = live_worker_state(state_file(settings.paths, spec.port))
        if state and state.get("state") == "ready":
            return result
        time.sleep(0.2)
    raise ServiceError(f"the worker service did not become ready within {service.start_timeout}s; "
                       f"{manager.logs_hint()}")


def uninstall_worker(port: int, platform: Optional[str] = None) -> tuple[bool, Optional[str]]:
    return flow.uninstall(worker_manager(port, platform))


def worker_status(port: int, platform: Optional[str] = None) -> ServiceStatus:
    return flow.status(worker_manager(port, platform))
