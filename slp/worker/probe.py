"""Ask a llama.cpp RPC worker who it is: the protocol's hello, then the memory of its devices.

The wire format (ggml/src/ggml-rpc/ggml-rpc.cpp of the pinned build, protocol 7.0.0):
  request:  | command (1 byte) | payload size (uint64, little endian) | payload |
  response: | payload size (uint64) | payload |
A connection must start with HELLO (command 14; it has kept that number in every version), whose
request carries 24 bytes of transport capabilities (all zero: plain TCP) and whose response is
{major, minor, patch, padding, 24 bytes of capabilities}. llama-server refuses a worker whose major
version differs from its own or whose minor version is newer; older protocols (before 4.x) had an
empty hello request and a 3-byte response, and close the connection on ours, which we report as such.
After the hello, DEVICE_COUNT (15) and GET_DEVICE_MEMORY (11) give each device's free and total bytes.

A worker serves one client at a time (its accept loop is sequential, with a listen backlog of 1): while
an engine holds it, a new connection is accepted by the kernel but not answered. So a worker in use
cannot be asked, and a connected-but-silent worker is either busy or stopped; callers that know which
workers an engine holds must not probe those (see slp.worker.pool).

Everything here is blocking (sockets with timeouts) and thread-safe; `check_workers` probes several
workers at once in threads, so a set of workers costs one timeout at most.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Optional

# The protocol of the llama.cpp this slp builds (ggml/include/ggml-rpc.h: RPC_PROTO_*_VERSION).
# tests/test_workers.py checks it against the source and against a real worker.
PROTOCOL = (7, 0, 0)
CMD_GET_DEVICE_MEMORY = 11
CMD_HELLO = 14
CMD_DEVICE_COUNT = 15
CONN_CAPS_SIZE = 24
HELLO_RESPONSE_SIZE = 4 + CONN_CAPS_SIZE
MAX_DEVICES = 16  # more than any worker has; bounds what a confused peer can make us do

DEFAULT_PORT = 50052  # llama.cpp's rpc-server default
DEFAULT_TIMEOUT = 2.0


class ProbeFailed(Exception):
    """The worker did not complete the exchange; `state` says how (down, not-answering, incompatible...)."""

    def __init__(self, state: str, detail: str, version: Optional[tuple[int, int, int]] = None):
        super().__init__(detail)
        self.state = state
        self.detail = detail
        self.version = version


@dataclass
class WorkerProbe:
    """What one probe of one worker found. `state`: ready, down, not-answering, incompatible, invalid."""

    address: str
    state: str
    detail: str
    rtt_ms: Optional[float] = None  # the hello's round trip
    version: Optional[str] = None
    devices: list[dict] = field(default_factory=list)  # [{"free_bytes", "total_bytes"}] per device
    checked_at: float = field(default_factory=time.time)

    @property
    def ok(self) -> bool:
        return self.state == "ready"

    @property
    def memory(self) -> Optional[dict]:
        """Free and total bytes over the worker's devices (None when it did not say)."""
        if not self.devices:
            return None
        return {"free_bytes": sum(d["free_bytes"] for d in self.devices),
                "total_bytes": sum(d["total_bytes"] for d in self.devices)}

    def to_dict(self) -> dict:
        data = asdict(self)
        data["memory"] = self.memory
        return data


def split_address(address: str) -> tuple[str, int]:
    """("host", port) from "host:port" or "[v6]:port". Raises ValueError with a readable message."""
    text = address.strip()
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{address!r} is not host:port")
    return host, int(port)


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost: addresses no other machine can reach."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionResetError("closed")
        data += chunk
    return bytes(data)


def _command(sock: socket.socket, cmd: int, payload: bytes) -> None:
    sock.sendall(struct.pack("<BQ", cmd, len(payload)) + payload)


def _response(sock: socket.socket, max_size: int = 1 << 16) -> bytes:
    (size,) = struct.unpack("<Q", _recv_exact(sock, 8))
    if size > max_size:
        raise ProbeFailed("invalid", f"answered with a {size}-byte message: not a llama.cpp RPC worker")
    return _recv_exact(sock, size)


def compatible(version: tuple[int, int, int], ours: tuple[int, int, int] = PROTOCOL) -> bool:
    """llama-server's own rule (negotiate_hello): same major version, minor not newer than ours."""
    return version[0] == ours[0] and version[1] <= ours[1]


