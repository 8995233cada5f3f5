"""What RPC workers cost on one machine: tokens/s of the default model on two loopback workers against the
same engine running it locally (`.venv/bin/python -m bench.workers`, about two minutes).

Both engines are started as the agent starts its own (the argv from `engine_command`, the same binary,
model and settings); the only difference is `--rpc` to two `ggml-rpc-server` processes of the same
build on 127.0.0.1. Requests take turns (local, workers, workers, local, ...) so drift in this machine's
speed hits both alike. Writes bench/results/workers.md.

Workers exist for models that do not fit one machine; this measures the price of the network hop and
the layer split, which on one box is all cost and no gain.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil

from bench.facts import cpu_model
from bench.load import BenchError, run_alternating
from bench.runner import default_models_dir
from bench.targets import DirectEngine, engine_alias, free_port
from slp.engine.binary import find_engine
from slp.engine.command import engine_command
from slp.engine.process import EngineCommand, spawn, terminate
from slp.models.store import ModelStore
from slp.settings import Settings
from slp.worker import WorkerSpec, worker_binary
from slp.worker.probe import probe_worker

RESULTS = Path(__file__).resolve().parent / "results" / "workers.md"


class WorkerEngine(DirectEngine):
    """The direct engine with `--rpc` to the given workers."""

    def __init__(self, *args, workers: list[str], **kwargs):
        super().__init__(*args, **kwargs)
        self.name, self.workers = "two loopback workers", workers

    def make_command(self) -> EngineCommand:
        import secrets

        command = engine_command(self.settings, self.binary, self.model_path, free_port(), secrets.token_urlsafe(32),
                                 self.model, workers=self.workers)
        return dataclasses.replace(command, log_path=self.log_path)


async def start_worker(binary: Path, port: int, log: Path) -> "asyncio.subprocess.Process":
    proc = await spawn(EngineCommand(WorkerSpec(port=port).worker_argv(binary), {}, log))
    deadline = time.monotonic() + 60
    while not (await asyncio.to_thread(probe_worker, f"127.0.0.1:{port}", 1.0)).ok:
        if proc.returncode is not None or time.monotonic() > deadline:
            raise BenchError(f"worker on port {port} did not start; see {log}")
        await asyncio.sleep(0.1)
    return proc


def rates(batch) -> list[float]:
    return [s.tokens / s.decode_s for s in batch.streams if s.decode_s > 0 and s.tokens > 1]


async def measure(requests: int, max_tokens: int) -> dict:
    settings = Settings()
    binary, build = find_engine(settings)
    rpc_binary = worker_binary(settings)
    models = ModelStore(default_models_dir())
    model_path = models.ensure_default(progress=False).path
    alias = engine_alias(models, model_path)
    work = Path(tempfile.mkdtemp(prefix="slp-bench-workers-"))
    load_before = psutil.getloadavg()
    ports = [free_port(), free_port()]
    procs, engines = [], []
    try:
        for port in ports:
            procs.append(await start_worker(rpc_binary, port, work / f"worker-{port}.log"))
        local = DirectEngine(settings, binary, model_path, alias, work / "local.log")
        local.name = "local"
        remote = WorkerEngine(settings, binary, model_path, alias, work / "workers.log",
                              workers=[f"127.0.0.1:{p}" for p in ports])
        for engine in (local, remote):
            await engine.start()
            engines.append(engine)
        body = {"messages": [{"role": "user", "content": "Tell a long story."}], "max_tokens": max_tokens,
                "ignore_eos": True, "stream": True}
        targets = [(e.open_session(), f"{e.base}/chat/completions", e.headers, {**body, "model": e.model})
                   for e in engines]
        await run_alternating(targets, 2, stream=True)  # warm-up
        batches = await run_alternating(targets, requests, stream=True)
        result = {}
        for engine, batch in zip(engines, batches):
            r = rates(batch)
            result[engine.name] = {
                "tokens_per_s_p50": statistics.median(r), "tokens_per_s_min": min(r), "tokens_per_s_max": max(r),
                "ttft_ms_p50": statistics.median(s.ttft_s for s in batch.streams) * 1000, "streams": len(r)}
        held = {f"127.0.0.1:{port}": psutil.Process(proc.pid).memory_info().rss for port, proc in zip(ports, procs)}
        return {"result": result, "worker_rss": held, "build": build or {}, "binary": str(binary),
                "requests": requests, "max_tokens": max_tokens, "load_before": load_before,
                "load_after": psutil.getloadavg()}
    finally:
        for engine in engines:
            await engine.stop()
        for proc in procs:
            await terminate(proc, 3)


def markdown(doc: dict) -> str:
    local, remote = doc["result"]["local"], doc["result"]["two loopback workers"]
    ratio = remote["tokens_per_s_p50"] / local["tokens_per_s_p50"]
    lines = [
        "# RPC workers: the price on one machine",
        "",
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} with `python -m bench.workers`: the default model,",
        f"{doc['requests']} streams of {doc['max_tokens']} tokens per target at concurrency 1, taking turns.",
        f"Machine: {cpu_model()}, {psutil.cpu_count()} logical CPUs, {psutil.virtual_memory().total / 2**30:.0f} GiB, "
        f"{platform.system()} {platform.machine()}; llama.cpp {doc['build'].get('commit', '?')[:12]} "
        f"(preset {doc['build'].get('preset', '?')}).",
        "",
        "| target | tokens/s p50 | min | max | time to first token p50 |",
        "|---|---|---|---|---|",
    ]
    for name, r in doc["result"].items():
        lines.append(f"| {name} | {r['tokens_per_s_p50']:.1f} | {r['tokens_per_s_min']:.1f} | "
                     f"{r['tokens_per_s_max']:.1f} | {r['ttft_ms_p50']:.1f} ms |")
    rss = ", ".join(f"{a} {b / 1e6:.0f} MB" for a, b in doc["worker_rss"].items())
    lines += ["", f"**Two loopback workers: {ratio:.2f}× the tokens/s of the local engine.**", "",
              f"The workers' resident memory with the model loaded (their share of its layers): {rss}.",
              f"Load average (1/5/15 min) before: {'/'.join(f'{x:.2f}' for x in doc['load_before'])}, after: "
              f"{'/'.join(f'{x:.2f}' for x in doc['load_after'])}; on a busy machine the engines compete with "
              "everything else for the cores, so compare runs made when it is quiet.", "",
              "Workers are for a model that does not fit one machine, not for speed on one box: every token "
              "crosses to each worker and back.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.workers", description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=12, help="streams per target (default 12)")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    try:
        doc = asyncio.run(measure(args.requests, args.max_tokens))
    except BenchError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    text = markdown(doc)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
