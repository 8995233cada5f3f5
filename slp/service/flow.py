"""Installing, removing and describing a service, the same for the agent and for an RPC worker: only the
manager (which file, which unit) and the spec (what it runs) differ.
"""

from __future__ import annotations

from typing import Callable, Optional

from slp.service.base import InstallResult, ManagerUnavailable, ServiceManager, ServiceStatus
from slp.service.spec import ServiceSpec
from slp.paths import ensure_private_dir


def install(manager: ServiceManager, spec: ServiceSpec, start: bool = True,
            before_start: Optional[Callable[[ServiceManager, InstallResult], None]] = None,
            instead: str = "slp agent start") -> InstallResult:
    """Write the service file (only if it changed) and, with `start`, enable and start the service.

    Raises ManagerUnavailable (after writing the file) when the manager cannot be reached; the message
    offers `instead`, the command that runs the same thing without a service.
    `before_start(manager, result)` runs once the manager is known reachable, before it is asked to
    start (the CLI fetches the model there, with a progress bar, and stops a non-service agent).
    Blocks while the manager starts it (under systemd until READY=1; launchd returns at once).
    """
    ensure_private_dir(spec.agent_log.parent)  # launchd opens StandardOutPath there; the agent logs there
    result = InstallResult(path=manager.path, changed=manager.write(manager.render(spec), spec.has_secrets))
    if not start:
        return result
    reason = manager.unavailable()
    if reason:
        raise ManagerUnavailable(f"wrote {manager.path}, but could not start it: {reason} "
                                 f"(use --no-start to only write it, or run `{instead}`)")
    if before_start is not None:
        before_start(manager, result)
    manager.activate(result, timeout=spec.start_timeout + 30)
    return result


def uninstall(manager: ServiceManager) -> tuple[bool, Optional[str]]:
    """Stop, disable and remove the service. Returns (file removed, why the manager was not reachable)."""
    reason = manager.unavailable()
    if reason is None:
        manager.deactivate()
    removed = manager.remove()
    manager.after_remove(reachable=reason is None)
    return removed, reason


def status(manager: ServiceManager, wanted: Optional[ServiceSpec] = None) -> ServiceStatus:
    """Installed, enabled, active; with `wanted`, also whether the file is what install would write now."""
    current = manager.read()
    result = ServiceStatus(manager=manager.name, path=manager.path, installed=current is not None)
    if current is None:
        result.enabled, result.active, result.state = False, False, "not installed"
        return result
    if wanted is not None:
        result.up_to_date = current == manager.render(wanted)
    reason = manager.unavailable()
    if reason:
        result.detail = reason
    manager.query(result)
    return result
