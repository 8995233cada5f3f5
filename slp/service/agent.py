"""The agent's own service: install, remove and describe it, and let `slp agent start|stop` go through
its manager when it is installed (so the manager stays the one in charge of the agent).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Mapping, Optional

from slp.lifecycle import AgentError, wait_until_ready
from slp.service import flow
from slp.service.base import (
    ENDED_STATES,
    InstallResult,
    ManagerUnavailable,
    ServiceError,
    ServiceManager,
    ServiceStatus,
)
from slp.service.managers import get_manager
from slp.service.spec import build_spec

if TYPE_CHECKING:
    from slp.settings import Settings


def render(settings: "Settings", platform: Optional[str] = None, environ: Optional[Mapping[str, str]] = None,
           executable: Optional[str] = None) -> str:
    """The unit/plist that install would write, as text."""
    manager = get_manager(platform, environ=environ)
    return manager.render(build_spec(settings, environ, executable, platform)).decode()


def install(settings: "Settings", platform: Optional[str] = None, start: bool = True,
            environ: Optional[Mapping[str, str]] = None, executable: Optional[str] = None,
            manager: Optional[ServiceManager] = None,
            before_start: Optional[Callable[[ServiceManager, InstallResult], None]] = None) -> InstallResult:
    """Write the agent's service file (only if it changed) and, with `start`, enable and start it
    (see `flow.install`; the caller waits for readiness with `wait_ready`)."""
    manager = manager or get_manager(platform, environ=environ)
    return flow.install(manager, build_spec(settings, environ, executable, platform), start, before_start)


def uninstall(platform: Optional[str] = None, manager: Optional[ServiceManager] = None,
              environ: Optional[Mapping[str, str]] = None) -> tuple[bool, Optional[str]]:
    """Stop, disable and remove the agent's service. Returns (file removed, why the manager was not reachable)."""
    return flow.uninstall(manager or get_manager(platform, environ=environ))


def status(settings: Optional["Settings"] = None, platform: Optional[str] = None,
           manager: Optional[ServiceManager] = None, environ: Optional[Mapping[str, str]] = None,
           executable: Optional[str] = None) -> ServiceStatus:
    """The agent's service: installed, enabled, active, and (given settings) whether the file is current."""
    manager = manager or get_manager(platform, environ=environ)
    wanted = build_spec(settings, environ, executable, platform) if settings is not None else None
    return flow.status(manager, wanted)


def managed_by_service(platform: Optional[str] = None) -> Optional[str]:
    """"systemd"/"launchd" when the agent's service is installed AND active (running or starting), else None.

    Costs one stat() when no service is installed; otherwise one or two quick manager calls.
    """
    try:
        manager = get_manager(platform)
        return manager.name if manager.running() else None
    except ServiceError:
        return None


def installed_service(platform: Optional[str] = None) -> Optional[str]:
    """"systemd"/"launchd" when the service file is installed and its manager can be driven, else None."""
    try:
        manager = get_manager(platform)
        return manager.name if manager.drivable() else None
    except ServiceError:
        return None


def wait_ready(settings: "Settings", manager: ServiceManager, timeout: float) -> dict:
    """Wait until the service's agent has written its run state and its engine is healthy; return the state.
    The manager is asked whether the service died only while the agent is not healthy, every 2 s.

    Raises ServiceError when the engine failed, the service stopped, or time ran out.
    """

    def ended() -> Optional[str]:
        state = manager.current().state
        return f"the {manager.kind} is {state}; {manager.logs_hint()}" if state in ENDED_STATES else None

    try:
        return wait_until_ready(settings.paths, timeout, ended, name="the service", hint=manager.logs_hint(),
                                engine_failed="the service runs but its engine failed", ended_every=2.0,
                                poll=0.2)
    except AgentError as exc:
        raise ServiceError(str(exc)) from None


def service_start(settings: "Settings", platform: Optional[str] = None, timeout: Optional[float] = None) -> dict:
    """Start the installed service and wait until the engine is ready; return the agent's run state."""
    manager = get_manager(platform)
    if not manager.path.exists():
        raise ServiceError(f"the slp service is not installed ({manager.path}); run `slp service install`")
    reason = manager.unavailable()
    if reason:
        raise ManagerUnavailable(f"cannot start the slp service: {reason}")
    spec = build_spec(settings, platform=platform)
    budget = timeout if timeout is not None else spec.start_timeout + 30
    manager.start(budget)
    return wait_ready(settings, manager, budget)


def service_stop(platform: Optional[str] = None, timeout: Optional[float] = None) -> bool:
    """Stop the service (it stays installed and enabled). True when it was active."""
    manager = get_manager(platform)
    if not manager.running():
        return False
    manager.stop(timeout if timeout is not None else 120)
    return True
