"""`slp doctor`'s checks: what a user's setup lacks, found without a running agent, each with the fix.

One small function per check, in the order the command prints them; each returns a `Check` (ok, warn or
fail, a detail, the fix). The facts several checks share (settings, the engine build, the running agent's
/v1/status) are gathered once by `Context`. The decisions are pure functions of plain data (`*_verdict`),
so they are tested without breaking a machine; the `check_*` functions only gather what they decide on.

A broken setup is what this command is for, so nothing here may raise: `run_checks` turns any error of a
check into that check's fail line. Subprocesses and sockets have short timeouts. Heavier modules (the
model store, the service managers, the agent's HTTP client) are imported by the check that uses them.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import sys
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Optional

import psutil
from pydantic import ValidationError

import slp
from slp.lifecycle import port_free
from slp.runstate import live_state
from slp.settings import Settings, describe_settings_error, paths

OK, WARN, FAIL = "ok", "warn", "fail"
GIB = 1024**3
DISK_WARN_BYTES = GIB
DISK_FAIL_BYTES = 200 * 1000**2
LOG_TAIL_LINES = 5
STATUS_TIMEOUT = 10.0  # /v1/status may read a model's GGUF metadata the first time (seconds on a slow CPU)
PROBE_TIMEOUT = 1.0
SMI_TIMEOUT = 5.0
BUILD = "run `make run` or `python3 build.py`"
ENGINE_LOGS = "see `slp agent logs --engine`"
CPU_FIX = "rebuild here with python3 build.py, or use --preset cpu-portable for a shared home"
AMX_NOTE = "; AMX kernels are left out of slp's builds (llama.cpp #20824)"
SAFE_MODE_FIX = "the engine runs in safe mode: report the crash, or try python3 build.py --preset cpu-portable"


@dataclass
class Check:
    """One line of the report. `log_tail` (the crash check only) is printed under it."""

    check: str
    status: str  # ok, warn, fail
    detail: str
    fix: Optional[str] = None
    log_tail: Optional[list[str]] = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"check": self.check, "status": self.status, "detail": self.detail, "fix": self.fix}
        if self.log_tail is not None:
            data["log_tail"] = self.log_tail
        return data


def size(n: float) -> str:
    from slp.engine.budget import format_bytes

    return format_bytes(n)


# ----------------------------------------------------------------------------- shared facts

class Context:
    """What several checks look at, each gathered once on first use (an error reaches only the checks
    that asked). Settings that cannot be read leave the defaults here; the python check says so."""

    def __init__(self, settings: Settings, settings_error: Optional[str] = None):
        self.settings = settings
        self.settings_error = settings_error

    @classmethod
    def load(cls) -> "Context":
        try:
            return cls(Settings())
        except ValidationError as exc:
            return cls(Settings.model_construct(), describe_settings_error(exc))
        except (ValueError, OSError) as exc:  # an unreadable or malformed config.toml
            return cls(Settings.model_construct(), f"cannot read {paths().config_file}: {exc}")

    @cached_property
    def engine(self) -> tuple[Optional[Path], Optional[dict], Optional[str]]:
        """(llama-server slp would run, its build record, None); when it would run none: (None, None, why),
        or, when the cache has builds it refuses on this machine, (the newest one, its record, why)."""
        from slp.engine.binary import EngineNotFound, cached_builds, engine_cache_root, find_engine

        try:
            binary, record = find_engine(self.settings)
        except EngineNotFound as exc:
            builds = cached_builds()
            if not builds:
                return None, None, f"no llama-server built yet (looked in {engine_cache_root()})"
            record, binary = builds[0]  # refused here (another CPU's, a failed self-test): say why
            return binary, record, str(exc)
        return binary, record if isinstance(record, dict) else None, None

    @cached_property
    def agent_state(self) -> Optional[dict]:
        return live_state(self.settings.paths)

    @cached_property
    def agent_status(self) -> tuple[Optional[dict], Optional[str]]:
        """(the running agent's /v1/status, why it could not be read); (None, None) when none runs."""
        if not self.agent_state:
            return None, None
        from slp.cli.client import AgentClient, CliError

        try:
            client = AgentClient(self.agent_state["url"], settings=self.settings, timeout=STATUS_TIMEOUT)
            return client.request("GET", "/v1/status"), None
        except CliError as exc:
            return None, str(exc)


# ----------------------------------------------------------------------------- 1. python / slp

def check_python(ctx: Context) -> Check:
    detail = f"Python {platform.python_version()} ({sys.executable}), slp {slp.__version__}"
    if sys.version_info < (3, 11):
        return Check("python", FAIL, detail + ": slp needs Python 3.11 or newer",
                     "install Python 3.11+ and run `make run` with it")
    if ctx.settings_error:
        return Check("python", FAIL, f"{detail}; settings: {ctx.settings_error} (the checks below use the defaults)",
                     f"fix {paths().config_file} or the SLP_* variable it names")
    return Check("python", OK, detail + ", settings ok")


# ----------------------------------------------------------------------------- 2. engine build

_FLAG_NAMES = ("GGML_NATIVE", "GGML_CPU_ALL_VARIANTS", "GGML_BACKEND_DL", "GGML_CUDA", "GGML_METAL",
               "GGML_VULKAN", "GGML_RPC")


def key_flags(record: dict) -> str:
    """The build variables that say what the binary can do: "native rpc no-amx", "cuda rpc no-amx"."""
    variables = record.get("variables") if isinstance(record.get("variables"), dict) else {}
    flags = [name.removeprefix("GGML_").lower() for name in _FLAG_NAMES if str(variables.get(name)).upper() == "ON"]
    if "-U__AMX_TILE__" in str(variables.get("CMAKE_CXX_FLAGS", "")):
        flags.append("no-amx")
    if variables.get("CMAKE_CUDA_ARCHITECTURES"):
        flags.append(f"cuda-arch={variables['CMAKE_CUDA_ARCHITECTURES']}")
    return " ".join(flags) or "none recorded"


def _rate(value: Any) -> str:
    return f"{value:.0f} tok/s" if isinstance(value, (int, float)) else "n/a"


def engine_verdict(binary: Optional[Path], record: Optional[dict], error: Optional[str], from_env: bool,
                   executable: bool = True) -> Check:
    """`binary`/`record`: what slp would run; with `error` too, the newest cached build, which slp refuses
    here (see `Context.engine`); `error` alone: there is no build at all."""
    if binary is None:
        return Check("engine", FAIL, error or "no llama-server found", BUILD)
    if not executable:
        return Check("engine", FAIL, f"SLP_ENGINE_BIN={binary} is not an executable file",
                     "point SLP_ENGINE_BIN at a llama-server, or unset it to use slp's build")
    where = f"{binary} (SLP_ENGINE_BIN)" if from_env else str(binary)
    if record is None:
        return Check("engine", OK, f"{where}; no build record beside it (not built by slp), so its build and "
                     "self-test are not checked")
    preset = str(record.get("preset") or "?") + (" (portable)" if record.get("portable") else "")
    detail = f"{where}; llama.cpp {str(record.get('commit') or '?')[:10]}, preset {preset}, flags {key_flags(record)}"
    test = record.get("self_test")
    if isinstance(test, dict) and not test.get("ok"):
        return Check("engine", FAIL, f"{detail}; self-test failed: {test.get('error') or 'no reason recorded'}",
                     "rebuild: python3 build.py --force; if it fails again, report it or try "
                     "python3 build.py --preset cpu-portable")
    if error:
        return Check("engine", FAIL, f"{detail}; no cached build runs on this CPU (see the cpu line)", CPU_FIX)
    if not isinstance(test, dict):
        return Check("engine", WARN, detail + "; no self-test (built before self-tests)",
                     "rebuild: python3 build.py --force")
    return Check("engine", OK, f"{detail}; self-test ok: prompt {_rate(test.get('prompt_tokens_per_s'))}, "
                 f"decode {_rate(test.get('decode_tokens_per_s'))}")


def check_engine(ctx: Context) -> Check:
    binary, record, error = ctx.engine
    from_env = ctx.settings.engine_bin is not None
    executable = binary is not None and binary.is_file() and os.access(binary, os.X_OK)
    return engine_verdict(binary, record, error, from_env, executable)


# ----------------------------------------------------------------------------- 3. cpu

def cpu_verdict(record: Optional[dict], features: list[str], model: str, arch: str) -> Check:
    from slp.engine.cpuinfo import missing_features

    amx = AMX_NOTE if "amx_tile" in features else ""
    if record is None:
        return Check("cpu", OK, f"{model} ({arch}); no build record to compare with{amx}")
    if record.get("portable") or record.get("preset") == "cpu-portable":
        return Check("cpu", OK, f"{model}: portable build (it picks its CPU code at start){amx}")
    missing = missing_features(record, features)
    if missing and missing[0].startswith("arch "):
        return Check("cpu", FAIL, f"built for {missing[0][5:]}, but this machine is {arch} ({model})", CPU_FIX)
    if missing:
        names = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        return Check("cpu", FAIL, f"built for a CPU with {names} that this one ({model}) lacks", CPU_FIX)
    built = record.get("cpu")
    if not isinstance(built, dict):
        return Check("cpu", OK, f"{model}; the build does not record its CPU (built before CPU checks), "
                     f"so it is not compared{amx}")
    return Check("cpu", OK, f"{model}: has every feature the build uses (built on {built.get('model') or '?'}){amx}")


def check_cpu(ctx: Context) -> Check:
    from slp.engine.cpuinfo import cpu_features, cpu_model

    _, record, _ = ctx.engine
    return cpu_verdict(record, cpu_features(), cpu_model() or "this CPU", platform.machine())


# ----------------------------------------------------------------------------- 4. gpu

def has_metal() -> bool:
    return sys.platform == "darwin" and platform.machine() == "arm64"


def gpu_verdict(preset: Optional[str], gpus: list[tuple[str, str]], smi_error: Optional[str], metal: bool,
                gpu_layers: Optional[int] = None) -> Check:
    names = ", ".join(dict.fromkeys(f"{name} (driver {driver})" for name, driver in gpus))
    if preset == "cuda":
        if not gpus:
            why = smi_error or "nvidia-smi not found"
            return Check("gpu", FAIL, f"a CUDA build, but no working NVIDIA GPU ({why})",
                         "install or repair the NVIDIA driver (nvidia-smi must list the GPU), or rebuild for the "
                         "CPU: python3 build.py --preset cpu")
        off = "; SLP_GPU_LAYERS=0 keeps the model on the CPU" if gpu_layers == 0 else ""
        return Check("gpu", OK, f"{names}; CUDA build{off}")
    if preset == "metal":
        if not metal:
            return Check("gpu", FAIL, "a Metal build, but this is not an Apple Silicon Mac",
                         "rebuild: python3 build.py (it picks the preset for this machine)")
        return Check("gpu", OK, "Apple Silicon (Metal build)")
    if preset == "vulkan":
        return Check("gpu", OK, f"{names or 'the GPU is not checked'}; Vulkan build")
    if preset is None:  # no engine, or one slp did not build
        found = names or ("Apple Silicon (Metal)" if metal else "none")
        return Check("gpu", OK, f"{found}; no build record to compare with")
    if gpus:
        return Check("gpu", WARN, f"{names} present, but the engine is a CPU build", "python3 build.py --preset cuda")
    if metal:
        return Check("gpu", WARN, "Apple Silicon (Metal) present, but the engine is a CPU build",
                     "python3 build.py --preset metal")
    return Check("gpu", OK, "none (CPU build)" + (f"; {smi_error}" if smi_error else ""))


def check_gpu(ctx: Context) -> Check:
    _, record, _ = ctx.engine
    from slp.engine.gpu import nvidia_gpus

    gpus, smi_error = nvidia_gpus(SMI_TIMEOUT)
    preset = record.get("preset") if record else None
    return gpu_verdict(preset, gpus, smi_error, has_metal(), ctx.settings.gpu_layers)


# ----------------------------------------------------------------------------- 5. memory

def memory_verdict(total: int, available: int, budget: int, need: Optional[int], model: str,
                   loaded: bool = False) -> Check:
    """`need`: what the default model is estimated to need (None: unknown); `loaded`: it is loaded now, so
    its memory is already taken from `available`."""
    detail = f"{size(total)} RAM, {size(available)} available, budget {size(budget)}; "
    detail += f"{model} needs about {size(need)}" if need is not None else f"{model}: its needs are unknown"
    if budget > total:
        return Check("memory", WARN, detail + "; the budget is larger than the RAM",
                     "lower SLP_MEMORY_BUDGET (default: 75% of RAM)")
    if need is not None and need > budget:
        return Check("memory", WARN, detail + "; that is more than the budget",
                     "raise SLP_MEMORY_BUDGET, or choose a smaller model (SLP_MODEL)")
    if need is not None and not loaded and available < need:
        return Check("memory", WARN, detail + "; less than that is available",
                     "close other programs, or choose a smaller model (SLP_MODEL)")
    return Check("memory", OK, detail)


def model_need(settings: Settings) -> tuple[Optional[int], str]:
    """(bytes the default model is estimated to need, its name as said): the agent's estimate when its
    metadata is cached, else the file's size and half again for the KV cache, as the agent falls back to."""
    from slp.engine.budget import estimate_bytes, estimate_from_size
    from slp.models.catalog import find_entry
    from slp.models.errors import ModelError
    from slp.models.metadata import metadata_sidecar
    from slp.models.store import ModelStore

    found = ModelStore(settings.resolved_models_dir).resolve(settings.model)
    if found is not None and not found.missing:
        if (found.sidecar or metadata_sidecar(found.path)).exists():  # parsing a GGUF anew takes seconds
            try:
                return estimate_bytes(found.metadata, settings.ctx_size, settings.cache_ram), settings.model
            except ModelError:
                pass
        return estimate_from_size(found.size_bytes, settings.cache_ram), settings.model
    entry = find_entry(settings.model)
    if entry is not None:
        return estimate_from_size(entry.size_hint, settings.cache_ram), f"{settings.model} (not fetched yet)"
    return None, f"{settings.model} (not installed)"


def check_memory(ctx: Context) -> Check:
    from slp.engine.budget import BudgetError, parse_budget

    memory = psutil.virtual_memory()
    try:
        budget = parse_budget(ctx.settings.memory_budget, memory.total)
    except BudgetError as exc:
        return Check("memory", FAIL, str(exc), "set SLP_MEMORY_BUDGET to bytes, a size such as 8GiB, or a share "
                     "such as 75%")
    need, model = model_need(ctx.settings)
    status, _ = ctx.agent_status
    loaded = bool(status) and (status.get("engine") or {}).get("state") == "ready"
    return memory_verdict(memory.total, memory.available, budget, need, model, loaded)


# ----------------------------------------------------------------------------- 6. disk

def disk_verdict(folder: Path, free: int) -> Check:
    detail = f"{size(free)} free at {folder}"
    fix = "free some space there, or keep the models elsewhere with SLP_MODELS_DIR"
    if free < DISK_FAIL_BYTES:
        return Check("disk", FAIL, detail, fix)
    if free < DISK_WARN_BYTES:
        return Check("disk", WARN, detail + " (less than 1 GiB)", fix)
    return Check("disk", OK, detail)


def check_disk(ctx: Context) -> Check:
    folder = ctx.settings.resolved_models_dir
    probe = folder
    while not probe.exists() and probe != probe.parent:  # not created yet: the disk it will be on
        probe = probe.parent
    return disk_verdict(folder, shutil.disk_usage(probe).free)


# ----------------------------------------------------------------------------- 7. port

def port_owner(port: int) -> Optional[tuple[Optional[int], Optional[str]]]:
    """(pid, process name) of what listens on `port`; (None, None) when something does but this user may
    not see what; None when no listener is visible."""
    try:
        conns = psutil.net_connections(kind="inet")
    except psutil.Error:
        return None, None
    for conn in conns:
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
            if not conn.pid:
                return None, None
            try:
                return conn.pid, psutil.Process(conn.pid).name()
            except psutil.Error:
                return conn.pid, None
    return None


def port_verdict(host: str, port: int, free: bool, owner: Optional[tuple[Optional[int], Optional[str]]],
                 agent_state: Optional[dict]) -> Check:
    where = f"{host}:{port}"
    if port == 0:
        return Check("port", OK, "SLP_PORT=0: the agent takes any free port")
    if free:
        return Check("port", OK, f"{where} is free")
    pid, name = owner or (None, None)
    if agent_state and (pid == agent_state.get("agent_pid") or
                        (pid is None and str(agent_state.get("url", "")).endswith(f":{port}"))):
        return Check("port", OK, f"{where} is the running slp agent's (pid {agent_state.get('agent_pid')})")
    who = f"{name or 'a process'} (pid {pid})" if pid else "another program (one this user cannot see)"
    return Check("port", FAIL, f"{port} on {host} is held by {who}", "stop it or set SLP_PORT")


def check_port(ctx: Context) -> Check:
    host, port = ctx.settings.host, ctx.settings.port
    free = port == 0 or port_free(host, port)
    return port_verdict(host, port, free, None if free else port_owner(port), ctx.agent_state)


# ----------------------------------------------------------------------------- 8. agent

def engines_of(status: dict) -> list[dict]:
    """Every engine /v1/status names: `engines`, merged with the default model's `engine` by model name."""
    merged: dict[Any, dict] = {}
    primary = status.get("engine")
    rows = [primary] if isinstance(primary, dict) and primary.get("state") != "unloaded" else []
    rows += [row for row in status.get("engines") or [] if isinstance(row, dict)]
    for row in rows:
        merged.setdefault(row.get("model"), {}).update({k: v for k, v in row.items() if v is not None})
    return list(merged.values())


def _ago(seconds: Optional[float]) -> str:
    if not isinstance(seconds, (int, float)):
        return ""
    if seconds < 120:
        return f"{seconds:.0f}s"
    return f"{seconds / 60:.0f}m" if seconds < 7200 else f"{seconds / 3600:.1f}h"


def agent_verdict(state: Optional[dict], status: Optional[dict], error: Optional[str]) -> Check:
    if not state:
        return Check("agent", WARN, "not running", "slp agent start")
    where = f"running at {state.get('url')} (pid {state.get('agent_pid')}"
    uptime = _ago(((status or {}).get("agent") or {}).get("uptime_s"))
    where += f", up {uptime})" if uptime else ")"
    if error or status is None:
        return Check("agent", FAIL, f"{where}, but /v1/status failed: {error}",
                     "see `slp agent logs`, then `slp agent restart`")
    engines = engines_of(status)
    if not engines:
        return Check("agent", OK, f"{where}; no model loaded")
    worst, fix, parts = OK, None, []
    for engine in engines:
        name, state_word = engine.get("model") or "engine", engine.get("state")
        degraded = engine.get("degraded")
        if state_word == "failed":
            parts.append(f"{name} failed: {engine.get('reason')}")
            worst, fix = FAIL, "fix what the last crash below shows, then `slp agent restart`"
        elif isinstance(degraded, dict):
            parts.append(f"{name} {state_word} in safe mode: {degraded.get('reason')}")
            if worst != FAIL:
                worst, fix = WARN, SAFE_MODE_FIX
        elif state_word == "ready":
            parts.append(f"{name} ready")
        else:
            parts.append(f"{name} {state_word}: {engine.get('reason')}")
            if worst == OK:
                worst, fix = WARN, f"wait for it, or {ENGINE_LOGS}"
    return Check("agent", worst, f"{where}; " + "; ".join(parts), fix)


def check_agent(ctx: Context) -> Check:
    status, error = ctx.agent_status
    return agent_verdict(ctx.agent_state, status, error)


# ----------------------------------------------------------------------------- 9. last crash

CRASH = "last crash"
ENGINE_START = "--- slp: starting engine at "
# The supervisor's line when an engine ended on its own (slp.engine.supervisor: "<model> <state>: <reason>"):
# every `failed` line, and the `restarting` lines that give an exit's reason (not "starting <file>").
EXIT_LINE = re.compile(r"^(?P<at>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\S* \w+ slp\.engine: (?P<model>\S+) "
                       r"(?:failed: |restarting: (?=(?:crash|crash-at-load|hang|stall|start-timeout|spawn-failed): ))"
                       r"(?P<what>.*)$")
AGENT_STOPPED = re.compile(r" slp\S*: slp agent stopped$")
CRASH_WORDS = re.compile(r"\b(error|failed|fatal|abort(ed)?|assert(ion)?|segmentation fault|illegal instruction|"
                         r"terminate called|core dumped|exiting)\b", re.IGNORECASE)


def crash_from_status(status: dict) -> Check:
    """The last engine exit the running agent saw (each engine's `last_exit`)."""
    exits = [e for e in engines_of(status) if isinstance(e.get("last_exit"), dict)]
    if not exits:
        started = _ago(((status.get("agent") or {}).get("uptime_s")))
        return Check(CRASH, OK, "none since the agent started" + (f" ({started} ago)" if started else ""), log_tail=[])
    engine = max(exits, key=lambda e: e["last_exit"].get("at") or 0)
    last = engine["last_exit"]
    at = last.get("at")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at)) if isinstance(at, (int, float)) else "?"
    detail = f"{engine.get('model') or 'engine'}: {last.get('reason')}: {last.get('detail')}, at {when}"
    tail = own_lines([str(line) for line in last.get("log_tail") or []])
    if engine.get("state") == "failed":
        return Check(CRASH, FAIL, detail + "; it is not restarted", f"{ENGINE_LOGS}; fix the cause, then "
                     "`slp agent restart`", tail)
    return Check(CRASH, WARN, detail + "; restarted", f"if it happens again, {ENGINE_LOGS} and report it", tail)


