"""What every service manager (systemd, launchd) offers: its errors, its answers, and the base class each
platform fills in. Writing, reading and removing the service file is done here, once for all of them.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional

from slp.service.spec import ServiceSpec


class ServiceError(Exception):
    """A user-facing failure: one line that says what went wrong and what to do."""


class ManagerUnavailable(ServiceError):
    """The service manager cannot be reached (no systemd user instance, no launchd GUI session...)."""


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


# The manager's words for a service that is not running and will not become ready by waiting.
ENDED_STATES = ("failed", "inactive", "not loaded", "exited")


class ServiceManager:
    """One platform's way of installing and driving a service (the agent's, or a worker's)."""

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

    # ---------------------------------------------------------------- is it running

    def drivable(self) -> bool:
        """The service file is installed and the manager can be driven now (one stat() when it is not)."""
        return self.path.exists() and not self.unavailable()

    def current(self) -> ServiceStatus:
        """The manager's word on the installed service now (one or two quick manager calls)."""
        status = ServiceStatus(manager=self.name, path=self.path, installed=True)
        self.query(status)
        return status

    def running(self) -> bool:
        """The service is installed and active (running or starting)."""
        return self.drivable() and bool(self.current().active)

    # ---------------------------------------------------------------- the file

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
