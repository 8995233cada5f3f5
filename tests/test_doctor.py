"""`slp doctor`: the real CLI on a stopped agent, a healthy one (over the stand-in engine, and over the real
engine), one whose engine failed and one whose engine runs in safe mode, each line checked; and the
decisions behind the lines, each on the case that should turn it."""

from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import click
import psutil
import pytest

from conftest import MODELS_CACHE, SLP, STANDIN_ENGINE, expected_gpu_row, free_port, kill_all_under, make_agent
from slp import doctor
from slp.cli.doctor import render
from slp.engine.budget import format_bytes
from slp.engine.cpuinfo import cpu_features, describe
from slp.settings import Settings

NAMES = ["python", "engine", "cpu", "gpu", "memory", "disk", "port", "agent", "last crash", "service", "workers"]
SELF_TEST = {"ok": True, "prompt_tokens": 70, "generated_tokens": 8, "prompt_tokens_per_s": 312.4,
             "decode_tokens_per_s": 41.2, "rpc_server": True, "seconds": 3.1, "at": "2025-01-01T00:00:00+00:00"}


def fake_build(root: Path, **record) -> Path:
    """A cache entry as build.py lays it out (bin/llama-server, build.json), whose binary is the stand-in
    engine and whose record says it was built here (this CPU) and passed its self-test."""
    binary = root / "entry" / "bin" / "llama-server"
    binary.parent.mkdir(parents=True)
    binary.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{STANDIN_ENGINE}" "$@"\n')
    binary.chmod(0o755)
    record = {"commit": "0123456789abcdef", "preset": "cpu", "portable": False, "cpu": describe(),
              "variables": {"GGML_NATIVE": "ON", "GGML_RPC": "ON", "CMAKE_CXX_FLAGS": "-U__AMX_TILE__"},
              "self_test": SELF_TEST, **record}
    (root / "entry" / "build.json").write_text(json.dumps(record))
    return binary


def run_doctor(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*SLP, "doctor", *args], env=env, capture_output=True, text=True, timeout=120)


def report(env: dict) -> tuple[dict[str, dict], list[str], int]:
    """(the --json report by check name, the human report's lines, the exit status), both runs agreeing on it."""
    as_json, human = run_doctor(env, "--json"), run_doctor(env)
    assert "Traceback" not in as_json.stderr + human.stderr, as_json.stderr + human.stderr
    assert as_json.returncode == human.returncode, (as_json.returncode, human.returncode)
    checks = json.loads(as_json.stdout)
    assert [c["check"] for c in checks] == NAMES
    assert all(set(c) >= {"check", "status", "detail", "fix"} for c in checks)
    lines = human.stdout.splitlines()
    heads = [line for line in lines if line.split(" ", 1)[0] in ("ok", "warn", "fail")]
    assert [(line[:4].strip(), line[6:18].strip()) for line in heads] == [(c["status"], c["check"]) for c in checks], \
        human.stdout
    assert lines[-1].startswith("11 checks: ")
    return {c["check"]: c for c in checks}, lines, human.returncode


def isolated(env: dict, tmp: Path) -> dict:
    """The env, with the service manager's folder in the test's own (no real unit is seen)."""
    return {**env, "XDG_CONFIG_HOME": str(tmp / "xdg")}


def expected_gpu() -> str:
    """A CPU build warns where a GPU is present (nvidia-smi lists one, or Apple Silicon), read independently."""
    if sys.platform == "darwin" and platform.machine() == "arm64":
        return "warn"
    smi = shutil.which("nvidia-smi")
    if smi:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30)
        if out.returncode == 0 and "GPU" in out.stdout:
            return "warn"
    return "ok"