def own_lines(tail: list[str]) -> list[str]:
    """The last lines of a log tail that the last engine started wrote (the log is shared by every engine
    start); its start line (the command) only when it wrote nothing."""
    starts = [i for i, line in enumerate(tail) if line.startswith(ENGINE_START)]
    if starts:
        tail = tail[starts[-1] + 1:] or tail[starts[-1]:]
    return tail[-LOG_TAIL_LINES:]


def last_session(lines: list[str]) -> list[str]:
    """The agent log's lines of the last agent run (runs end with "slp agent stopped")."""
    sessions: list[list[str]] = [[]]
    for line in lines:
        sessions[-1].append(line)
        if AGENT_STOPPED.search(line):
            sessions.append([])
    return next((s for s in reversed(sessions) if s), [])


def engine_sections(lines: list[str]) -> list[tuple[str, list[str]]]:
    """The engine log as (start time "YYYY-MM-DD HH:MM:SS", lines after that start), one per engine start."""
    sections: list[tuple[str, list[str]]] = []
    for line in lines:
        if line.startswith(ENGINE_START):
            sections.append((line[len(ENGINE_START):len(ENGINE_START) + 19], []))
        elif sections:
            sections[-1][1].append(line)
    return sections


def crash_from_logs(agent_lines: list[str], engine_lines: list[str]) -> Check:
    """The last engine exit of the last agent run, from the agent's log, with the engine log's lines of
    the engine that ended; without such a line, what the engine's last run logged if it reads like an error."""
    sections = engine_sections(engine_lines)
    exits = [m for m in map(EXIT_LINE.match, last_session(agent_lines)) if m]
    if exits:
        last = exits[-1]
        before = [s for s in sections if s[0] <= last["at"]]
        tail = (before[-1][1] if before else [])[-LOG_TAIL_LINES:]
        detail = f"{last['model']}: {last['what']}, at {last['at']} (in the last agent run)"
        return Check(CRASH, WARN, detail, f"{ENGINE_LOGS}; if it happens again, report it", tail)
    if sections:
        at, lines = sections[-1]
        errors = [line for line in lines if CRASH_WORDS.search(line)]
        if errors:
            return Check(CRASH, WARN, f"the engine started at {at} logged: {errors[-1].strip()[:200]}",
                         f"{ENGINE_LOGS}; if it happens again, report it", lines[-LOG_TAIL_LINES:])
    if not agent_lines and not engine_lines:
        return Check(CRASH, OK, "none (no agent has run here yet)", log_tail=[])
    return Check(CRASH, OK, "none in the logs of the last agent run", log_tail=[])


