"""Prove that an engine build computes on this machine before anyone relies on it.

A binary can compile and still die on the machine that built it: llama.cpp's AMX kernels crashed with
SIGSEGV in their first batched matmul on newer Xeons (llama.cpp #20824), and a binary built for another
CPU dies by SIGILL. So build.py runs this on every new build before installing it:

- `llama-server` loads the model (its warm-up decode included), evaluates a prompt of at least
  `MIN_PROMPT_TOKENS` tokens in one batch, generates `GENERATED_TOKENS` tokens, and exits with code 0 on
  SIGTERM;
- `ggml-rpc-server` starts and answers the RPC protocol's hello.

A failure is a `SelfTestFailed` whose message names what died, how (the signal), where (the crashing
function, from gdb when it is installed) and what the log said last.

Standard library only: build.py loads this file by path, before slp and its dependencies are installed.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional

MIN_PROMPT_TOKENS = 64
GENERATED_TOKENS = 8
# About 110 tokens for SmolLM2's tokenizer: enough for one batched matmul of 64+ rows on any tokenizer.
PROMPT = ("The engine self-test reads this paragraph in one batch. A small language model runs on the "
          "processor of the machine that built it, and every kernel it uses must compute correctly there: "
          "the matrix multiplications for the prompt, the attention over the cache, and the sampling of each "
          "new token. If any of them faults, the build is refused and the user is told why, which function "
          "failed, and how to build an engine that works on this processor. Now continue the story: once "
          "upon a time, in a quiet town by the sea, there lived a")
LOAD_TIMEOUT = 300.0  # a cold page cache and a slow disk: loading 100 MB can take a while
ANSWER_TIMEOUT = 300.0
EXIT_GRACE = 20.0


class SelfTestFailed(Exception):
    """The build does not work here. `signal` is the signal that killed it (None: it exited or hung),
    `function` the crashing function when known, `log` where its output is."""

    def __init__(self, message: str, *, signal: Optional[str] = None, function: Optional[str] = None,
                 log: Optional[Path] = None):
        super().__init__(message)
        self.signal, self.function, self.log = signal, function, log


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rpc_probe():
    """slp's RPC hello (slp/worker/probe.py, standard library only), loaded by path like this file."""
    path = Path(__file__).resolve().parents[1] / "worker" / "probe.py"
    spec = importlib.util.spec_from_file_location("slp_selftest_rpc_probe", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while they are made
    spec.loader.exec_module(module)
    return module


def signal_name(returncode: Optional[int]) -> Optional[str]:
    if returncode is None or returncode >= 0:
        return None
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


def log_tail(path: Path, lines: int = 8) -> list[str]:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if line.strip()][-lines:]


FRAME = re.compile(r"^#\d+\s+(?:0x[0-9a-f]+ in )?([A-Za-z_][\w:~<>, ]*?)\s*\(")


def crashing_function(argv: list[str], timeout: float = 180.0) -> Optional[str]:
    """Run `argv` again under gdb (when installed) and return the innermost named function of the thread
    that faulted, or None. Frames of the C library and of unnamed code are skipped."""
    gdb = shutil.which("gdb")
    if gdb is None:
        return None
    cmd = [gdb, "-q", "-batch", "-nx", "-ex", "set pagination off", "-ex", "set debuginfod enabled off",
           "-ex", "run", "-ex", "bt 12", "--args", *argv]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    if "received signal" not in out:
        return None  # it did not fault this time
    for line in out.split("received signal", 1)[1].splitlines():
        match = FRAME.match(line.strip())
        if match and not match.group(1).startswith(("__", "??", "raise", "abort", "pthread_", "start_thread")):
            return match.group(1).strip()
    return None


def _post(url: str, body: dict, timeout: float) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _failed(what: str, proc: subprocess.Popen, argv: list[str], log: Path) -> SelfTestFailed:
    """The error for a process that died: signal, crashing function (gdb), the log's last words."""
    sig = signal_name(proc.returncode)
    how = f"killed by {sig}" if sig else f"exited with code {proc.returncode}"
    function = crashing_function(argv) if sig else None
    where = f" in {function}" if function else ""
    tail = log_tail(log, 1)
    said = f"; its log ends: {tail[-1].strip()[:200]}" if tail else ""
    return SelfTestFailed(f"{Path(argv[0]).name} {how}{where} {what}{said} (log: {log})",
                          signal=sig, function=function, log=log)


def _stop(proc: subprocess.Popen, grace: float) -> Optional[int]:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return None
    return proc.returncode


