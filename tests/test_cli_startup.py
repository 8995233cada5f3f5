"""The CLI answers at once: the quick commands (`slp status`, `slp ps`, `slp agent status`, `slp --help`)
import only what they use, found by import tracing (`python -X importtime`) in a subprocess with its own
SLP_HOME and no agent. No timings here (the machine is shared and noisy): `python -m bench.cli` measures.

Also: `slp --help` lists every command with its one-line help, that line is the command's own, the
quick way of finding the agent (no pydantic) agrees with Settings, and the psutil-free liveness check
agrees with psutil.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import typer

from conftest import REPO, wait_for

# Modules the quick commands must not import: settings validation, the server, the process library,
# tables and rich drawing, the model store and GGUF reading.
HEAVY = ("pydantic", "pydantic_settings", "aiohttp", "psutil", "rich", "tabulate", "slp.models", "gguf", "numpy",
         "asyncio", "slp.settings", "slp.engine", "slp.server", "huggingface_hub", "urllib.request",
         "typer.rich_utils", "typer._adapters")
QUICK = (["status"], ["status", "--json"], ["ps"], ["agent", "status"], ["--help"], [])
IMPORT_LINE = re.compile(r"import time:\s+\d+ \|\s+\d+ \|\s+(\S+)")


def clean_env(home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("SLP_")}
    env.update(SLP_HOME=str(home), COLUMNS="100")
    return env


def slp(args: list[str], env: dict, importtime: bool = False) -> subprocess.CompletedProcess:
    flags = ["-X", "importtime"] if importtime else []
    return subprocess.run([sys.executable, *flags, "-m", "slp", *args], env=env, capture_output=True, text=True,
                          timeout=60, cwd=REPO)


def imported(stderr: str) -> set[str]:
    return {m.group(1) for m in map(IMPORT_LINE.match, stderr.splitlines()) if m}


def heavy_in(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))


@pytest.mark.parametrize("args", QUICK, ids=lambda a: " ".join(a) or "(none)")
def test_quick_commands_import_nothing_heavy(tmp_path, args):
    proc = slp(args, clean_env(tmp_path), importtime=True)
    modules = imported(proc.stderr)
    assert "slp.cli.main" in modules, proc.stderr[-2000:]
    assert heavy_in(modules) == [], f"`slp {' '.join(args)}` imported heavy modules"
    expected_rc = {"--help": 0, "": 2}.get(" ".join(args), 1)  # no agent: exit 1; bare `slp`: help, exit 2
    assert proc.returncode == expected_rc, proc.stderr[-2000:]


@pytest.mark.parametrize("args", (["status"], ["ps"], ["agent", "status"]), ids=" ".join)
def test_no_agent_is_said_in_one_line(tmp_path, args):
    proc = slp(args, clean_env(tmp_path))
    assert proc.returncode == 1
    expected = ("Error: " if args == ["ps"] else "") + "slp agent is not running; start it with: slp agent start"
    assert proc.stderr.strip() == expected and proc.stdout == ""


def test_help_lists_every_command_with_its_own_line(tmp_path):
    """`slp --help` is built from slp.cli.main.COMMANDS without importing the commands; each one-line help
    there is the first paragraph of what the command itself declares (docstring, or the sub-app's help)."""
    from typer.main import get_command

    from slp.cli import main

    proc = slp(["--help"], clean_env(tmp_path))
    assert proc.returncode == 0, proc.stderr
    listing = proc.stdout.split("Commands:", 1)[1]
    flat = " ".join(listing.split())
    for name, (_, line) in main.COMMANDS.items():
        assert re.search(rf"^  {name} ", listing, re.M), f"{name} not listed"
        assert f"{name} {line}" in flat, f"{name}'s one-line help not listed whole"
    real = get_command(main.app)
    assert list(real.list_commands(None)) == list(main.COMMANDS)  # the order `slp --help` had before
    for name, (_, line) in main.COMMANDS.items():
        target = main.load_command(name)
        declared = target.info.help if isinstance(target, typer.Typer) else target.__doc__
        first = " ".join(declared.strip().split("\n\n")[0].split())
        assert first == line, f"COMMANDS['{name}'] says {line!r}; the command says {first!r}"


def test_a_command_runs_as_typer_built_it(tmp_path):
    """Running a command through the lazy group gives what add_typer()/command() gave: its options, its
    own (rich) help, and usage errors."""
    env = clean_env(tmp_path)
    helped = slp(["agent", "--help"], env)
    assert helped.returncode == 0 and "Start, stop and inspect the slp agent." in helped.stdout
    for sub in ("start", "stop", "restart", "reload", "status", "logs"):
        assert sub in helped.stdout
    assert "--json" in slp(["status", "--help"], env).stdout
    assert "--pin" in slp(["model", "load", "--help"], env).stdout
    wrong = slp(["statuz"], env)
    assert wrong.returncode == 2 and "No such command 'statuz'" in wrong.stderr and "status" in wrong.stderr
    bad_option = slp(["status", "--bogus"], env)
    assert bad_option.returncode == 2 and "No such option: --bogus" in bad_option.stderr


def test_bare_slp_prints_the_help(tmp_path):
    env = clean_env(tmp_path)
    bare, helped = slp([], env), slp(["--help"], env)
    assert bare.returncode == 2 and bare.stdout == helped.stdout and "Commands:" in bare.stdout


def settings_paths(env: dict) -> tuple[str, str]:
    """(Settings().paths, slp.paths.configured_paths()) in a fresh interpreter with `env`."""
    code = ("import json, slp.paths, slp.settings; "
            "print(json.dumps([str(slp.settings.Settings().paths), str(slp.paths.configured_paths())]))")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60,
                          cwd=env.get("CWD", REPO))
    assert proc.returncode == 0, proc.stderr
    return tuple(json.loads(proc.stdout))


