"""The agent as a systemd *user* unit: `~/.config/systemd/user/slp.service` (XDG_CONFIG_HOME respected).

`Type=notify`: the agent sends READY=1 over NOTIFY_SOCKET once its engine has settled (slp.service.notify),
so `systemctl --user start slp` returns when the model is being served. `KillMode=mixed` lets the agent
drain requests and stop its engine itself on SIGTERM; whatever is left gets SIGKILL at TimeoutStopSec.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Optional

from slp.service.base import InstallResult, ServiceError, ServiceManager, ServiceStatus
from slp.service.spec import SERVICE_NAME, ServiceSpec

_SAFE = re.compile(r"[A-Za-z0-9_@+=:,./-]+")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def quote(value: str, exec_arg: bool = False) -> str:
    """One word for a unit file: `%` doubled (specifiers), `$` doubled in command-line arguments (variable
    expansion), and double quotes with C escapes whenever the word holds anything but plain characters."""
    if "\0" in value:
        raise ServiceError("a value for the unit contains a NUL byte")
    value = value.replace("%", "%%")
    if exec_arg:
        value = value.replace("$", "$$")
    if _SAFE.fullmatch(value):
        return value
    out = []
    for ch in value:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


AGENT_COMMENTS = (
    "# slp agent as a systemd user service. Written by `slp service install`: change settings, then run it",
    "# again (or `slp service uninstall`). Logs: journalctl --user -u slp (engine: slp agent logs --engine).",
)
AGENT_DESCRIPTION = "slp local LLM agent (supervises llama.cpp's llama-server)"


def render_unit(spec: ServiceSpec, comments: tuple[str, ...] = AGENT_COMMENTS,
                description: str = AGENT_DESCRIPTION, identifier: str = "slp", journal: bool = True) -> str:
    """The unit file for `spec` (the agent's by default; an RPC worker passes its own words).
    `journal` names the journal as stdout/stderr explicitly (the agent's unit always has)."""
    python = spec.program[0]
    if any(ch in python for ch in "\"'\\") or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in python):
        raise ServiceError(f"systemd cannot run an executable whose path has quotes, backslashes or control "
                           f"characters: {python!r}; install slp in a virtual environment at a plainer path")
    # The executable itself gets no `$$`: systemd checks and runs that path without variable expansion.
    exec_start = " ".join(quote(arg, exec_arg=i > 0) for i, arg in enumerate(spec.program))
    env_lines = [f"Environment={quote(f'{name}={value}')}" for name, value in spec.environment.items()
                 if _ENV_NAME.fullmatch(name)]
    lines = [
        *comments,
        "[Unit]",
        f"Description={description}",
        "StartLimitIntervalSec=300",
        "StartLimitBurst=5",
        "",
        "[Service]",
        "Type=notify",
        "NotifyAccess=main",
        f"ExecStart={exec_start}",
        *env_lines,
        "Restart=on-failure",
        "RestartSec=2",
        f"TimeoutStartSec={spec.start_timeout}",
        f"TimeoutStopSec={spec.stop_timeout}",
        "KillMode=mixed",
        *(["StandardOutput=journal", "StandardError=journal"] if journal else []),
        f"SyslogIdentifier={identifier}",
        "",
        "[Install]",
        "WantedBy=default.target",
        "",
    ]
    return "\n".join(lines)


def _first_line(text: str) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[0] if lines else ""


class SystemdManager(ServiceManager):
    name = "systemd"
    kind = "systemd user unit"
    unit = SERVICE_NAME  # the unit file's name (slp.worker's service manager uses its own)

    _unavailable: Optional[str] = None
    _probed = False

    @property
    def unit_dir(self) -> Path:
        xdg = self.environ.get("XDG_CONFIG_HOME")
        base = Path(xdg) if xdg and Path(xdg).is_absolute() else self.home / ".config"
        return base / "systemd" / "user"

    @property
    def path(self) -> Path:
        return self.unit_dir / self.unit

    @property
    def wants_link(self) -> Path:
        return self.unit_dir / "default.target.wants" / self.unit

    def render(self, spec: ServiceSpec) -> bytes:
        return render_unit(spec).encode()

    def logs_hint(self) -> str:
        return "see `journalctl --user -u slp` or `slp agent logs`"

    # ---------------------------------------------------------------- systemctl

    def _systemctl_path(self) -> Optional[str]:
        return shutil.which("systemctl", path=self.environ.get("PATH"))

    def _run(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
        exe = self._systemctl_path()
        if exe is None:
            raise ServiceError("systemctl not found: this system does not run systemd")
        try:
            return subprocess.run([exe, "--user", *args], capture_output=True, text=True, timeout=timeout,
                                  env=dict(self.environ), stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise ServiceError(f"`systemctl --user {' '.join(args)}` did not finish within {timeout:.0f}s; "
                               f"{self.logs_hint()}")
        except OSError as exc:
            raise ServiceError(f"cannot run systemctl: {exc.strerror or exc}")

    def _check(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
        proc = self._run(*args, timeout=timeout)
        if proc.returncode != 0:
            why = _first_line(proc.stderr) or _first_line(proc.stdout) or f"exit code {proc.returncode}"
            raise ServiceError(f"`systemctl --user {' '.join(args)}` failed: {why.rstrip('.')}; {self.logs_hint()}")
        return proc

    def unavailable(self) -> Optional[str]:
        if not self._probed:
            self._probed = True
            if self._systemctl_path() is None:
                self._unavailable = "systemctl not found (this system does not run systemd)"
            else:
                proc = self._run("show-environment", timeout=10)
                if proc.returncode != 0:
                    why = _first_line(proc.stderr) or f"exit code {proc.returncode}"
                    self._unavailable = f"no systemd user instance is reachable ({why.rstrip('.')})"
        return self._unavailable

    def _show(self) -> dict[str, str]:
        proc = self._run("show", self.unit, "-p", "ActiveState", "-p", "SubState", "-p", "MainPID",
                         "-p", "StatusText", "-p", "UnitFileState", timeout=10)
        if proc.returncode != 0:
            return {}
        props = {}
        for line in proc.stdout.splitlines():
            key, sep, value = line.partition("=")
            if sep:
                props[key] = value
        return props

    # ---------------------------------------------------------------- verbs

    def activate(self, result: InstallResult, timeout: float) -> None:
        if result.changed:
            self._check("daemon-reload")
        active = self._show().get("ActiveState") in ("active", "activating", "reloading")
        if active and result.changed:
            self._check("enable", self.unit)
            self._check("restart", self.unit, timeout=timeout)  # returns once READY=1 arrives
            result.started = result.restarted = True
        elif not active:
            self._check("enable", "--now", self.unit, timeout=timeout)
            result.started = True
        else:
            self._check("enable", self.unit)

    def deactivate(self) -> None:
        if self.path.exists():
            self._check("disable", "--now", self.unit, timeout=120)
        else:
            self._run("stop", self.unit, timeout=120)  # a unit still loaded from a removed file

    def after_remove(self, reachable: bool) -> None:
        if self.wants_link.is_symlink():  # left when the manager could not disable it
            self.wants_link.unlink(missing_ok=True)
        if reachable:
            self._run("daemon-reload")
            self._run("reset-failed", self.unit)

    def start(self, timeout: float) -> None:
        self._check("start", self.unit, timeout=timeout)

    def stop(self, timeout: float) -> None:
        self._check("stop", self.unit, timeout=timeout)

    def query(self, status: ServiceStatus) -> None:
        if self.unavailable():
            status.detail = status.detail or self.unavailable() or ""
            status.enabled = self._enabled_offline()
            status.active, status.state = None, "unknown"
            return
        props = self._show()
        active_state = props.get("ActiveState", "unknown")
        sub = props.get("SubState")
        status.state = f"{active_state} ({sub})" if sub and sub != active_state else active_state
        status.active = active_state in ("active", "activating", "reloading")
        status.enabled = props.get("UnitFileState") in ("enabled", "enabled-runtime", "linked", "linked-runtime")
        pid = props.get("MainPID", "0")
        status.pid = int(pid) if pid.isdigit() and int(pid) > 0 else None
        status.detail = props.get("StatusText", "")
        if active_state in ("failed", "inactive"):
            status.state = active_state

    def _enabled_offline(self) -> Optional[bool]:
        if self._systemctl_path() is not None:
            proc = self._run("is-enabled", self.unit, timeout=10)
            word = proc.stdout.strip()
            if word:
                return word in ("enabled", "enabled-runtime", "linked", "linked-runtime")
        return self.wants_link.is_symlink()