def assert_common(checks: dict[str, dict], binary: Path) -> None:
    """The lines that read the same on every case here: this Python, the fake build, this machine."""
    assert checks["python"]["status"] == "ok" and "slp 0.1.0" in checks["python"]["detail"]
    assert platform.python_version() in checks["python"]["detail"]
    engine = checks["engine"]
    assert engine["status"] == "ok", engine
    assert str(binary) in engine["detail"] and "llama.cpp 0123456789" in engine["detail"]
    assert "preset cpu" in engine["detail"] and "native rpc no-amx" in engine["detail"]
    assert "prompt 312 tok/s, decode 41 tok/s" in engine["detail"]
    assert checks["cpu"]["status"] == "ok" and "has every feature the build uses" in checks["cpu"]["detail"]
    assert checks["gpu"]["status"] == expected_gpu(), checks["gpu"]
    if expected_gpu() == "ok":
        assert checks["gpu"]["detail"] == "none (CPU build)"
    budget = format_bytes(int(psutil.virtual_memory().total * 0.5))
    assert checks["memory"]["status"] == "ok" and f"budget {budget}" in checks["memory"]["detail"]
    assert "slp-orchestra-mini needs about" in checks["memory"]["detail"]
    disk = checks["disk"]
    assert disk["status"] == ("ok" if shutil.disk_usage(MODELS_CACHE).free >= 1024**3 else "warn")
    assert f"free at {MODELS_CACHE}" in disk["detail"]
    assert checks["service"] == {"check": "service", "status": "ok", "detail": "not installed (optional)", "fix": None}


# ----------------------------------------------------------------------------- the CLI, three agents

def test_doctor_with_the_agent_stopped(tmp_path, default_model):
    binary = fake_build(tmp_path)
    worker = f"127.0.0.1:{free_port()}"  # nothing listens there
    agent = make_agent(tmp_path / "home", engine_bin=str(binary), workers=worker, memory_budget="50%")
    checks, lines, code = report(isolated(agent.env, tmp_path))

    assert code == 0, "warnings alone leave the exit status 0"
    assert_common(checks, binary)
    assert checks["port"] == {"check": "port", "status": "ok", "detail": f"127.0.0.1:{agent.port} is free", "fix": None}
    assert checks["agent"] == {"check": "agent", "status": "warn", "detail": "not running", "fix": "slp agent start"}
    assert checks["last crash"] == {"check": "last crash", "status": "ok", "detail": "none (no agent has run here yet)",
                                    "fix": None, "log_tail": []}
    workers = checks["workers"]
    assert workers["status"] == "warn" and workers["detail"].startswith(f"{worker} down (connection refused")
    assert "SLP_WORKERS" in workers["fix"]
    assert any(line.startswith("warn  agent       not running — slp agent start") for line in lines), lines


@pytest.fixture(scope="module")
def healthy(tmp_path_factory, default_model):
    root = tmp_path_factory.mktemp("doctor-healthy")
    binary = fake_build(root)
    agent = make_agent(root / "home", engine_bin=str(binary), memory_budget="50%")
    agent.binary = binary
    agent.start()
    yield agent
    agent.stop()
    kill_all_under(agent.home)


def test_doctor_on_a_healthy_agent(healthy, tmp_path):
    checks, lines, code = report(isolated(healthy.env, tmp_path))
    state = healthy.state()

    assert code == 0
    assert_common(checks, healthy.binary)
    assert checks["port"]["status"] == "ok"
    assert checks["port"]["detail"] == f"127.0.0.1:{healthy.port} is the running slp agent's (pid {state['agent_pid']})"
    agent = checks["agent"]
    assert agent["status"] == "ok" and agent["fix"] is None
    assert agent["detail"].startswith(f"running at {healthy.url} (pid {state['agent_pid']}, up ")
    assert agent["detail"].endswith("; slp-orchestra-mini ready")
    assert checks["last crash"]["status"] == "ok" and checks["last crash"]["log_tail"] == []
    assert checks["last crash"]["detail"].startswith("none since the agent started")
    assert checks["workers"] == {"check": "workers", "status": "ok", "detail": "none configured (optional)",
                                 "fix": None}
    assert sum(line.startswith(("ok ", "warn ", "fail ")) for line in lines) == 11


