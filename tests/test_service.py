"""`slp service`: the systemd unit and launchd plist, sd_notify, install/uninstall/status.

No test here talks to a real service manager: the container and CI have no systemd user instance, so the
unit is checked with `systemd-analyze verify`, systemctl is faked where a running manager is needed, and
readiness is checked against a real agent sending to a real notify socket (its engine is the stand-in,
tests/standin_engine.py, named as such: READY=1 follows the agent's own view of its engine's health).
"""

from __future__ import annotations

import os
import plistlib
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from conftest import SLP, kill_all_under, make_standin_agent

from slp.lifecycle import SHUTDOWN_GRACE
from slp.service import (
    LAUNCHD_LABEL,
    ManagerUnavailable,
    ServiceError,
    ServiceStatus,
    build_spec,
    install,
    managed_by_service,
    render,
    service_environment,
    uninstall,
    wait_ready,
)
from slp.service.launchd import LaunchdManager
from slp.service.notify import ServiceNotifier, notify
from slp.service.systemd import SystemdManager, quote
from slp.settings import Settings

FOREGROUND = [sys.executable, "-m", "slp.server"]


def unit_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def no_bus_env(**extra: str) -> dict:
    """os.environ without any way to reach a systemd user instance (as in CI), plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in ("DBUS_SESSION_BUS_ADDRESS", "XDG_RUNTIME_DIR")}
    env.update(extra)
    return env


# ------------------------------------------------------------------------------------------ the unit


@pytest.fixture
def odd_env(tmp_path, monkeypatch):
    """SLP_* settings with characters systemd treats specially: spaces, %, $, quotes, backslashes."""
    home = tmp_path / "slp home %i $USER"
    monkeypatch.setenv("SLP_HOME", str(home))
    monkeypatch.setenv("SLP_PORT", "41234")
    monkeypatch.setenv("SLP_HOST", "127.0.0.1")
    monkeypatch.setenv("SLP_ENGINE_BIN", str(tmp_path / 'bin "q" \\ llama-server'))
    monkeypatch.setenv("SLP_API_KEY", 'k"e$y\\%Q')
    return home


def test_unit_passes_systemd_analyze_verify(tmp_path, odd_env):
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: apt-get install -y systemd (Debian's package provides it)"
    text = render(Settings(), platform="linux")
    unit = tmp_path / "unit" / "slp.service"
    unit.parent.mkdir()
    unit.write_text(text)
    proc = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    # verify exits 0 even when it ignores a bad line: any output at all is a failure.
    assert proc.returncode == 0 and not proc.stdout.strip() and not proc.stderr.strip(), \
        f"systemd-analyze verify complained:\n{proc.stdout}{proc.stderr}\n---\n{text}"


def test_unit_with_odd_interpreter_path_passes_verify(tmp_path, odd_env):
    """Specifiers and quotes in ExecStart's path are escaped (an unescaped %Q makes verify fail)."""
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: apt-get install -y systemd"
    folder = tmp_path / "py $x %Q dir"
    folder.mkdir()
    python = folder / "python"
    python.symlink_to(sys.executable)
    text = render(Settings(), platform="linux", executable=str(python))
    unit = tmp_path / "slp.service"
    unit.write_text(text)
    proc = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and not (proc.stdout + proc.stderr).strip(), f"{proc.stdout}{proc.stderr}\n{text}"
    assert f"ExecStart={quote(str(python))} -m slp.server" in text
    assert "%%Q dir/python" in text and "$$" not in text  # no $$: systemd does not expand the path
    # systemd refuses quotes and backslashes in an executable's path whatever the quoting: say so up front.
    with pytest.raises(ServiceError, match="quotes, backslashes"):
        render(Settings(), platform="linux", executable=str(tmp_path / 'a "b"' / "python"))


def test_unit_content(odd_env, monkeypatch):
    settings = Settings()
    lines = unit_lines(render(settings, platform="linux"))
    for expected in ("[Unit]", "[Service]", "Type=notify", "NotifyAccess=main", "Restart=on-failure",
                     "RestartSec=2", "KillMode=mixed", "StandardOutput=journal", "StandardError=journal",
                     "[Install]", "WantedBy=default.target"):
        assert expected in lines
    assert f"ExecStart={' '.join(FOREGROUND)}" in lines  # the venv's interpreter, not a resolved one
    values = dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("Environment="))
    assert int(values["TimeoutStopSec"]) >= SHUTDOWN_GRACE + settings.stop_grace
    assert int(values["TimeoutStartSec"]) >= settings.start_timeout + 600  # engine start + model fetch
    env = [line for line in lines if line.startswith("Environment=")]
    assert f"Environment={quote('SLP_HOME=' + os.environ['SLP_HOME'])}" in env
    assert "Environment=SLP_PORT=41234" in env and "Environment=SLP_HOST=127.0.0.1" in env
    assert any(line.startswith('Environment="SLP_MODELS_DIR=') or line.startswith("Environment=SLP_MODELS_DIR=")
               for line in env)
    assert 'Environment="SLP_API_KEY=k\\"e$y\\\\%%Q"' in env


