"""llama.cpp RPC workers with real processes: `slp worker` supervising the built ggml-rpc-server, agents
whose engines offload to them (on loopback, and across a veth pair into a network namespace the test
creates), and workers killed or stopped in the middle of a stream.

The one stand-in here is a tiny TCP server that answers the RPC hello with another protocol version
(named as such): a real worker of another llama.cpp build cannot be had on this machine.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import tarfile
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest
import requests

from conftest import REPO, SLP, free_port, kill_all_under, processes_under, wait_for
from slp.worker.probe import CMD_HELLO, CONN_CAPS_SIZE, PROTOCOL, probe_worker

MODEL = "slp-orchestra-mini"


def chat(agent, **extra) -> requests.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 8, **extra}
    return requests.post(f"{agent.url}/v1/chat/completions", json=body, timeout=120)


def serving_engine(agent, not_pid: int | None = None) -> int:
    """The pid of the agent's engine once it is ready (and is not `not_pid`)."""
    def check():
        engine = agent.status()["engine"]
        return engine["state"] == "ready" and engine["pid"] and engine["pid"] != not_pid and engine["pid"]
    return wait_for(check, 60, "a ready engine")


def engine_argv(agent) -> list[str]:
    return psutil.Process(serving_engine(agent)).cmdline()


def rpc_of(argv: list[str]) -> list[str]:
    return argv[argv.index("--rpc") + 1].split(",") if "--rpc" in argv else []


def workers_by_address(agent) -> dict:
    return {w["address"]: w for w in agent.status()["workers"]}