def hello(sock: socket.socket) -> tuple[int, int, int]:
    """Send HELLO on a fresh connection; return the worker's protocol version. Raises ProbeFailed."""
    _command(sock, CMD_HELLO, bytes(CONN_CAPS_SIZE))
    try:
        payload = _response(sock)
    except ConnectionResetError:
        raise ProbeFailed("incompatible", "closed the connection on the RPC hello: a llama.cpp build of "
                          f"another RPC protocol (older than {PROTOCOL[0]}.x?); run the same build on both ends")
    if len(payload) < 3:
        raise ProbeFailed("invalid", f"answered the hello with {len(payload)} bytes: not a llama.cpp RPC worker")
    version = (payload[0], payload[1], payload[2])
    if not compatible(version) or len(payload) != HELLO_RESPONSE_SIZE:
        ours = ".".join(map(str, PROTOCOL))
        theirs = ".".join(map(str, version))
        raise ProbeFailed("incompatible", f"speaks RPC protocol {theirs}, this engine needs {ours} "
                          "(a different llama.cpp build); run the same slp/llama.cpp build on both ends",
                          version)
    return version


def device_memory(sock: socket.socket) -> list[dict]:
    """Free and total bytes of each device the worker serves (after a successful hello)."""
    _command(sock, CMD_DEVICE_COUNT, b"")
    payload = _response(sock)
    if len(payload) != 4:
        raise ProbeFailed("invalid", "answered DEVICE_COUNT with an odd message")
    (count,) = struct.unpack("<I", payload)
    devices = []
    for device in range(min(count, MAX_DEVICES)):
        _command(sock, CMD_GET_DEVICE_MEMORY, struct.pack("<I", device))
        payload = _response(sock)
        if len(payload) != 16:
            raise ProbeFailed("invalid", "answered GET_DEVICE_MEMORY with an odd message")
        free, total = struct.unpack("<QQ", payload)
        devices.append({"free_bytes": free, "total_bytes": total})
    return devices


def probe_worker(address: str, timeout: float = DEFAULT_TIMEOUT, memory: bool = True) -> WorkerProbe:
    """Connect, hello, and (with `memory`) read the devices' memory; never raises.

    Blocks for at most about `timeout` seconds per step. A worker that accepts the connection but does not
    answer is `not-answering`: stopped (SIGSTOP), wedged, or serving another client (an engine).
    """
    try:
        host, port = split_address(address)
    except ValueError as exc:
        return WorkerProbe(address, "invalid", str(exc))
    started = time.perf_counter()
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except socket.timeout:
        return WorkerProbe(address, "down", f"no connection within {timeout:g}s (host unreachable or filtered)")
    except ConnectionRefusedError:
        return WorkerProbe(address, "down", "connection refused (no worker listening)")
    except OSError as exc:
        return WorkerProbe(address, "down", f"cannot connect: {exc.strerror or exc}")
    with sock:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            version = hello(sock)
            rtt_ms = round((time.perf_counter() - started) * 1000, 3)
            devices = device_memory(sock) if memory else []
        except ProbeFailed as exc:
            return WorkerProbe(address, exc.state, exc.detail,
                               version=".".join(map(str, exc.version)) if exc.version else None)
        except socket.timeout:
            return WorkerProbe(address, "not-answering", f"connected, but no answer to the RPC hello within "
                               f"{timeout:g}s (stopped, wedged, or serving another engine)")
        except OSError as exc:
            return WorkerProbe(address, "down", f"connection lost during the hello: {exc.strerror or exc}")
    return WorkerProbe(address, "ready", f"RPC protocol {'.'.join(map(str, version))}", rtt_ms=rtt_ms,
                       version=".".join(map(str, version)), devices=devices)


def check_workers(addresses: list[str], timeout: float = DEFAULT_TIMEOUT) -> list[WorkerProbe]:
    """Probe every address at once (threads); results in the order given. Blocks about `timeout` at most."""
    if not addresses:
        return []
    with ThreadPoolExecutor(max_workers=min(len(addresses), 16), thread_name_prefix="slp-worker-probe") as pool:
        return list(pool.map(lambda address: probe_worker(address, timeout), addresses))
