"""The things measured: the bare engine, the agent over an identical engine, and any other base URL.

The direct engine is started exactly as the agent's supervisor starts its own: the same binary
(`find_engine`), the same model file, the argv from `engine_command` with the same Settings, the
key in LLAMA_API_KEY, spawned by `slp.engine.process.spawn`. Only the port, the key's value and the
log file differ. The agent is a separate process started and stopped through the CLI.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator, Optional

import aiohttp
import psutil

from slp.engine.command import engine_command
from slp.engine.process import EngineCommand, spawn, terminate
from slp.models.store import ModelStore
from slp.settings import Settings

from bench.load import BenchError, make_session

SLP = [sys.executable, "-m", "slp"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def engine_alias(models: ModelStore, model_path: Path) -> str:
    """The --alias the agent gives this model (same rule as slp.server.app.create_app)."""
    found = models.resolve(model_path.stem)
    return found.aliases[0] if found and found.aliases else model_path.stem


class Target:
    """An OpenAI-compatible base URL (ending in /v1) plus the headers a client must send."""

    name: str
    base: str
    headers: dict
    model: str
    session: Optional[aiohttp.ClientSession] = None

    def open_session(self) -> aiohttp.ClientSession:
        if self.session is None or self.session.closed:
            self.session = make_session()
        return self.session

    async def close_session(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None

    @property
    def pid(self) -> Optional[int]:
        """The process whose cost is measured (None for targets we did not start)."""
        return None


class DirectEngine(Target):
    def __init__(self, settings: Settings, binary: Path, model_path: Path, alias: str, log_path: Path):
        self.name = "direct"
        self.settings, self.binary, self.model_path, self.model = settings, binary, model_path, alias
        self.log_path = log_path
        self.proc: Optional[asyncio.subprocess.Process] = None
        self.command: Optional[EngineCommand] = None
        self.base, self.headers = "", {}

    def make_command(self) -> EngineCommand:
        key = secrets.token_urlsafe(32)
        command = engine_command(self.settings, self.binary, self.model_path, free_port(), key, self.model)
        return dataclasses.replace(command, log_path=self.log_path)

    async def start(self, timeout: float = 120.0) -> None:
        """Spawn the engine and return once /health answers 200 (polled every 10 ms)."""
        self.command = self.make_command()
        port = self.command.argv[self.command.argv.index("--port") + 1]
        self.base = f"http://127.0.0.1:{port}/v1"
        self.headers = {"Authorization": f"Bearer {self.command.env['LLAMA_API_KEY']}"}
        self.proc = await spawn(self.command)
        session = self.open_session()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.returncode is not None:
                raise BenchError(f"the direct engine exited ({self.proc.returncode}); see {self.log_path}")
            try:
                async with session.get(f"http://127.0.0.1:{port}/health") as resp:
                    await resp.read()
                    if resp.status == 200:
                        return
            except (aiohttp.ClientError, OSError):
                pass
            await asyncio.sleep(0.01)
        raise BenchError(f"the direct engine was not healthy within {timeout:.0f}s; see {self.log_path}")

    async def stop(self) -> None:
        await self.close_session()
        if self.proc is not None:
            await terminate(self.proc, self.settings.stop_grace)
            self.proc = None

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc is not None else None


class Agent(Target):
    """`python -m slp agent start` with its own SLP_HOME and port; stopped with `slp agent stop`."""

    def __init__(self, env: dict, home: Path, port: int, model: str):
        self.name = "agent"
        self.env, self.home, self.port, self.model = env, home, port, model
        self.base = f"http://127.0.0.1:{port}/v1"
        self.headers: dict = {}
        self.agent_pid: Optional[int] = None
        self.engine_pid: Optional[int] = None

    def cli(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        proc = subprocess.run([*SLP, *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise BenchError(f"slp {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout}")
        return proc

    def start(self) -> None:
        """Blocks until the CLI says the engine is ready (that is what `slp agent start` does)."""
        self.cli("agent", "start")
        state = json.loads((self.home / "run" / "agent.json").read_text())
        self.agent_pid, self.engine_pid = state["agent_pid"], state.get("engine_pid")

    async def stop(self) -> None:
        await self.close_session()
        try:
            self.cli("agent", "stop", timeout=60)
        finally:
            self.agent_pid = self.engine_pid = None

    def kill_leftovers(self) -> None:
        """Last resort on an aborted run: SIGKILL whatever still runs with this run's SLP_HOME (the agent
        and its engine), e.g. an agent that was still starting when the run was interrupted."""
        for proc in psutil.process_iter(["environ"]):
            try:
                if (proc.info["environ"] or {}).get("SLP_HOME") == str(self.home) and proc.pid != os.getpid():
                    proc.kill()
            except psutil.Error:
                continue

    @property
    def pid(self) -> Optional[int]:
        return self.agent_pid


class External(Target):
    """Any OpenAI-compatible base URL given with --target NAME=URL (measured for workloads a and b)."""

    def __init__(self, name: str, url: str, key: Optional[str] = None):
        url = url.rstrip("/")
        self.name = name
        self.base = url if url.endswith("/v1") else url + "/v1"
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.model = "default"

    async def discover_model(self) -> None:
        """The first model the target lists (falls back to 'default' when it lists none)."""
        session = self.open_session()
        try:
            async with session.get(self.base + "/models", headers=self.headers) as resp:
                if resp.status == 200:
                    data = await resp.json(content_type=None)
                    items = data.get("data") or data.get("models") or []
                    if items:
                        self.model = items[0].get("id") or items[0].get("name") or self.model
        except (aiohttp.ClientError, OSError, ValueError, AttributeError) as exc:
            raise BenchError(f"target {self.name} at {self.base} is not reachable: {exc}")


def process_cpu_s(pid: Optional[int]) -> Optional[float]:
    if not pid:
        return None
    try:
        t = psutil.Process(pid).cpu_times()
        return t.user + t.system
    except psutil.Error:
        return None


def process_rss(pid: Optional[int]) -> Optional[int]:
    if not pid:
        return None
    try:
        return psutil.Process(pid).memory_info().rss
    except psutil.Error:
        return None


def agent_env(home: Path, port: int, models_dir: Path) -> dict:
    env = {**os.environ, "SLP_HOME": str(home), "SLP_HOST": "127.0.0.1", "SLP_PORT": str(port),
           "SLP_MODELS_DIR": str(models_dir)}
    env.pop("SLP_API_KEY", None)  # the agent listens on loopback; no client key, like the direct engine's own
    return env


@contextlib.contextmanager
def foreground_agent(prefix: str, models_dir: Path,
                     argv: Optional[list[str]] = None) -> Iterator[tuple[int, subprocess.Popen]]:
    """An agent of its own (throwaway home, free port, the models in `models_dir`) run in the foreground by `argv`
    (default `python -m slp agent start --foreground`), yielded as (port, process) once `slp agent status`
    says it serves; stopped (SIGTERM, then SIGKILL to its group) and its home removed afterwards."""
    home = Path(tempfile.mkdtemp(prefix=prefix))
    port = free_port()
    env = agent_env(home, port, models_dir)
    agent = subprocess.Popen(argv or [sys.executable, "-m", "slp", "agent", "start", "--foreground"], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while subprocess.run([sys.executable, "-m", "slp", "agent", "status"], env=env,
                             capture_output=True).returncode != 0:
            if agent.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the agent did not start; see " + str(home / "logs" / "agent.log"))
            time.sleep(0.2)
        yield port, agent
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(agent.pid, signal.SIGKILL)
            agent.wait()
        shutil.rmtree(home, ignore_errors=True)