def check_server(server: Path, model: Path, log: Path) -> dict:
    """Load, a 64+ token prompt, 8 tokens, a clean exit. Returns the counts and tokens/s measured."""
    port = free_port()
    argv = [str(server), "--model", str(model), "--host", "127.0.0.1", "--port", str(port),
            "--ctx-size", "1024", "--parallel", "1", "--no-webui", "--seed", "1"]
    base = f"http://127.0.0.1:{port}"
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
    try:
        deadline = time.monotonic() + LOAD_TIMEOUT
        while not _healthy(f"{base}/health"):
            if proc.poll() is not None:
                raise _failed("while loading the model (its warm-up decode included)", proc, argv, log)
            if time.monotonic() > deadline:
                raise SelfTestFailed(f"llama-server did not load the model within {LOAD_TIMEOUT:.0f}s (log: {log})",
                                     log=log)
            time.sleep(0.1)
        started = time.monotonic()
        try:
            reply = _post(f"{base}/completion", {"prompt": PROMPT, "n_predict": GENERATED_TOKENS, "temperature": 0,
                                                 "ignore_eos": True, "cache_prompt": False}, ANSWER_TIMEOUT)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            if proc.poll() is None:
                time.sleep(0.5)  # a crash closes the socket a moment before the process is reaped
            if proc.poll() is not None:
                raise _failed(f"while evaluating a {MIN_PROMPT_TOKENS}+ token prompt", proc, argv, log)
            raise SelfTestFailed(f"llama-server did not answer the test prompt: {exc} (log: {log})", log=log)
        seconds = time.monotonic() - started
        timings = reply.get("timings") or {}
        prompt_n, predicted_n = int(timings.get("prompt_n") or 0), int(timings.get("predicted_n") or 0)
        if prompt_n < MIN_PROMPT_TOKENS or predicted_n < GENERATED_TOKENS:
            raise SelfTestFailed(f"llama-server evaluated {prompt_n} prompt tokens and generated {predicted_n} "
                                 f"(expected at least {MIN_PROMPT_TOKENS} and {GENERATED_TOKENS}) (log: {log})", log=log)
        code = _stop(proc, EXIT_GRACE)
        if code != 0:
            sig = signal_name(code)
            how = f"was killed by {sig}" if sig else ("did not exit on SIGTERM" if code is None else f"exited with code {code}")
            raise SelfTestFailed(f"llama-server {how} when asked to stop (expected a clean exit) (log: {log})",
                                 signal=sig, log=log)
        return {"prompt_tokens": prompt_n, "generated_tokens": predicted_n,
                "prompt_tokens_per_s": round(float(timings.get("prompt_per_second") or 0), 1),
                "decode_tokens_per_s": round(float(timings.get("predicted_per_second") or 0), 1),
                "answer_seconds": round(seconds, 2)}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def check_rpc_server(rpc_server: Path, log: Path, timeout: float = 30.0) -> None:
    """The RPC worker starts on loopback and answers the protocol's hello with a version we speak."""
    probe = _rpc_probe()
    port = free_port()
    argv = [str(rpc_server), "--host", "127.0.0.1", "--port", str(port)]
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
    try:
        deadline, last = time.monotonic() + timeout, "no answer"
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise _failed("at start", proc, argv, log)
            answer = probe.probe_worker(f"127.0.0.1:{port}", timeout=2.0, memory=True)
            if answer.ok:
                return
            last = f"{answer.state}: {answer.detail}"
            time.sleep(0.2)
        raise SelfTestFailed(f"ggml-rpc-server did not answer the RPC hello within {timeout:.0f}s: {last} (log: {log})",
                             log=log)
    finally:
        _stop(proc, 5)


def run(bin_dir: Path, model: Path, log: Optional[Path] = None) -> dict:
    """The whole self-test of the build in `bin_dir`; returns what the build record keeps."""
    log = log or Path(tempfile.mkstemp(prefix="slp-selftest-", suffix=".log")[1])
    started = time.monotonic()
    result = check_server(bin_dir / "llama-server", model, log)
    rpc_server = bin_dir / "ggml-rpc-server"
    if rpc_server.exists():
        check_rpc_server(rpc_server, log)
    result.update(ok=True, rpc_server=rpc_server.exists(), model=str(model),
                  seconds=round(time.monotonic() - started, 1),
                  at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    return result


if __name__ == "__main__":  # python -m slp.engine.selftest BIN_DIR MODEL.gguf: prove an installed build again
    if len(sys.argv) != 3:
        print("usage: python -m slp.engine.selftest BIN_DIR MODEL.gguf", file=sys.stderr)
        sys.exit(2)
    try:
        print(json.dumps(run(Path(sys.argv[1]), Path(sys.argv[2])), indent=2))
    except SelfTestFailed as exc:
        print(f"self-test failed: {exc}", file=sys.stderr)
        sys.exit(1)