def test_doctor_on_the_shared_agent_over_the_real_engine(agent, engine_binary, tmp_path):
    checks, _, code = report(isolated(agent.env, tmp_path))
    record = json.loads((engine_binary.parent.parent / "build.json").read_text())

    assert code == 0, checks
    engine = checks["engine"]
    assert engine["status"] == "ok" and engine["detail"].startswith(f"{engine_binary}; llama.cpp {record['commit'][:10]}")
    assert f"preset {record['preset']}" in engine["detail"] and "self-test ok: prompt " in engine["detail"]
    assert checks["cpu"]["status"] == "ok"
    if record["preset"] == "cuda":
        assert checks["gpu"]["status"] == "ok" and expected_gpu_row(engine_binary) in checks["gpu"]["detail"]
    else:
        assert checks["gpu"]["status"] == expected_gpu()
    assert checks["port"]["detail"] == f"127.0.0.1:{agent.port} is the running slp agent's " \
        f"(pid {agent.state()['agent_pid']})"
    assert checks["agent"]["status"] == "ok" and "slp-orchestra-mini ready" in checks["agent"]["detail"]
    assert checks["last crash"]["status"] == "ok"


def test_doctor_on_a_failed_engine_and_after_the_agent_stopped(tmp_path, default_model):
    binary = fake_build(tmp_path)
    agent = make_agent(tmp_path / "home", engine_bin=str(binary), max_restarts="0", memory_budget="50%")
    agent.env["STANDIN_EXIT_AT_START"] = "3"  # the engine exits at once: with no restarts allowed, failed
    env = isolated(agent.env, tmp_path)
    try:
        start = agent.cli("agent", "start")
        assert start.returncode == 1 and "engine failed" in start.stderr, start.stderr
        checks, lines, code = report(env)

        assert code == 1, "a failed check makes the exit status 1"
        assert_common(checks, binary)
        engine_agent = checks["agent"]
        assert engine_agent["status"] == "fail"
        assert f"running at {agent.url} (pid {agent.state()['agent_pid']}" in engine_agent["detail"]
        assert "slp-orchestra-mini failed: crash: exited while starting: exited with code 3" in engine_agent["detail"]
        assert engine_agent["fix"] == "fix what the last crash below shows, then `slp agent restart`"
        crash = checks["last crash"]
        assert crash["status"] == "fail"
        assert crash["detail"].startswith("slp-orchestra-mini: crash: exited while starting: exited with code 3, at ")
        assert crash["log_tail"] == ["stand-in: exiting at start with code 3"], "the crashed engine's own lines"
        assert "slp agent logs --engine" in crash["fix"]
        service = next(i for i, line in enumerate(lines) if line.startswith("ok    service"))
        assert lines[service - 1] == " " * 20 + "stand-in: exiting at start with code 3", \
            "the log tail is printed under the crash line"
    finally:
        agent.stop()
        kill_all_under(agent.home)

    # Stopped now: the agent's and the engine's logs still tell of that crash.
    checks, lines, code = report(env)
    assert code == 0
    assert checks["agent"]["status"] == "warn" and checks["agent"]["detail"] == "not running"
    crash = checks["last crash"]
    assert crash["status"] == "warn", crash
    assert crash["detail"].startswith("slp-orchestra-mini: crash: exited while starting: exited with code 3")
    assert crash["detail"].endswith("(in the last agent run)")
    assert crash["log_tail"] == ["stand-in: exiting at start with code 3"]


def test_doctor_on_an_engine_in_safe_mode(tmp_path, default_model):
    binary = fake_build(tmp_path)
    agent = make_agent(tmp_path / "home", engine_bin=str(binary), memory_budget="50%")
    agent.env["STANDIN_CRASH_AT_LOAD"] = "1"  # SIGSEGV while loading unless --no-repack, as on AMX Xeons
    try:
        agent.start()
        checks, _, code = report(isolated(agent.env, tmp_path))
    finally:
        agent.stop()
        kill_all_under(agent.home)

    assert code == 0, "safe mode serves: a warning"
    assert_common(checks, binary)
    assert checks["agent"]["status"] == "warn" and checks["agent"]["fix"] == doctor.SAFE_MODE_FIX
    assert checks["agent"]["detail"].endswith("; slp-orchestra-mini ready in safe mode: crashed twice at load, "
                                              "killed by SIGSEGV")
    crash = checks["last crash"]
    assert crash["status"] == "warn"
    assert crash["detail"].startswith("slp-orchestra-mini: crash-at-load: crashed while loading: killed by SIGSEGV, "
                                      "at ")
    assert crash["detail"].endswith("; restarted")
    assert crash["log_tail"][-1] == "stand-in: crashing while loading (SIGSEGV)"
    assert not any(line.startswith("--- slp: starting engine") for line in crash["log_tail"])