class Workers:
    """`slp worker` commands against one SLP_HOME (the workers' machine, here this one)."""

    def __init__(self, home: Path, netns: str | None = None):
        self.home = home
        self.netns = netns
        self.env = {**os.environ, "SLP_HOME": str(home)}

    def cli(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        return subprocess.run([*prefix, *SLP, "worker", *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def start(self, port: int, *extra: str) -> str:
        proc = self.cli("start", "--port", str(port), *extra)
        assert proc.returncode == 0, f"slp worker start failed: {proc.stdout}{proc.stderr}"
        return proc.stdout

    def state(self, port: int) -> dict:
        return json.loads((self.home / "run" / f"worker-{port}.json").read_text())

    def pid(self, port: int) -> int:
        return self.state(port)["worker_pid"]


@pytest.fixture
def workers(tmp_path):
    made: list[Workers] = []

    def factory(netns: str | None = None) -> Workers:
        w = Workers(tmp_path / f"workers{len(made)}", netns)
        made.append(w)
        return w

    yield factory
    for w in made:
        for path in (w.home / "run").glob("worker-*.json"):
            state = json.loads(path.read_text())
            if state.get("worker_pid") and psutil.pid_exists(state["worker_pid"]):
                os.kill(state["worker_pid"], signal.SIGCONT)  # a test may have stopped it
        subprocess.run([*SLP, "worker", "stop", "--all"], env=w.env, capture_output=True, timeout=60)
        kill_all_under(w.home)


@pytest.fixture
def agents(fresh_agent):
    """Agents over the real engine that a test may break: conftest's `fresh_agent` (stopped and reaped after)."""
    return fresh_agent


def stream_and(agent, after_events: int, action, max_tokens: int = 4000) -> tuple[list[bytes], float]:
    """Stream a long answer; run `action()` once `after_events` events arrived; return the events and how
    long the stream took to end after the action."""
    events: list[bytes] = []
    acted = None
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Count slowly."}], "stream": True,
            "max_tokens": max_tokens, "ignore_eos": True}
    with requests.post(f"{agent.url}/v1/chat/completions", json=body, stream=True, timeout=90) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if not line.startswith(b"data: "):
                continue
            events.append(line[6:])
            if len(events) == after_events:
                action()
                acted = time.monotonic()
    assert acted is not None, f"the stream ended after {len(events)} events, before the fault"
    return events, time.monotonic() - acted


# ----------------------------------------------------------------------------- the protocol itself


def pinned_rpc_header() -> str:
    """ggml-rpc.h of the pinned llama.cpp: from the vendor/ tree a build extracted here, else from the sdist
    build.py keeps in its cache (a fresh clone that reuses a cached engine extracts no vendor/ tree)."""
    vendored = REPO / "vendor" / "llama.cpp" / "ggml" / "include" / "ggml-rpc.h"
    if vendored.exists():
        return vendored.read_text()
    spec = importlib.util.spec_from_file_location("slp_build_for_workers", REPO / "build.py")
    build = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = build  # its dataclasses look their module up there
    spec.loader.exec_module(build)
    archive = build.cache_root() / "downloads" / build.read_pin().filename
    assert archive.exists(), f"neither {vendored} nor the cached sdist {archive}: run `python3 build.py`"
    with tarfile.open(archive) as tar:
        for member in tar:
            if member.name.endswith("/vendor/llama.cpp/ggml/include/ggml-rpc.h"):
                return tar.extractfile(member).read().decode()
    raise AssertionError(f"{archive} has no ggml-rpc.h")


def test_protocol_version_is_the_pinned_sources_and_a_real_workers(workers):
    header = pinned_rpc_header()
    source = tuple(int(re.search(rf"#define RPC_PROTO_{part}_VERSION\s+(\d+)", header).group(1))
                   for part in ("MAJOR", "MINOR", "PATCH"))
    assert source == PROTOCOL
    w = workers()
    port = free_port()
    out = w.start(port)
    assert f"127.0.0.1:{port}" in out and ".".join(map(str, PROTOCOL)) in out
    probe = probe_worker(f"127.0.0.1:{port}")
    assert probe.ok and probe.version == ".".join(map(str, PROTOCOL))
    assert probe.rtt_ms is not None and probe.rtt_ms < 1000
    total = psutil.virtual_memory().total
    assert probe.memory and 0 < probe.memory["free_bytes"] <= probe.memory["total_bytes"] <= total * 1.01


@contextmanager
def stand_in_worker(reply):
    """A stand-in for a worker of another llama.cpp build: reads one hello, answers with `reply(sock)`."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    stop = threading.Event()

    def serve():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except (socket.timeout, OSError):
                continue
            with conn:
                try:
                    conn.settimeout(2)
                    cmd, size = struct.unpack("<BQ", conn.recv(9, socket.MSG_WAITALL))
                    conn.recv(size, socket.MSG_WAITALL)
                    if cmd == CMD_HELLO:
                        reply(conn)
                except (OSError, struct.error):
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        server.close()


def newer_protocol(conn):  # what a worker of protocol 8.0.0 would answer, in today's layout
    conn.sendall(struct.pack("<Q", 4 + CONN_CAPS_SIZE) + bytes([8, 0, 0, 0]) + bytes(CONN_CAPS_SIZE))


def older_protocol(conn):  # workers before 4.x expect an empty hello and hang up on ours
    conn.close()


@pytest.mark.parametrize("reply, words", [(newer_protocol, "speaks RPC protocol 8.0.0, this engine needs 7.0.0"),
                                          (older_protocol, "closed the connection on the RPC hello")])
def test_a_worker_of_another_protocol_is_refused_with_a_clear_reason(reply, words):
    with stand_in_worker(reply) as address:
        probe = probe_worker(address)
    assert probe.state == "incompatible" and not probe.ok
    assert words in probe.detail and "same" in probe.detail


def test_agent_leaves_out_a_worker_of_another_protocol_and_names_it(workers, agents):
    w = workers()
    good = free_port()
    w.start(good)
    with stand_in_worker(newer_protocol) as stand_in:
        agent = agents(workers=f"{stand_in},127.0.0.1:{good}")
        agent.start()
        assert rpc_of(engine_argv(agent)) == [f"127.0.0.1:{good}"]
        seen = workers_by_address(agent)
        assert seen[stand_in]["state"] == "incompatible"
        assert "8.0.0" in seen[stand_in]["detail"] and "7.0.0" in seen[stand_in]["detail"]
        assert seen[f"127.0.0.1:{good}"]["state"] == "in-use"
        assert chat(agent).status_code == 200
        log = (agent.home / "logs" / "agent.log").read_text()
        assert f"worker {stand_in} not used (incompatible)" in log


# ----------------------------------------------------------------------------- the worker CLI


def test_non_loopback_bind_is_refused_without_the_flag(workers):
    w = workers()
    port = free_port()
    for command in (w.cli("start", "--host", "0.0.0.0", "--port", str(port)),
                    subprocess.run([SLP[0], "-m", "slp.worker", "--host", "0.0.0.0", "--port", str(port)],
                                   env=w.env, capture_output=True, text=True, timeout=60)):
        assert command.returncode == 1
        line = command.stderr.strip()
        assert "\n" not in line and "Traceback" not in line
        assert "refusing to bind 0.0.0.0" in line and "no authentication" in line and "--trusted-network" in line
    assert processes_under(w.home) == []
    assert not list(w.home.glob("run/worker-*.json"))
    help_text = w.cli("start", "--help").stdout
    assert "--trusted-network" in help_text and "no authentication" in " ".join(help_text.split())


def test_a_worker_that_cannot_bind_is_reported_not_taken_for_ready(workers):
    """The rpc-server exits 0 when its port is taken: readiness is the hello, not the exit code."""
    w = workers()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen(1)
        port = squatter.getsockname()[1]
        proc = w.cli("start", "--port", str(port))
    assert proc.returncode == 1
    line = proc.stderr.strip()
    assert "\n" not in line and "Traceback" not in line
    assert f"cannot listen on 127.0.0.1:{port}" in line and "taken" in line
    assert processes_under(w.home) == []


def test_worker_status_restart_and_stop(workers):
    w = workers()
    port = free_port()
    w.start(port)
    again = w.cli("start", "--port", str(port))
    assert again.returncode == 0 and "already running" in again.stdout
    status = json.loads(w.cli("status", "--json").stdout)
    assert [s["address"] for s in status] == [f"127.0.0.1:{port}"]
    assert status[0]["state"] == "ready" and status[0]["rss_bytes"] > 0 and status[0]["rtt_ms"] is not None
    first = w.pid(port)
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: w.state(port)["state"] == "ready" and w.state(port)["worker_pid"] != first, 30,
             "the supervisor to restart the worker")
    assert w.state(port)["restarts"] == 1 and "SIGKILL" in w.state(port)["last_exit"]["detail"]
    assert probe_worker(f"127.0.0.1:{port}").ok
    table = w.cli("status")
    assert table.returncode == 0 and f"127.0.0.1:{port}" in table.stdout and "ready" in table.stdout
    stop = w.cli("stop", "--port", str(port))
    assert stop.returncode == 0 and "stopped" in stop.stdout
    wait_for(lambda: processes_under(w.home) == [], 10, "the worker and its supervisor to be gone")
    assert not (w.home / "run" / f"worker-{port}.json").exists()
    assert probe_worker(f"127.0.0.1:{port}").state == "down"
    none = w.cli("status")
    assert none.returncode == 1 and "no slp worker" in none.stderr
    assert "no slp worker was running" in w.cli("stop", "--port", str(port)).stdout


def test_regression_a_client_gone_before_its_hello_answer_does_not_kill_the_worker(workers):
    """The rpc-server writes without MSG_NOSIGNAL: a hello queued while it served another client, whose
    sender hung up (a probe that timed out), killed it with SIGPIPE once it got there. slp's worker runs
    with SIGPIPE ignored."""
    w = workers()
    port = free_port()
    w.start(port)
    pid = w.pid(port)
    holder = socket.create_connection(("127.0.0.1", port), timeout=5)  # a client the worker serves
    holder.sendall(struct.pack("<BQ", CMD_HELLO, CONN_CAPS_SIZE) + bytes(CONN_CAPS_SIZE))
    holder.recv(8 + 4 + CONN_CAPS_SIZE, socket.MSG_WAITALL)
    assert probe_worker(f"127.0.0.1:{port}", timeout=0.5).state == "not-answering"  # sends a hello, hangs up
    holder.close()  # the worker now gets to the probe's connection and writes its answer into it
    wait_for(lambda: probe_worker(f"127.0.0.1:{port}", timeout=1).ok, 10, "the worker to answer again")
    assert w.pid(port) == pid and w.state(port)["restarts"] == 0 and psutil.pid_exists(pid)


# ----------------------------------------------------------------------------- engines on workers


def test_two_loopback_workers_serve_the_default_model(workers, agents):
    w = workers()
    ports = [free_port(), free_port()]
    for port in ports:
        w.start(port)
    addresses = [f"127.0.0.1:{p}" for p in ports]
    idle_rss = [psutil.Process(w.pid(port)).memory_info().rss for port in ports]
    agent = agents()
    config = agent.home / "config" / "config.toml"  # workers from config.toml this time (reloadable)
    config.parent.mkdir(parents=True)
    config.write_text(f"workers = {json.dumps(addresses)}\n")
    agent.start()
    argv = engine_argv(agent)
    assert rpc_of(argv) == addresses, argv
    for port, before in zip(ports, idle_rss):  # the model's layers really live on the workers
        grown = psutil.Process(w.pid(port)).memory_info().rss - before
        assert grown > 20e6, f"worker {port} holds only {grown / 1e6:.1f} MB more than idle"
    response = chat(agent)
    assert response.status_code == 200 and response.json()["choices"][0]["message"]["content"]
    seen = workers_by_address(agent)
    for address in addresses:
        assert seen[address]["state"] == "in-use" and seen[address]["engine"]
        assert seen[address]["rtt_ms"] is not None and seen[address]["memory"]["total_bytes"] > 0
    metrics = requests.get(f"{agent.url}/metrics", timeout=10).text
    for address in addresses:
        assert f'slp_worker_in_use{{address="{address}"}} 1.0' in metrics
        assert f'slp_worker_up{{address="{address}"}} 1.0' in metrics
    table = agent.cli("status", check=True).stdout
    assert all(f"{address} in-use" in table for address in addresses)
    from jsonschema import Draft202012Validator

    spec = agent.get("/openapi.json")  # what the agent documents, checked against what it answers
    status_schema = Draft202012Validator({"$ref": "#/components/schemas/Status", "components": spec["components"]})
    errors = [f"{e.json_path}: {e.message}" for e in status_schema.iter_errors(agent.status())]
    assert not errors, errors[:5]
    busy = json.loads(w.cli("status", "--json").stdout)
    assert {s["state"] for s in busy} == {"busy"}, "a worker an engine holds does not answer others"
    engine = serving_engine(agent)
    config.write_text(f'workers = ["{addresses[1]}"]\n')
    agent.cli("agent", "reload", check=True)
    assert rpc_of(psutil.Process(serving_engine(agent, not_pid=engine)).cmdline()) == [addresses[1]]
    assert [row["address"] for row in agent.status()["workers"]] == [addresses[1]]


def _kill_mid_stream(w, agents, sig: int, **settings: str):
    ports = [free_port(), free_port()]
    for port in ports:
        w.start(port)
    lost, kept = (f"127.0.0.1:{p}" for p in ports)
    agent = agents(workers=f"{lost},{kept}", **settings)
    agent.start()
    engine = serving_engine(agent)
    victim = w.pid(ports[0])
    events, took = stream_and(agent, 5, lambda: os.kill(victim, sig))
    last = json.loads(events[-1])
    assert last["error"]["code"] == "engine_failed", events[-3:]
    assert b"[DONE]" not in events[-1]
    assert f"lost RPC worker {lost}" in last["error"]["message"], last["error"]["message"]
    serving_engine(agent, not_pid=engine)
    assert rpc_of(engine_argv(agent)) == [kept]
    assert chat(agent).status_code == 200
    seen = workers_by_address(agent)
    assert seen[kept]["state"] == "in-use" and seen[lost]["state"] != "in-use"
    assert any(loss["address"] == lost for loss in agent.status()["worker_losses"])
    return agent, ports, took


def test_worker_sigkill_mid_stream_ends_the_stream_with_an_error_naming_it(workers, agents):
    w = workers()
    agent, ports, took = _kill_mid_stream(w, agents, signal.SIGKILL)
    assert took < 10, "the stream must end promptly"
    # The worker's supervisor brings it back; the next engine start uses it again.
    wait_for(lambda: w.state(ports[0])["state"] == "ready" and w.state(ports[0])["restarts"] == 1, 30,
             "the killed worker to be restarted")
    engine = serving_engine(agent)
    os.kill(engine, signal.SIGKILL)
    serving_engine(agent, not_pid=engine)
    assert rpc_of(engine_argv(agent)) == [f"127.0.0.1:{p}" for p in ports]


def test_worker_sigstop_mid_stream_is_caught_by_the_progress_watchdog(workers, agents):
    w = workers()
    agent, ports, took = _kill_mid_stream(w, agents, signal.SIGSTOP, stall_timeout="3", health_interval="1")
    assert took < 20, "a stopped worker must not hang the stream"
    assert "not-answering" in json.dumps(agent.status()["worker_losses"])
    os.kill(w.pid(ports[0]), signal.SIGCONT)


def test_worker_in_a_network_namespace_over_a_veth_pair(workers, agents):
    """A non-loopback address on this machine: a worker inside a namespace the test creates, reached over
    a veth pair on a private /30 of its own; the agent runs in the root namespace."""
    tag = uuid.uuid4().hex[:6]
    netns, outer, inner = f"slp-w{tag}", f"slpo{tag}", f"slpi{tag}"
    subnet = 100 + int(tag, 16) % 100
    host_ip, worker_ip = f"10.231.{subnet}.1", f"10.231.{subnet}.2"
    steps = [["ip", "netns", "add", netns],
             ["ip", "link", "add", outer, "type", "veth", "peer", "name", inner, "netns", netns],
             ["ip", "addr", "add", f"{host_ip}/30", "dev", outer], ["ip", "link", "set", outer, "up"],
             ["ip", "netns", "exec", netns, "ip", "addr", "add", f"{worker_ip}/30", "dev", inner],
             ["ip", "netns", "exec", netns, "ip", "link", "set", inner, "up"],
             ["ip", "netns", "exec", netns, "ip", "link", "set", "lo", "up"]]
    try:
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True, timeout=30)
            if done.returncode != 0:
                pytest.fail(f"cannot build the test network ({' '.join(step)}): {done.stderr.strip()} "
                            "- this test needs root (CAP_NET_ADMIN) and iproute2; it is not skipped")
        w = workers(netns)
        port = free_port()
        refused = w.cli("start", "--host", worker_ip, "--port", str(port))
        assert refused.returncode == 1 and "--trusted-network" in refused.stderr
        w.start(port, "--host", worker_ip, "--trusted-network")
        address = f"{worker_ip}:{port}"
        assert probe_worker(f"127.0.0.1:{port}").state == "down", "bound inside the namespace only"
        probe = probe_worker(address)
        assert probe.ok, probe.detail
        agent = agents(workers=address)
        agent.start()
        assert rpc_of(engine_argv(agent)) == [address]
        rss = psutil.Process(w.pid(port)).memory_info().rss
        assert rss > 40e6, f"the worker holds the model's layers ({rss / 1e6:.1f} MB)"
        assert chat(agent).status_code == 200
        assert workers_by_address(agent)[address]["state"] == "in-use"
        agent.stop()
        assert w.cli("stop", "--port", str(port)).returncode == 0
    finally:
        subprocess.run(["ip", "netns", "del", netns], capture_output=True, timeout=30)  # takes the veth pair
        subprocess.run(["ip", "link", "del", outer], capture_output=True, timeout=30)
    assert netns not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def test_service_install_worker_writes_its_own_unit_and_plist(workers):
    """`slp service install --worker`: a unit per port running the worker supervisor, beside (not instead
    of) the agent's; the bind check applies there too."""
    w = workers()
    for platform, needles in (("linux", ["Type=notify", "-m slp.worker --host 127.0.0.1 --port 50061",
                                         "no authentication", "SyslogIdentifier=slp-worker-50061"]),
                              ("darwin", ["<string>dev.slp.worker.50061</string>", "<string>slp.worker</string>",
                                          "<string>50061</string>"])):
        printed = subprocess.run([*SLP, "service", "install", "--worker", "--port", "50061", "--print", "--platform",
                                  platform], env=w.env, capture_output=True, text=True, timeout=60)
        assert printed.returncode == 0, printed.stderr
        for needle in needles:
            assert needle in printed.stdout, (needle, printed.stdout)
    from slp.service.worker import worker_manager

    assert worker_manager(50061, "linux").path.name == "slp-worker-50061.service"
    refused = subprocess.run([*SLP, "service", "install", "--worker", "--host", "0.0.0.0", "--print"], env=w.env,
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and "no authentication" in refused.stderr and "Traceback" not in refused.stderr
