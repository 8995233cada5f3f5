"""Run the agent under the platform's service manager: a systemd user unit (Linux) or a launchd
LaunchAgent (macOS).

`install()` writes the unit for *this* interpreter and *this* environment's SLP_* settings (rewriting it
only when it changed) and starts it; `uninstall()` stops and removes it; `status()` says whether it is
installed, enabled and active. `managed_by_service()`, `service_start()` and `service_stop()` let
`slp agent start|stop` go through the service manager when the service is installed.

The platform is an argument everywhere (default: `sys.platform`) so both generators are testable on any
OS. This package's `__init__` stays light: `slp.service.notify` is imported by the running agent.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, Optional

if TYPE_CHECKING:
    from slp.settings import Settings

SERVICE_NAME = "slp.service"
LAUNCHD_LABEL = "dev.slp.agent"

# Time the agent may take to start before the manager gives up: fetching the default model (pip, ~100 MB)
# plus every engine attempt the supervisor makes before it settles (ready, or failed for good).
MODEL_FETCH_ALLOWANCE = 900.0
STOP_MARGIN = 10.0  # on top of the agent's drain grace and the engine's SIGTERM grace

# Path-valued variables: made absolute, since a service does not start in the caller's directory.
_PATH_SUFFIXES = ("_HOME", "_DIR", "_BIN", "_CACHE", "_PATH", "_FILE")
# platformdirs (Linux) reads these: the service must see the same config/data/log/cache dirs as the CLI.
_XDG_VARS = ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME")
_SECRET_VARS = ("SLP_API_KEY",)


class ServiceError(Exception):
    """A user-facing failure: one line that says what went wrong and what to do."""


class ManagerUnavailable(ServiceError):
    """The service manager cannot be reached (no systemd user instance, no launchd GUI session...)."""


@dataclass
class ServiceSpec:
    """What any service manager needs to run the agent."""

    program: list[str]
    environment: dict[str, str]
    agent_log: Path
    start_timeout: int  # seconds
    stop_timeout: int  # seconds
    label: str = LAUNCHD_LABEL  # launchd's job label

    @property
    def has_secrets(self) -> bool:
        return any(name.upper() in _SECRET_VARS for name in self.environment)


@dataclass
class ServiceStatus:
    manager: str  # "systemd" or "launchd"
    path: Path
    installed: bool
    up_to_date: Optional[bool] = None  # installed file == what install would write now
    enabled: Optional[bool] = None  # None: unknown
    active: Optional[bool] = None  # None: unknown (manager unreachable)
    state: str = "unknown"  # the manager's word: active, inactive, failed, running, not loaded...
    pid: Optional[int] = None
    detail: str = ""  # STATUS= text, or why the manager cannot be asked


@dataclass
class InstallResult:
    path: Path
    changed: bool  # the file was written (new or different)
    started: bool = False  # the manager was asked to (re)start the service
    restarted: bool = False  # it was running with the old file and was restarted
    notes: list[str] = field(default_factory=list)


def _platform(platform: Optional[str]) -> str:
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
    if not _platform(platform).startswith("darwin"):
        for name in _XDG_VARS:
            value = environ.get(name)
            if value and os.path.isabs(value):  # the XDG spec ignores relative values
                env[name] = value
    env["PYTHONUNBUFFERED"] = "1"
    return env


def build_spec(settings: "Settings", environ: Optional[Mapping[str, str]] = None,
               executable: Optional[str] = None, platform: Optional[str] = None) -> ServiceSpec:
    from slp.server.preflight import SHUTDOWN_GRACE

    python = os.path.abspath(executable or sys.executable)  # not resolved: a venv's python is a symlink
    start = MODEL_FETCH_ALLOWANCE + (settings.max_restarts + 1) * (settings.start_timeout + 5)
    stop = SHUTDOWN_GRACE + settings.stop_grace + STOP_MARGIN
    return ServiceSpec(program=[python, "-m", "slp.server"],  # the agent alone, without the CLI
                       environment=service_environment(environ, platform),
                       agent_log=settings.paths.agent_log,
                       start_timeout=int(math.ceil(start)), stop_timeout=int(math.ceil(stop)))


class ServiceManager:
    """One platform's way of installing and driving the agent's service."""

    name = "?"
    kind = "service"  # words for messages: "systemd user unit", "launchd agent"

    def __init__(self, home: Optional[Path] = None, environ: Optional[Mapping[str, str]] = None):
        self.environ = os.environ if environ is None else environ
        self.home = Path(home) if home is not None else Path(self.environ.get("HOME") or Path.home())

    # ---------------------------------------------------------------- to implement

    @property
    def path(self) -> Path:
        raise NotImplementedError

    def render(self, spec: ServiceSpec) -> bytes:
        raise NotImplementedError

    def unavailable(self) -> Optional[str]:
        """None when the manager can be driven now, else a short reason."""
        raise NotImplementedError

    def activate(self, result: InstallResult, timeout: float) -> None:
        """Load the (possibly new) file and enable + start the service."""
        raise NotImplementedError

    def deactivate(self) -> None:
        """Stop and disable the service (the file is removed afterwards)."""
        raise NotImplementedError

    def after_remove(self, reachable: bool) -> None:
        """Tidy up once the file is gone (daemon-reload, dangling enable links)."""

    def start(self, timeout: float) -> None:
        raise NotImplementedError

    def stop(self, timeout: float) -> None:
        raise NotImplementedError

    def query(self, status: ServiceStatus) -> None:
        """Fill enabled/active/state/pid/detail (the file is known to exist)."""
        raise NotImplementedError

    def logs_hint(self) -> str:
        return "see `slp agent logs`"

    # ---------------------------------------------------------------- shared

    def read(self) -> Optional[bytes]:
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ServiceError(f"cannot read {self.path}: {exc.strerror or exc}")

    def write(self, content: bytes, private: bool) -> bool:
        """Write the file atomically if its content differs; True when written."""
        if self.read() == content:
            return False
        folder = self.path.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{self.path.name}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(content)
                os.chmod(tmp, 0o600 if private else 0o644)
                os.replace(tmp, self.path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise ServiceError(f"cannot write {self.path}: {exc.strerror or exc}")
        return True

    def remove(self) -> bool:
        try:
            self.path.unlink()
            return True
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise ServiceError(f"cannot remove {self.path}: {exc.strerror or exc}")


def get_manager(platform: Optional[str] = None, home: Optional[Path] = None,
                environ: Optional[Mapping[str, str]] = None) -> ServiceManager:
    """The service manager for `platform` (default: this one)."""
    name = _platform(platform)
    if name.startswith("linux"):
        from slp.service.systemd import SystemdManager

        return SystemdManager(home, environ)
    if name.startswith("darwin"):
        from slp.service.launchd import LaunchdManager

        return LaunchdManager(home, environ)
    raise ServiceError(f"slp service supports Linux (systemd) and macOS (launchd), not {name}")


def render(settings: "Settings", platform: Optional[str] = None, environ: Optional[Mapping[str, str]] = None,
           executable: Optional[str] = None) -> str:
    """The unit/plist that install would write, as text."""
    manager = get_manager(platform, environ=environ)
    return manager.render(build_spec(settings, environ, executable, platform)).decode()


def install(settings: "Settings", platform: Optional[str] = None, start: bool = True,
            environ: Optional[Mapping[str, str]] = None, executable: Optional[str] = None,
            manager: Optional[ServiceManager] = None,
            before_start: Optional[Callable[[ServiceManager, InstallResult], None]] = None) -> InstallResult:
    """Write the service file (only if it changed) and, with `start`, enable and start the service.

    Raises ManagerUnavailable (after writing the file) when the manager cannot be reached.
    `before_start(manager, result)` runs once the manager is known reachable, before it is asked to
    start (the CLI fetches the model there, with a progress bar, and stops a non-service agent).
    """
    manager = manager or get_manager(platform, environ=environ)
    spec = build_spec(settings, environ, executable, platform)
    from slp.settings import ensure_private_dir

    ensure_private_dir(spec.agent_log.parent)  # launchd opens StandardOutPath there; the agent logs there
    result = InstallResult(path=manager.path, changed=manager.write(manager.render(spec), spec.has_secrets))
    if not start:
        return result
    reason = manager.unavailable()
    if reason:
        raise ManagerUnavailable(f"wrote {manager.path}, but could not start it: {reason} "
                                 "(use --no-start to only write it, or run `slp agent start`)")
    if before_start is not None:
        before_start(manager, result)
    manager.activate(result, timeout=spec.start_timeout + 30)
    return result


def uninstall(platform: Optional[str] = None, manager: Optional[ServiceManager] = None,
              environ: Optional[Mapping[str, str]] = None) -> tuple[bool, Optional[str]]:
    """Stop, disable and remove the service. Returns (file removed, why the manager was not reachable)."""
    manager = manager or get_manager(platform, environ=environ)
    reason = manager.unavailable()
    if reason is None:
        manager.deactivate()
    removed = manager.remove()
    manager.after_remove(reachable=reason is None)
    return removed, reason


def status(settings: Optional["Settings"] = None, platform: Optional[str] = None,
           manager: Optional[ServiceManager] = None, environ: Optional[Mapping[str, str]] = None,
           executable: Optional[str] = None) -> ServiceStatus:
    manager = manager or get_manager(platform, environ=environ)
    current = manager.read()
    result = ServiceStatus(manager=manager.name, path=manager.path, installed=current is not None)
    if current is None:
        result.enabled, result.active, result.state = False, False, "not installed"
        return result
    if settings is not None:
        result.up_to_date = current == manager.render(build_spec(settings, environ, executable, platform))
    reason = manager.unavailable()
    if reason:
        result.detail = reason
    manager.query(result)
    return result


def managed_by_service(platform: Optional[str] = None) -> Optional[str]:
    """"systemd"/"launchd" when the agent's service is installed AND active (running or starting), else None.

    Costs one stat() when no service is installed; otherwise one or two quick manager calls.
    """
    try:
        manager = get_manager(platform)
        if not manager.path.exists() or manager.unavailable():
            return None
        result = ServiceStatus(manager=manager.name, path=manager.path, installed=True)
        manager.query(result)
    except ServiceError:
        return None
    return manager.name if result.active else None


def installed_service(platform: Optional[str] = None) -> Optional[str]:
    """"systemd"/"launchd" when the service file is installed and its manager can be driven, else None."""
    try:
        manager = get_manager(platform)
        if manager.path.exists() and not manager.unavailable():
            return manager.name
    except ServiceError:
        pass
    return None


def wait_ready(settings: "Settings", manager: ServiceManager, timeout: float) -> dict:
    """Wait until the service's agent has written its run state and its engine is healthy; return the state.

    Raises ServiceError when the engine failed, the service stopped, or time ran out.
    """
    from slp.runstate import agent_health, live_state

    deadline = time.monotonic() + timeout
    checked = 0.0
    while True:
        state = live_state(settings.paths)
        if state and state.get("url"):
            code, body = agent_health(state["url"])
            if code == 200:
                return state
            engine = body.get("engine") if isinstance(body, dict) else None
            if isinstance(engine, dict) and engine.get("state") == "failed":
                raise ServiceError(f"the service runs but its engine failed: {engine.get('reason')}; "
                                   "see `slp agent logs --engine`")
        now = time.monotonic()
        if now - checked > 2:  # ask the manager now and then whether the service died
            checked = now
            probe = ServiceStatus(manager=manager.name, path=manager.path, installed=True)
            manager.query(probe)
            if probe.state in ("failed", "inactive", "not loaded", "exited"):
                raise ServiceError(f"the {manager.kind} is {probe.state}; {manager.logs_hint()}")
        if now >= deadline:
            raise ServiceError(f"the service did not become ready within {timeout:.0f}s; {manager.logs_hint()}")
        time.sleep(0.2)


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
    if not manager.path.exists() or manager.unavailable():
        return False
    probe = ServiceStatus(manager=manager.name, path=manager.path, installed=True)
    manager.query(probe)
    if not probe.active:
        return False
    manager.stop(timeout if timeout is not None else 120)
    return True