def check_crash(ctx: Context) -> Check:
    from slp.engine.process import tail_lines

    status, _ = ctx.agent_status
    if status:
        return crash_from_status(status)
    log = ctx.settings.paths
    return crash_from_logs(tail_lines(log.agent_log, 20000, max_bytes=512 * 1024),
                           tail_lines(log.engine_log, 20000, max_bytes=256 * 1024))


# ----------------------------------------------------------------------------- 10. service

def service_verdict(info: Any, kind: str) -> Check:
    """`info`: slp.service's ServiceStatus of the agent's unit; `kind`: "systemd user unit", "launchd agent"."""
    if not info.installed:
        return Check("service", OK, "not installed (optional)")
    where = f"{kind} {info.path}"
    if info.active is None:
        return Check("service", WARN, f"{where} is installed, but its manager cannot be asked: {info.detail}",
                     "see `slp service status`")
    if not info.active:
        return Check("service", WARN, f"{where} is installed but {info.state}",
                     "start it with `slp agent start`; see `slp service status`")
    pid = f", pid {info.pid}" if info.pid else ""
    if info.up_to_date is False:
        return Check("service", WARN, f"{where} is {info.state}{pid}, but differs from what `slp service install` "
                     "would write now", "run `slp service install` again")
    return Check("service", OK, f"{where} is {info.state}{pid}")


