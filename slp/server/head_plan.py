"""The head start's plan: the last engine command, reused to spawn the engine before the agent imports even
its settings.

The head start (`slp.server.head_start`) spawns the default model's engine once the settings, the model
store and the project database say which engine that is: a quarter of a second of imports (pydantic,
pydantic-settings, the stores) on a small machine, every start. Nearly every start runs the same engine
as the last one, so the head start records its command here, with what it was made from (the SLP_*
environment, the config file, the binary, the model, this host, slp's version); the next agent, if all of
that is unchanged, spawns the same command at once, with stdlib imports only, on a new port with a new key.

It is only a guess made early: the head start then works out the engine the usual way and keeps the
planned one only if its command is exactly that (`take`); otherwise it is killed and the right one is
spawned (the active project may have switched models, which the fingerprint does not see).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from slp.engine.launch import EngineCommand, free_port, popen_engine
from slp.paths import ENV_PREFIX, Paths, configured_paths, ensure_private_dir

PLAN_FILE = "head-plan.json"
_PORT, _KEY = "{port}", "{key}"  # where the command's own port and key go


@dataclass
class Planned:
    """An engine spawned from the plan, on `port` with `key`, from `command`."""

    popen: subprocess.Popen
    port: int
    key: str
    command: EngineCommand
    taken: bool = False  # the head start serves it

    def kill(self) -> None:
        """Not the engine the agent wants: kill its group and reap it (once; later calls do nothing)."""
        import signal

        if self.popen.poll() is not None:
            return
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.popen.wait()


def _stat(path: Optional[str]) -> Optional[list]:
    try:
        st = os.stat(path) if path else None
    except OSError:
        return None
    return [st.st_mtime_ns, st.st_size] if st else None


def _after(argv: list[str], flag: str) -> Optional[str]:
    return argv[argv.index(flag) + 1] if flag in argv[:-1] else None


def fingerprint(paths: Paths, argv: list[str]) -> dict:
    """What the engine command is made from, as far as it can be seen without loading the settings."""
    from slp import __version__

    return {"version": __version__, "python": sys.executable, "host": os.uname().nodename,
            "env": sorted((k.upper(), v) for k, v in os.environ.items() if k.upper().startswith(ENV_PREFIX)),
            "config": _stat(str(paths.config_file)), "binary": _stat(argv[0]),
            "model": _stat(_after(argv, "--model")), "mmproj": _stat(_after(argv, "--mmproj"))}


def save(paths: Paths, command: EngineCommand, port: int, key: str, listen: tuple[str, int]) -> None:
    """Record the head start's command (port and key left as blanks) for the next agent; `listen` is where
    this agent listens, which the next one must find free."""
    argv = list(command.argv)
    argv[argv.index("--port") + 1] = _PORT
    env = {k: (_KEY if v == key else v) for k, v in command.env.items()}
    plan = {"argv": argv, "env": env, "log_path": str(command.log_path), "listen": list(listen),
            "fingerprint": fingerprint(paths, argv)}
    ensure_private_dir(paths.state_dir)
    tmp = paths.state_dir / f".{PLAN_FILE}.{os.getpid()}"
    try:
        tmp.write_text(json.dumps(plan))
        os.replace(tmp, paths.state_dir / PLAN_FILE)
    except OSError:
        tmp.unlink(missing_ok=True)  # only a plan: the next start works it out again


def forget(paths: Paths) -> None:
    (paths.state_dir / PLAN_FILE).unlink(missing_ok=True)


def spawn_planned() -> Optional[Planned]:
    """Spawn the last head start's engine again if nothing it was made from changed and the start looks
    like one the agent will go through with (no agent running, its port free); else None."""
    from slp.lifecycle import clean_up_after_dead_agent, port_free
    from slp.runstate import live_state

    try:
        paths = configured_paths()
        plan = json.loads((paths.state_dir / PLAN_FILE).read_text())
        argv, env, log_path, (host, port) = plan["argv"], plan["env"], Path(plan["log_path"]), plan["listen"]
    except (OSError, ValueError, TypeError, KeyError):
        return None
    if plan.get("fingerprint") != json.loads(json.dumps(fingerprint(paths, argv))):
        return None
    if live_state(paths) or not port_free(host, port):
        return None
    clean_up_after_dead_agent(paths)  # a dead agent's engines free their memory before this one loads
    engine_port, key = free_port(), secrets.token_urlsafe(32)
    argv = [str(engine_port) if a == _PORT else a for a in argv]
    command = EngineCommand(argv=argv, env={k: (key if v == _KEY else v) for k, v in env.items()}, log_path=log_path)
    try:
        return Planned(popen_engine(command), engine_port, key, command)
    except OSError:
        return None