def test_doctor_reports_a_bad_setting_and_still_checks_the_rest(tmp_path):
    home = tmp_path / "home"
    (home / "config").mkdir(parents=True)
    (home / "config" / "config.toml").write_text('port = "lots"\n')
    env = isolated({**os.environ, "SLP_HOME": str(home)}, tmp_path)
    checks, _, code = report(env)
    assert code == 1
    python = checks["python"]
    assert python["status"] == "fail" and "invalid setting 'port'" in python["detail"]
    assert str(home / "config" / "config.toml") in python["fix"]
    port = checks["port"]["detail"]  # "127.0.0.1:38540 is free", or who holds it (another test's client may)
    assert port.startswith(("127.0.0.1:38540 ", "38540 on 127.0.0.1 ")), "the other checks run on the defaults"


# ----------------------------------------------------------------------------- the decisions

def test_cpu_check_fails_on_a_build_for_a_feature_this_cpu_lacks():
    record = {"preset": "cpu", "cpu": {**describe(), "features": [*cpu_features(), "slp_test_isa"]}}
    check = doctor.cpu_verdict(record, cpu_features(), "This CPU", platform.machine())
    assert check.status == "fail"
    assert check.detail == "built for a CPU with slp_test_isa that this one (This CPU) lacks"
    assert check.fix == "rebuild here with python3 build.py, or use --preset cpu-portable for a shared home"
    fits = doctor.cpu_verdict({**record, "cpu": describe()}, cpu_features(), "This CPU", platform.machine())
    assert fits.status == "ok"

    portable = doctor.cpu_verdict({**record, "portable": True}, cpu_features(), "This CPU", platform.machine())
    assert portable.status == "ok" and "portable build" in portable.detail

    other_arch = {"preset": "cpu", "cpu": {"arch": "riscv128", "features": []}}
    check = doctor.cpu_verdict(other_arch, ["avx2"], "This CPU", platform.machine())
    assert check.status == "fail" and check.detail.startswith("built for riscv128, but this machine is")


def test_cpu_check_says_amx_is_left_out_on_a_cpu_that_has_it():
    with_amx = ["avx2", "amx_tile"]
    check = doctor.cpu_verdict({"preset": "cpu", "cpu": {"arch": platform.machine(), "features": ["avx2"]}},
                               with_amx, "Xeon", platform.machine())
    assert check.status == "ok" and "AMX kernels are left out of slp's builds (llama.cpp #20824)" in check.detail
    assert "AMX" not in doctor.cpu_verdict(None, ["avx2"], "EPYC", platform.machine()).detail