def test_quick_paths_agree_with_settings(tmp_path):
    """The CLI finds the agent through slp.paths.configured_paths(); it must be where Settings puts it:
    SLP_HOME (any case, even empty), else `home` in the config file, else the user dirs."""
    base = clean_env(tmp_path / "a")
    cases = [base, {**base, "SLP_HOME": str(tmp_path / "b")}, {**base, "SLP_HOME": "~/x"}]
    lower = {k: v for k, v in base.items() if k != "SLP_HOME"}
    cases.append({**lower, "slp_home": str(tmp_path / "c")})
    cases.append({**lower, "SLP_HOME": "", "CWD": str(tmp_path)})
    no_home = {k: v for k, v in lower.items()}
    no_home.update(HOME=str(tmp_path / "user"), XDG_CONFIG_HOME=str(tmp_path / "xdg"))
    cases.append(no_home)
    config = tmp_path / "xdg" / "slp" / "config.toml"
    for home in (str(tmp_path / "from-toml"), "~/t"):
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(f'home = "{home}"\nport = 4242\n')
        cases.append(dict(no_home))
    for env in cases:
        full, quick = settings_paths(env)
        assert quick == full, env


def test_unreadable_config_is_one_line(tmp_path):
    """Without SLP_HOME the agent's home may be in the config file: one that cannot be read is said in one
    line, as Settings() has it said; a `home` there that is no path is left to Settings to describe."""
    env = {k: v for k, v in clean_env(tmp_path).items() if k != "SLP_HOME"}
    env.update(HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path / "xdg"), XDG_STATE_HOME=str(tmp_path / "state"))
    config = tmp_path / "xdg" / "slp" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text("home = [unclosed\n")
    for args in (["status"], ["agent", "status"], ["ps"]):
        proc = slp(args, env)
        assert proc.returncode == 1 and proc.stderr.startswith(f"Error: cannot read {config}:"), proc.stderr
    config.write_text("home = 5\n")
    proc = slp(["status"], env)
    assert proc.returncode == 1 and proc.stderr.startswith("Error: invalid setting 'home'"), proc.stderr


