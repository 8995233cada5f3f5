"""The agent as a launchd LaunchAgent: `~/Library/LaunchAgents/dev.slp.agent.plist` in the user's GUI domain.

launchd has no readiness protocol: after `launchctl bootstrap` the caller polls the agent's run state and
/health (slp.service.agent.wait_ready). `KeepAlive={SuccessfulExit: false}` restarts the agent when it
fails, not when it is stopped on purpose (SIGTERM makes it exit 0). stdout/stderr go to slp's agent.log.
"""

from __future__ import annotations

import os
import plistlib
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Optional

from slp.service.base import InstallResult, ServiceError, ServiceManager, ServiceStatus
from slp.service.spec import LAUNCHD_LABEL, ServiceSpec

_NOT_LOADED = (3, 113)  # "No such process", "Could not find service ... in domain"


def plist_dict(spec: ServiceSpec) -> dict:
    return {
        "Label": spec.label,
        "ProgramArguments": list(spec.program),
        "EnvironmentVariables": dict(spec.environment),
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},
        "ThrottleInterval": 5,
        "ExitTimeOut": spec.stop_timeout,
        "ProcessType": "Standard",
        "StandardOutPath": str(spec.agent_log),
        "StandardErrorPath": str(spec.agent_log),
    }


def render_plist(spec: ServiceSpec) -> bytes:
    return plistlib.dumps(plist_dict(spec), fmt=plistlib.FMT_XML, sort_keys=True)


class LaunchdManager(ServiceManager):
    name = "launchd"
    kind = "launchd agent"
    label = LAUNCHD_LABEL  # the job's label and file name (slp.worker's service manager uses its own)

    _unavailable: Optional[str] = None
    _probed = False

    @property
    def path(self) -> Path:
        return self.home / "Library" / "LaunchAgents" / f"{self.label}.plist"

    @property
    def domain(self) -> str:
        return f"gui/{os.getuid()}"

    @property
    def target(self) -> str:
        return f"{self.domain}/{self.label}"

    def render(self, spec: ServiceSpec) -> bytes:
        return render_plist(spec)

    def logs_hint(self) -> str:
        return "see `slp agent logs`"

    # ---------------------------------------------------------------- launchctl

    def _launchctl_path(self) -> Optional[str]:
        return shutil.which("launchctl", path=self.environ.get("PATH"))

    def _run(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
        exe = self._launchctl_path()
        if exe is None:
            raise ServiceError("launchctl not found: this is not macOS")
        try:
            return subprocess.run([exe, *args], capture_output=True, text=True, timeout=timeout,
                                  env=dict(self.environ), stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise ServiceError(f"`launchctl {' '.join(args)}` did not finish within {timeout:.0f}s")
        except OSError as exc:
            raise ServiceError(f"cannot run launchctl: {exc.strerror or exc}")

    def _check(self, *args: str, timeout: float = 30, ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess:
        proc = self._run(*args, timeout=timeout)
        if proc.returncode not in ok:
            text = (proc.stderr or proc.stdout or "").strip().splitlines()
            why = text[-1].strip() if text else f"exit code {proc.returncode}"
            raise ServiceError(f"`launchctl {' '.join(args)}` failed: {why}; {self.logs_hint()}")
        return proc

    def unavailable(self) -> Optional[str]:
        if not self._probed:
            self._probed = True
            if self._launchctl_path() is None:
                self._unavailable = "launchctl not found (launchd agents need macOS)"
            elif self._run("print", self.domain, timeout=10).returncode != 0:
                self._unavailable = (f"no launchd GUI session for this user ({self.domain}); "
                                     "log in on the Mac's desktop, not only over ssh")
        return self._unavailable

    def _print(self) -> Optional[dict[str, str]]:
        """`launchctl print <target>` as key = value pairs (top level), or None when not loaded."""
        proc = self._run("print", self.target, timeout=10)
        if proc.returncode != 0:
            return None
        info: dict[str, str] = {}
        for line in proc.stdout.splitlines():
            match = re.match(r"^\t([a-z][a-z ]*?) = (.*)$", line)
            if match and match.group(1) not in info:
                info[match.group(1)] = match.group(2).strip()
        return info

    def _disabled(self) -> bool:
        proc = self._run("print-disabled", self.domain, timeout=10)
        return bool(re.search(rf'"{re.escape(self.label)}"\s*=>\s*(disabled|true)', proc.stdout))

    def _bootstrap(self) -> None:
        for attempt in range(10):  # right after a bootout launchd may still be unloading the old job
            proc = self._run("bootstrap", self.domain, str(self.path))
            if proc.returncode == 0:
                return
            time.sleep(0.5)
        self._check("bootstrap", self.domain, str(self.path))

    # ---------------------------------------------------------------- verbs

    def activate(self, result: InstallResult, timeout: float) -> None:
        self._check("enable", self.target)
        loaded = self._print() is not None
        if loaded and result.changed:
            self._check("bootout", self.target, ok=(0, *_NOT_LOADED))
            self._bootstrap()
            result.started = result.restarted = True
        elif not loaded:
            self._bootstrap()  # RunAtLoad starts it
            result.started = True
        else:
            self._check("kickstart", self.target)  # starts it if it is not running; no-op otherwise

    def deactivate(self) -> None:
        self._check("bootout", self.target, timeout=120, ok=(0, *_NOT_LOADED))

    def start(self, timeout: float) -> None:
        if self._print() is None:
            self._bootstrap()
        else:
            self._check("kickstart", self.target)

    def stop(self, timeout: float) -> None:
        # SIGTERM: the agent drains and exits 0, which KeepAlive={SuccessfulExit: false} leaves stopped.
        self._check("kill", "SIGTERM", self.target, ok=(0, *_NOT_LOADED))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = self._print()
            if info is None or info.get("state") != "running":
                return
            time.sleep(0.2)
        raise ServiceError(f"the slp launchd agent did not stop within {timeout:.0f}s")

    def query(self, status: ServiceStatus) -> None:
        if self.unavailable():
            status.detail = status.detail or self.unavailable() or ""
            status.enabled, status.active, status.state = None, None, "unknown"
            return
        info = self._print()
        if info is None:
            status.enabled, status.active, status.state = False, False, "not loaded"
            return
        state = info.get("state", "unknown")
        status.state = state
        status.active = state in ("running", "spawn scheduled")
        status.enabled = not self._disabled()
        pid = info.get("pid", "")
        status.pid = int(pid) if pid.isdigit() else None
        last_exit = info.get("last exit code", "")
        if state != "running" and last_exit.split(":")[0].strip() not in ("", "0", "(never exited)"):
            status.state = "failed"  # launchd will respawn it (KeepAlive), but this start did not work
            status.detail = f"not running; last exit code {last_exit}"