def check_service(ctx: Context) -> Check:
    from slp.service import ServiceError, get_manager, status

    try:
        manager = get_manager()
        info = status(ctx.settings, manager=manager)
    except ServiceError as exc:
        return Check("service", OK, f"{exc} (optional)")
    return service_verdict(info, manager.kind)


# ----------------------------------------------------------------------------- 11. workers

def workers_verdict(rows: list[dict]) -> Check:
    """`rows`: {address, state, detail} of each configured RPC worker, as probed or as the agent last saw it."""
    if not rows:
        return Check("workers", OK, "none configured (optional)")
    good = ("ready", "in-use")
    parts = [f"{r['address']} {r['state']}" + ("" if r["state"] in good else f" ({r.get('detail')})") for r in rows]
    if any(r["state"] not in good for r in rows):
        return Check("workers", WARN, "; ".join(parts),
                     "start each one there with `slp worker start`, or remove it from SLP_WORKERS")
    return Check("workers", OK, "; ".join(parts))


def check_workers(ctx: Context) -> Check:
    from slp.worker.probe import check_workers as probe_all

    addresses = list(ctx.settings.workers)
    status, _ = ctx.agent_status
    # A worker that an engine holds cannot answer anyone else: the running agent's word is taken for those.
    seen = {w.get("address"): w for w in (status or {}).get("workers") or [] if isinstance(w, dict)}
    probes = {p.address: {"address": p.address, "state": p.state, "detail": p.detail}
              for p in probe_all([a for a in addresses if a not in seen], timeout=PROBE_TIMEOUT)}
    return workers_verdict([seen.get(a) or probes[a] for a in addresses])


# ----------------------------------------------------------------------------- all of them

CHECKS: tuple[tuple[str, Callable[[Context], Check]], ...] = (
    ("python", check_python), ("engine", check_engine), ("cpu", check_cpu), ("gpu", check_gpu),
    ("memory", check_memory), ("disk", check_disk), ("port", check_port), ("agent", check_agent),
    (CRASH, check_crash), ("service", check_service), ("workers", check_workers),
)


def run_checks(ctx: Optional[Context] = None) -> list[Check]:
    """Every check in order; one that raises is reported as its own fail line (never a traceback)."""
    ctx = ctx or Context.load()
    results = []
    for name, check in CHECKS:
        try:
            results.append(check(ctx))
        except Exception as exc:  # noqa: BLE001 - the point of doctor: report, never crash
            results.append(Check(name, FAIL, f"the check could not run: {type(exc).__name__}: {exc}",
                                 "report this as a bug in `slp doctor`"))
    return results