def test_liveness_check_agrees_with_psutil():
    """slp.runstate.process_matches reads /proc where it can; it says what psutil says, create time
    included (the guard against a reused PID)."""
    from slp.runstate import process_matches

    me = psutil.Process()
    assert process_matches(me.pid, me.create_time())
    assert process_matches(me.pid, None)
    assert not process_matches(me.pid, me.create_time() + 1)  # same PID, another process
    assert not process_matches(None, None) and not process_matches(0, None)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    wait_for(lambda: psutil.Process(child.pid).status() == psutil.STATUS_ZOMBIE, 10, "the child to exit")
    assert not process_matches(child.pid, None), "a zombie is not alive"
    child.wait()
    assert not process_matches(child.pid, None)
    for proc in psutil.process_iter():
        try:
            created, alive = proc.create_time(), proc.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            continue
        if process_matches(proc.pid, created) != alive and psutil.pid_exists(proc.pid):  # not one that just ended
            assert process_matches(proc.pid, created) == (proc.status() != psutil.STATUS_ZOMBIE), proc


class FakeAgent(http.server.BaseHTTPRequestHandler):
    answers: dict = {}

    def do_GET(self) -> None:  # noqa: N802
        body = json.dumps(self.answers[self.path]).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


STATUS = {"server": "http://127.0.0.1:1", "agent": {"pid": 1, "uptime_s": 12.4}, "quantization": "Q4_1",
          "context_window": 4096, "flash_attention": False, "model_size": "98.4 MB",
          "memory_usage": {"percent": 0.9}, "gpu": "None (CPU only)",
          "active_project": {"name": "general_chat", "id": "abc"},
          "engine": {"state": "ready", "pid": 7, "reason": "serving", "restarts": 0, "crashes": 0}}
ENGINES = {"data": [{"model": "m", "aliases": ["m"], "pid": 7, "state": "ready", "rss_bytes": 231 << 20,
                     "gpu_bytes": None, "threads": 2, "slots": {"busy": 0, "total": 4}, "queued": 0,
                     "leases": 0, "last_used": time.time(), "pinned": True, "keep_alive_s": None,
                     "expires_in_s": None}],
           "reserved_bytes": 231 << 20, "budget_bytes": 1 << 30, "compute": {"threads_in_use": 2, "cores": 2}}


def test_a_running_agent_is_found_and_asked(tmp_path):
    """With an agent recorded in the run state (this test process, serving a fake /v1/status), the quick
    commands find it without pydantic and print what the agent says, as before."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeAgent)
    FakeAgent.answers = {"/v1/status": STATUS, "/v1/engines": ENGINES}
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / "agent.json").write_text(json.dumps(
            {"url": url, "agent_pid": os.getpid(), "agent_create_time": psutil.Process().create_time()}))
        env = clean_env(tmp_path)
        status = slp(["status"], env)
        assert status.returncode == 0, status.stderr
        from slp.cli.status import status_rows
        assert [line.split()[0] for line in status.stdout.splitlines()[2:]] == \
            [name.split()[0] for name, _ in status_rows(STATUS)]
        assert "Active project   general_chat (id=abc)" in status.stdout
        assert json.loads(slp(["status", "--json"], env).stdout) == STATUS
        agent = slp(["agent", "status"], env)
        assert agent.returncode == 0 and agent.stdout.splitlines() == [
            f"agent:  running at {url} (pid {os.getpid()}, up 12s)",
            "engine: ready (pid 7) - serving; restarts: 0 (crashes: 0)"]
        ps = slp(["ps"], env)
        assert ps.returncode == 0 and ps.stdout.splitlines()[-1] == \
            "memory: 231 MiB of a 1024 MiB budget; CPU threads computing: 2 of 2 cores"
        # A bad setting still says so once the agent is found (its key is read from the settings).
        bad = slp(["status"], {**env, "SLP_PORT": "nope"})
        assert bad.returncode == 1 and bad.stderr.startswith("Error: invalid setting 'port'"), bad.stderr
        # Recorded with another create time: a reused PID, not our agent.
        (tmp_path / "run" / "agent.json").write_text(json.dumps(
            {"url": url, "agent_pid": os.getpid(), "agent_create_time": psutil.Process().create_time() - 5}))
        assert slp(["status"], env).returncode == 1
    finally:
        server.shutdown()
        server.server_close()