def test_engine_and_cpu_checks_on_an_empty_cache_and_on_one_with_another_cpus_build(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("SLP_ENGINE_CACHE", str(cache))
    empty = doctor.check_engine(doctor.Context(Settings()))
    assert (empty.status, empty.detail) == ("fail", f"no llama-server built yet (looked in {cache})")
    assert empty.fix == "run `make run` or `python3 build.py`"

    binary = fake_build(cache, cpu={**describe(), "features": [*cpu_features(), "slp_test_isa"]})
    ctx = doctor.Context(Settings())
    engine, cpu = doctor.check_engine(ctx), doctor.check_cpu(ctx)
    assert engine.status == "fail" and engine.detail.startswith(f"{binary}; llama.cpp 0123456789")
    assert engine.detail.endswith("no cached build runs on this CPU (see the cpu line)")
    assert cpu.status == "fail" and "built for a CPU with slp_test_isa that this one" in cpu.detail
    assert engine.fix == cpu.fix == doctor.CPU_FIX


def test_port_check_names_the_process_that_holds_the_port():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        check = doctor.check_port(doctor.Context(Settings(host="127.0.0.1", port=port)))
        assert check.status == "fail"
        assert check.detail == f"{port} on 127.0.0.1 is held by {psutil.Process().name()} (pid {os.getpid()})"
        assert check.fix == "stop it or set SLP_PORT"
    check = doctor.check_port(doctor.Context(Settings(host="127.0.0.1", port=port)))
    assert (check.status, check.detail) == ("ok", f"127.0.0.1:{port} is free")


def test_engine_check_wants_a_build_and_a_passed_self_test(tmp_path):
    check = doctor.engine_verdict(None, None, "no llama-server built yet (looked in /x)", from_env=False)
    assert check.status == "fail" and check.fix == "run `make run` or `python3 build.py`"

    binary = tmp_path / "bin" / "llama-server"
    record = {"commit": "abc", "preset": "cpu", "variables": {"GGML_NATIVE": "ON"}}
    old = doctor.engine_verdict(binary, record, None, from_env=False)
    assert old.status == "warn" and "built before self-tests" in old.detail
    assert old.fix == "rebuild: python3 build.py --force"

    failed = doctor.engine_verdict(binary, {**record, "self_test": {"ok": False, "error": "killed by SIGILL"}}, None,
                                   from_env=False)
    assert failed.status == "fail" and "self-test failed: killed by SIGILL" in failed.detail

    passed = doctor.engine_verdict(binary, {**record, "self_test": SELF_TEST}, None, from_env=False)
    assert passed.status == "ok" and passed.detail.endswith("self-test ok: prompt 312 tok/s, decode 41 tok/s")

    missing = doctor.engine_verdict(binary, None, None, from_env=True, executable=False)
    assert missing.status == "fail" and "SLP_ENGINE_BIN" in missing.detail


def test_gpu_check_against_the_build_preset():
    h200 = [("NVIDIA H200", "550.54")]
    cuda_without_gpu = doctor.gpu_verdict("cuda", [], "nvidia-smi: couldn't communicate with the driver", False)
    assert cuda_without_gpu.status == "fail" and "couldn't communicate" in cuda_without_gpu.detail
    assert doctor.gpu_verdict("cuda", h200, None, False).detail == "NVIDIA H200 (driver 550.54); CUDA build"
    wasted = doctor.gpu_verdict("cpu", h200, None, False)
    assert (wasted.status, wasted.fix) == ("warn", "python3 build.py --preset cuda")
    assert "NVIDIA H200 (driver 550.54) present" in wasted.detail
    assert doctor.gpu_verdict("cpu", [], None, False).detail == "none (CPU build)"
    assert doctor.gpu_verdict("metal", [], None, False).status == "fail"
    assert doctor.gpu_verdict("cpu-portable", [], None, True).fix == "python3 build.py --preset metal"


def test_memory_check_warns_on_too_little_ram_or_too_large_a_budget():
    gib = 1024**3
    assert doctor.memory_verdict(16 * gib, 8 * gib, 12 * gib, gib // 2, "m").status == "ok"
    over = doctor.memory_verdict(16 * gib, 8 * gib, 20 * gib, gib // 2, "m")
    assert over.status == "warn" and "larger than the RAM" in over.detail and "SLP_MEMORY_BUDGET" in over.fix
    short = doctor.memory_verdict(16 * gib, gib // 4, 12 * gib, gib // 2, "m")
    assert short.status == "warn" and "less than that is available" in short.detail
    assert doctor.memory_verdict(16 * gib, gib // 4, 12 * gib, gib // 2, "m", loaded=True).status == "ok", \
        "a loaded model's memory is not available any more: not a shortage"
    too_big = doctor.memory_verdict(16 * gib, 8 * gib, gib, 2 * gib, "m")
    assert too_big.status == "warn" and "more than the budget" in too_big.detail


def test_disk_check_thresholds(tmp_path):
    assert doctor.disk_verdict(tmp_path, 150 * 1000**2).status == "fail"
    assert doctor.disk_verdict(tmp_path, 500 * 1000**2).status == "warn"
    assert doctor.disk_verdict(tmp_path, 5 * 1024**3).status == "ok"


def test_agent_check_warns_on_a_degraded_engine_and_fails_on_a_failed_one():
    state = {"url": "http://127.0.0.1:38540", "agent_pid": 42}
    degraded = {"reason": "crashed twice at load, killed by SIGSEGV", "since": 1.0, "args": ["--no-repack"]}
    status = {"agent": {"uptime_s": 30}, "engine": {"state": "ready", "model": "a", "degraded": degraded},
              "engines": [{"model": "a", "state": "ready", "reason": "serving"}]}
    check = doctor.agent_verdict(state, status, None)
    assert check.status == "warn" and check.fix == doctor.SAFE_MODE_FIX
    assert check.detail == ("running at http://127.0.0.1:38540 (pid 42, up 30s); "
                            "a ready in safe mode: crashed twice at load, killed by SIGSEGV")
    status["engines"].append({"model": "b", "state": "failed", "reason": "crash: exited with code 1"})
    check = doctor.agent_verdict(state, status, None)
    assert check.status == "fail" and check.detail.endswith("; b failed: crash: exited with code 1")
    unreachable = doctor.agent_verdict(state, None, "the agent did not answer in time")
    assert unreachable.status == "fail" and "did not answer in time" in unreachable.detail


def test_last_crash_from_the_logs_is_the_last_agent_runs_with_that_engines_lines():
    agent_log = [
        "2025-01-01 10:00:00,000 INFO slp.engine: m restarting: crash: exited: killed by SIGSEGV; restarting in 0.50s",
        "2025-01-01 10:05:00,000 INFO slp.server: slp agent stopped",
        "2025-01-01 11:00:00,000 INFO slp.engine: m restarting: starting m.gguf",
        "2025-01-01 11:00:09,000 INFO slp.engine: m restarting: crash-at-load: crashed while loading: killed by "
        "SIGILL; restarting in 0.50s",
        "2025-01-01 11:00:10,000 INFO slp.engine: m ready: serving m.gguf",
        "2025-01-01 11:30:00,000 INFO slp.server: slp agent stopped",
    ]
    engine_log = ["--- slp: starting engine at 2025-01-01 11:00:01: llama-server --port 1", "load 1", "boom",
                  "--- slp: starting engine at 2025-01-01 11:00:10: llama-server --port 2", "load 2", "serving"]
    check = doctor.crash_from_logs(agent_log, engine_log)
    assert check.status == "warn"
    assert check.detail == ("m: crash-at-load: crashed while loading: killed by SIGILL; restarting in 0.50s, "
                            "at 2025-01-01 11:00:09 (in the last agent run)")
    assert check.log_tail == ["load 1", "boom"], "the lines of the engine that crashed, not of its successor"

    earlier_run_only = agent_log[:2] + ["2025-01-01 12:00:00,000 INFO slp.server: slp agent 0.1.0 listening on x",
                                        "2025-01-01 12:10:00,000 INFO slp.server: slp agent stopped"]
    quiet = doctor.crash_from_logs(earlier_run_only, engine_log)
    assert (quiet.status, quiet.detail, quiet.log_tail) == ("ok", "none in the logs of the last agent run", [])


def test_a_check_that_raises_is_a_fail_line_not_a_traceback(monkeypatch):
    def broken(ctx):
        raise PermissionError("no access to /proc")

    monkeypatch.setattr(doctor, "CHECKS", (("python", doctor.check_python), ("port", broken)))
    checks = doctor.run_checks(doctor.Context(Settings()))
    assert [c.status for c in checks] == ["ok", "fail"]
    assert checks[1].detail == "the check could not run: PermissionError: no access to /proc"


def test_human_report_wraps_within_100_columns_and_indents_the_log_tail():
    checks = [doctor.Check("engine", "warn", "word " * 25, "rebuild: python3 build.py --force"),
              doctor.Check("last crash", "fail", "m: crash", "see the log", log_tail=["x" * 300, "last line"]),
              doctor.Check("port", "ok", "free")]
    lines = [click.unstyle(line) for line in render(checks)]
    assert all(len(line) <= 100 for line in lines), [len(line) for line in lines]
    assert lines[0].startswith("warn  engine      word word ")
    assert lines[2] == " " * 18 + "fix: rebuild: python3 build.py --force", "a fix that does not fit: its own line"
    assert lines[3] == "fail  last crash  m: crash — see the log", "a fix that fits: on the line"
    assert lines[4].startswith(" " * 20 + "xxx") and lines[4].endswith("…")
    assert lines[5:] == [" " * 20 + "last line", "ok    port        free"]


def test_the_cli_loads_the_checks_only_when_doctor_runs():
    """`slp --help` and every other command do not pay for doctor's imports."""
    code = "import sys, slp.cli.main; print('slp.doctor' in sys.modules, 'slp.cli.doctor' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "True"]