def test_systemd_quoting():
    assert quote("plain/path-1.0") == "plain/path-1.0"
    assert quote("a b") == '"a b"'
    assert quote("100%") == '"100%%"'
    assert quote("$HOME", exec_arg=True) == '"$$HOME"'
    assert quote("$HOME") == '"$HOME"'  # Environment= does not expand variables
    assert quote('say "hi"\\\n') == '"say \\"hi\\"\\\\\\n"'


def test_environment_is_absolute_and_slp_only(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    env = service_environment({"SLP_HOME": "rel/home", "SLP_MODELS_DIR": "~/models", "SLP_PORT": "1",
                               "PATH": "/bin", "XDG_CONFIG_HOME": "/cfg", "XDG_DATA_HOME": "relative",
                               "HOME": "/home/u"}, platform="linux")
    assert env["SLP_HOME"] == str(tmp_path / "rel" / "home")
    assert env["SLP_MODELS_DIR"] == os.path.expanduser("~/models")
    assert env["SLP_PORT"] == "1" and env["XDG_CONFIG_HOME"] == "/cfg"
    assert "PATH" not in env and "HOME" not in env and "XDG_DATA_HOME" not in env
    assert "XDG_CONFIG_HOME" not in service_environment({"XDG_CONFIG_HOME": "/cfg"}, platform="darwin")


# ------------------------------------------------------------------------------------------ the plist


def test_plist_round_trips(odd_env):
    settings = Settings()
    text = render(settings, platform="darwin")
    plist = plistlib.loads(text.encode())
    assert plist["Label"] == LAUNCHD_LABEL == "dev.slp.agent"
    assert plist["ProgramArguments"] == FOREGROUND
    assert plist["RunAtLoad"] is True
    assert plist["KeepAlive"] == {"SuccessfulExit": False}
    log = str(settings.paths.agent_log)
    assert plist["StandardOutPath"] == log and plist["StandardErrorPath"] == log
    assert str(settings.paths.log_dir) in log
    env = plist["EnvironmentVariables"]
    assert env["SLP_HOME"] == os.environ["SLP_HOME"] and env["SLP_PORT"] == "41234"
    assert env["SLP_API_KEY"] == os.environ["SLP_API_KEY"] and env["SLP_ENGINE_BIN"] == os.environ["SLP_ENGINE_BIN"]
    assert plist["ExitTimeOut"] >= SHUTDOWN_GRACE + settings.stop_grace
    assert plistlib.dumps(plist, sort_keys=True).decode() == text


def test_launchd_install_uninstall_on_linux(tmp_path):
    manager = LaunchdManager(home=tmp_path / "home", environ=no_bus_env(PATH="/nonexistent"))
    path = tmp_path / "home" / "Library" / "LaunchAgents" / "dev.slp.agent.plist"
    result = install(Settings(), platform="darwin", start=False, manager=manager)
    assert result.path == path and result.changed and path.exists()
    assert plistlib.loads(path.read_bytes())["Label"] == LAUNCHD_LABEL
    assert (Path(os.environ["SLP_HOME"]) / "logs").is_dir()  # launchd needs StandardOutPath's folder
    with pytest.raises(ManagerUnavailable, match="launchctl not found"):
        install(Settings(), platform="darwin", manager=manager)
    assert uninstall(manager=manager) == (True, manager.unavailable())
    assert not path.exists()


# ------------------------------------------------------------------------------------------ sd_notify


def recv(sock: socket.socket, timeout: float) -> str:
    sock.settimeout(timeout)
    return sock.recv(4096).decode()


def test_notify_path_socket(tmp_path, monkeypatch):
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert notify(READY=1, STATUS="engine ready:\nmodel x")
        assert recv(server, 5).split("\n") == ["READY=1", "STATUS=engine ready: model x"]


def test_notify_abstract_socket(monkeypatch):
    name = f"slp-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert notify(READY=1)
        assert recv(server, 5) == "READY=1"


def test_notify_is_a_quiet_no_op_without_a_socket(tmp_path, monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify(READY=1) is False
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    assert notify(READY=1) is False
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    assert notify(READY=1) is False  # logged, never raised
    assert not ServiceNotifier(socket_path="").enabled


def test_notifier_sends_ready_once_then_status_and_stopping(tmp_path):
    path = tmp_path / "n"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        notifier = ServiceNotifier(str(path))
        notifier.engine_changed("starting", "starting model")
        assert recv(server, 5) == "STATUS=engine starting: starting model"
        notifier.engine_changed("ready", "serving model")
        assert recv(server, 5) == "READY=1\nSTATUS=engine ready: serving model"
        notifier.engine_changed("restarting", "crash")
        notifier.engine_changed("ready", "serving model")
        assert recv(server, 5) == "STATUS=engine restarting: crash"
        assert recv(server, 5) == "STATUS=engine ready: serving model"  # READY=1 only once
        notifier.stopping()
        assert recv(server, 5).startswith("STOPPING=1\nSTATUS=")


def test_agent_notifies_ready_after_health_then_stopping(tmp_path, default_model):
    agent = make_standin_agent(tmp_path / "standin")
    sock_path = tmp_path / "notify.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(sock_path))
    log = (tmp_path / "agent.out").open("wb")
    proc = subprocess.Popen(FOREGROUND, env={**agent.env, "NOTIFY_SOCKET": str(sock_path)},
                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        messages: list[str] = []
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0 and proc.poll() is None, \
                f"no READY=1 (agent rc {proc.poll()}); got {messages}; see {tmp_path / 'agent.out'}"
            try:
                message = recv(server, min(remaining, 5))
            except socket.timeout:
                continue
            messages.append(message)
            if "READY=1" in message.split("\n"):
                break
        with urllib.request.urlopen(agent.url + "/health", timeout=10) as resp:  # ready means healthy
            assert resp.status == 200
        assert any(line.startswith("STATUS=engine ready") for line in message.split("\n")), message
        assert all("READY=1" not in m for m in messages[:-1])

        # The CLI's readiness wait agrees (it asks the manager only when the agent is not healthy).
        class NoManager:
            name, kind, path = "test", "test service", tmp_path

            def logs_hint(self) -> str:
                return "see the test's agent.out"

            def current(self) -> ServiceStatus:
                raise AssertionError("asked the manager although the agent is healthy")

        state = wait_ready(Settings(home=agent.home), NoManager(), 10)  # type: ignore[arg-type]
        assert state["agent_pid"] == proc.pid and state["url"] == agent.url

        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        while True:
            assert time.monotonic() < deadline, f"no STOPPING=1 after SIGTERM; got {messages}"
            message = recv(server, 30)
            messages.append(message)
            if "STOPPING=1" in message.split("\n"):
                break
        assert proc.wait(SHUTDOWN_GRACE + 20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        kill_all_under(agent.home)
        server.close()
        log.close()


# ------------------------------------------------------------------------------------------ install


def run_slp(*args: str, env: dict, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*SLP, *args], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def fake_home(tmp_path):
    home, config = tmp_path / "home", tmp_path / "xdg-config"
    home.mkdir()
    env = no_bus_env(HOME=str(home), XDG_CONFIG_HOME=str(config))
    return env, config / "systemd" / "user" / "slp.service"


def test_cli_install_no_start_is_idempotent_and_uninstall_removes(fake_home):
    env, unit = fake_home
    printed = run_slp("service", "install", "--print", env=env)
    assert printed.returncode == 0 and not unit.exists()
    assert "Type=notify" in printed.stdout

    first = run_slp("service", "install", "--no-start", env=env)
    assert first.returncode == 0, first.stderr
    assert unit.read_text() == printed.stdout
    assert f"XDG_CONFIG_HOME={env['XDG_CONFIG_HOME']}" in printed.stdout  # the service sees the same dirs
    mtime = unit.stat().st_mtime_ns
    second = run_slp("service", "install", "--no-start", env=env)
    assert second.returncode == 0 and "unchanged" in second.stdout
    assert unit.stat().st_mtime_ns == mtime

    status = run_slp("service", "status", env=env)
    assert "installed: yes" in status.stdout and "up to date" in status.stdout
    assert status.returncode == 1  # not active: no manager here
    moved = run_slp("service", "status", env={**env, "SLP_PORT": "40001"})
    assert "differs" in moved.stdout

    removed = run_slp("service", "uninstall", env=env)
    assert removed.returncode == 0 and "removed" in removed.stdout, removed.stderr
    assert not unit.exists()
    again = run_slp("service", "uninstall", env=env)
    assert again.returncode == 0 and "not installed" in again.stdout
    status = run_slp("service", "status", env=env)
    assert status.returncode == 1 and "installed: no" in status.stdout


def test_cli_install_without_user_bus_fails_in_one_line(fake_home):
    env, unit = fake_home
    proc = run_slp("service", "install", env=env)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith(f"Error: wrote {unit}, but could not start it: "), lines[0]
    assert unit.exists()  # written anyway; `--no-start` is the quiet way to do this


def test_cli_unsupported_platform_is_one_line(fake_home):
    env, _ = fake_home
    proc = run_slp("service", "install", "--print", "--platform", "win32", env=env)
    assert proc.returncode == 1 and proc.stderr.strip().count("\n") == 0
    assert "supports Linux (systemd) and macOS (launchd)" in proc.stderr and "Traceback" not in proc.stderr


FAKE_SYSTEMCTL = """#!/bin/sh
echo "$*" >> "$FAKE_LOG"
case "$*" in
  "--user show-environment") exit 0 ;;
  "--user show slp.service"*)
    echo "ActiveState=$(cat "$FAKE_STATE")"; echo "SubState=running"; echo "MainPID=4242"
    echo "StatusText=engine ready: fake"; echo "UnitFileState=enabled" ;;
  "--user enable --now slp.service"|"--user start slp.service"|"--user restart slp.service")
    echo active > "$FAKE_STATE" ;;
  "--user disable --now slp.service"|"--user stop slp.service") echo inactive > "$FAKE_STATE" ;;
esac
exit 0
"""


@pytest.fixture
def fake_systemctl(tmp_path, monkeypatch):
    """A systemctl that records its arguments and keeps an ActiveState; the environment points at it."""
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    script = bin_dir / "systemctl"
    script.write_text(FAKE_SYSTEMCTL)
    script.chmod(0o755)
    log, state = tmp_path / "systemctl.log", tmp_path / "systemctl.state"
    state.write_text("inactive\n")
    home, config = tmp_path / "home", tmp_path / "xdg-config"
    for name, value in (("PATH", f"{bin_dir}:{os.environ['PATH']}"), ("HOME", str(home)),
                        ("XDG_CONFIG_HOME", str(config)), ("FAKE_LOG", str(log)), ("FAKE_STATE", str(state))):
        monkeypatch.setenv(name, value)

    def calls() -> list[str]:
        lines = log.read_text().splitlines() if log.exists() else []
        log.write_text("")
        return [line.removeprefix("--user ") for line in lines if "show-environment" not in line]

    return config / "systemd" / "user" / "slp.service", calls


def test_install_drives_systemctl_only_as_needed(fake_systemctl, monkeypatch):
    unit, calls = fake_systemctl
    assert managed_by_service("linux") is None  # nothing installed: no systemctl call at all
    assert calls() == []

    first = install(Settings(), platform="linux", manager=SystemdManager())
    assert first.changed and first.started and unit.exists()
    made = calls()
    assert made[0] == "daemon-reload" and made[-1] == "enable --now slp.service"
    assert managed_by_service("linux") == "systemd"

    calls()
    again = install(Settings(), platform="linux", manager=SystemdManager())
    assert not again.changed and not again.started
    made = calls()
    assert "daemon-reload" not in made and not any(c.startswith(("restart", "enable --now")) for c in made)

    monkeypatch.setenv("SLP_PORT", "40002")  # a changed setting: rewritten, reloaded, restarted
    changed = install(Settings(), platform="linux", manager=SystemdManager())
    assert changed.changed and changed.restarted
    made = calls()
    assert made[0] == "daemon-reload" and "restart slp.service" in made
    assert "Environment=SLP_PORT=40002" in unit.read_text()

    assert uninstall("linux", manager=SystemdManager()) == (True, None)
    made = calls()
    assert made[0] == "disable --now slp.service" and "daemon-reload" in made
    assert not unit.exists() and managed_by_service("linux") is None


def test_spec_uses_given_interpreter():
    spec = build_spec(Settings(), executable="/opt/py/bin/python3", platform="linux")
    assert spec.program == ["/opt/py/bin/python3", "-m", "slp.server"]
