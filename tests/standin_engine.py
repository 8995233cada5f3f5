"""A stand-in for llama-server (a stand-in, named as such; llama-swap's `simple-responder` plays the same
part in its tests), so the supervisor's and the proxy's logic can be tested in seconds.

It takes llama-server's command line (`--host`, `--port`, `--api-key` or LLAMA_API_KEY, `-m/--model`,
`-a/--alias`, `-n/--n-predict`; everything else is ignored) and answers what slp asks of an engine:
`/health` (503 "Loading model" while it "loads"), `/v1/models`, `/metrics` (Prometheus text with the
`llamacpp:` prefix) and `/v1/chat/completions`, as JSON or as an SSE stream in llama-server's shape
(a role event, one event per token, a finish event with `timings`, a usage event with empty `choices`
when `stream_options.include_usage` is set, then `data: [DONE]`). Replies are deterministic: token i
is " w<i>", prompt tokens are the words of the messages, so a test knows every count in advance.

What the real engine cannot be made to do on demand, this one does when told:
- per request, a `standin` object in the body (slp passes unknown fields on to the engine):
  `die_after` N events: SIGKILL itself mid-stream (0: before any byte, a crash in the request's first
  decode), or die by `die_signal` (e.g. "SIGSEGV"); `stall_after` N events: send nothing more and use no
  CPU, while `/health` still answers (llama.cpp's mid-decode wedge; a non-streamed request gets no answer
  at all); `status` S: answer HTTP S with llama-server's error body; `token_delay` seconds between tokens
  (a slow engine).
- per process, from the environment: STANDIN_LOAD_S (seconds of "Loading model" before ready),
  STANDIN_EXIT_AT_START (exit with that code at once: a crash loop), STANDIN_IGNORE_TERM (ignore
  SIGTERM, so a stop must escalate to SIGKILL), STANDIN_CRASH_AT_LOAD (`1`: die by SIGSEGV while
  "Loading model", after STANDIN_LOAD_S or 0.1 s, unless the command line has `--no-repack`, as
  llama-server does on Xeons with AMX, llama.cpp #20824; `always`: with `--no-repack` too),
  STANDIN_TOKEN_DELAY (seconds between streamed tokens, for every request: a client that cannot add the
  per-request `standin` object, such as `slp chat`, gets a slow reply to interrupt), STANDIN_RECORD (a folder: each request's body and the exact bytes of each reply are written there,
  `<pid>-<n>.request.json` and `<pid>-<n>.reply`, so a test can compare what the client got with what
  the engine sent).

Run: python tests/standin_engine.py --port 8080 [--api-key K] [-m FILE] [--alias NAME] [...]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import resource
import signal
import sys
import time
from pathlib import Path
from typing import Optional

from aiohttp import web

FINGERPRINT = "b0-standin"
PUBLIC = {"/health", "/v1/health", "/models", "/v1/models"}  # llama-server's paths open without the key


def words(messages: object) -> int:
    """The prompt's token count: the words of every message's text content."""
    count = 0
    for message in messages if isinstance(messages, list) else ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            count += len(content.split())
    return max(count, 1)


def die(told: dict) -> None:
    """End this process by a signal, as a crashed engine does (SIGKILL unless told another)."""
    sig = signal.Signals[told.get("die_signal", "SIGKILL")]
    if sig is not signal.SIGKILL:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a stand-in's crash leaves no core file
    os.kill(os.getpid(), sig)


def crash_at_load(argv: list[str]) -> bool:
    """STANDIN_CRASH_AT_LOAD: whether this process is to die while it loads."""
    mode = os.environ.get("STANDIN_CRASH_AT_LOAD")
    return mode == "always" or (bool(mode) and "--no-repack" not in argv)


def event(data: dict) -> bytes:
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


class StandIn:
    def __init__(self, args: argparse.Namespace, crashing: bool = False):
        self.crashing = crashing  # never ready: it dies while "Loading model"
        self.alias = args.alias or (Path(args.model).name if args.model else "standin")
        self.key = args.api_key or os.environ.get("LLAMA_API_KEY")
        self.n_predict = args.n_predict
        self.ready_at = time.monotonic() + float(os.environ.get("STANDIN_LOAD_S", "0"))
        self.record = Path(os.environ["STANDIN_RECORD"]) if os.environ.get("STANDIN_RECORD") else None
        self.serial = itertools.count(1)
        self.prompt_total = 0
        self.predicted_total = 0
        self.processing = 0

    # ------------------------------------------------------------------ plumbing

    @web.middleware
    async def auth(self, request: web.Request, handler):
        if self.key and request.path not in PUBLIC and request.headers.get("Authorization") != f"Bearer {self.key}":
            return self.error(401, "Invalid API Key", "authentication_error")
        return await handler(request)

    @staticmethod
    def error(status: int, message: str, type_: str) -> web.Response:
        return web.json_response({"error": {"code": status, "message": message, "type": type_}}, status=status)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.auth])
        app.router.add_get("/health", self.health)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_post("/v1/chat/completions", self.chat)
        if self.crashing:
            app.on_startup.append(self._crash_while_loading)
        return app

    @staticmethod
    async def _crash_while_loading(app: web.Application) -> None:
        def crash() -> None:
            print("stand-in: crashing while loading (SIGSEGV)", flush=True)
            die({"die_signal": "SIGSEGV"})

        asyncio.get_running_loop().call_later(float(os.environ.get("STANDIN_LOAD_S") or 0.1), crash)

    # ------------------------------------------------------------------ routes

    async def health(self, request: web.Request) -> web.Response:
        if self.crashing or time.monotonic() < self.ready_at:
            return self.error(503, "Loading model", "unavailable_error")
        return web.json_response({"status": "ok"})

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": self.alias, "object": "model", "created": 0, "owned_by": "llamacpp", "meta": {}}]})

    async def metrics(self, request: web.Request) -> web.Response:
        lines = []
        for name, kind, value in (("prompt_tokens_total", "counter", self.prompt_total),
                                  ("tokens_predicted_total", "counter", self.predicted_total),
                                  ("requests_processing", "gauge", self.processing)):
            lines += [f"# HELP llamacpp:{name} {name.replace('_', ' ')}", f"# TYPE llamacpp:{name} {kind}",
                      f"llamacpp:{name} {value}"]
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")

    async def chat(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        body = json.loads(raw)
        n = next(self.serial)
        if self.record is not None:  # the bytes as they came, so a test can tell a copy from a re-encoding
            (self.record / f"{os.getpid()}-{n}.request.json").write_bytes(raw)
        told = body.get("standin") or {}
        if told.get("die_after") is not None and int(told["die_after"]) == 0:
            die(told)
        if told.get("status"):
            reply = self.error(int(told["status"]), told.get("message", "stand-in refusal"),
                               told.get("type", "invalid_request_error"))
            self._record(n, reply.body)
            return reply
        if not body.get("stream") and told.get("stall_after") is not None:
            await asyncio.Event().wait()  # wedged before answering: no byte, no CPU, until killed
        prompt = words(body.get("messages"))
        limit = body.get("max_tokens") or body.get("n_predict") or self.n_predict
        limit = limit if isinstance(limit, int) and limit > 0 else 16
        self.prompt_total += prompt
        self.processing += 1
        try:
            if body.get("stream"):
                return await self._stream(request, n, body, told, prompt, limit)
            tokens = [f" w{i}" for i in range(1, limit + 1)]
            self.predicted_total += limit
            reply = {"choices": [{"finish_reason": "length", "index": 0,
                                  "message": {"role": "assistant", "content": "".join(tokens)}}],
                     "created": 1700000000, "model": self.alias, "system_fingerprint": FINGERPRINT,
                     "object": "chat.completion", "id": f"chatcmpl-standin-{n}",
                     "usage": {"completion_tokens": limit, "prompt_tokens": prompt, "total_tokens": prompt + limit},
                     "timings": self._timings(prompt, limit)}
            data = json.dumps(reply, separators=(",", ":")).encode()
            self._record(n, data)
            return web.Response(body=data, content_type="application/json")
        finally:
            self.processing -= 1

    async def _stream(self, request: web.Request, n: int, body: dict, told: dict, prompt: int,
                      limit: int) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        sent = bytearray()
        base = {"created": 1700000000, "id": f"chatcmpl-standin-{n}", "model": self.alias,
                "system_fingerprint": FINGERPRINT, "object": "chat.completion.chunk"}

        async def send(data: bytes) -> None:
            sent.extend(data)
            self._record(n, bytes(sent))  # as it goes: a stream that dies mid-way is recorded up to there
            await response.write(data)
            count = sent.count(b"\n\n")
            if told.get("die_after") is not None and count >= int(told["die_after"]):
                await asyncio.sleep(0.05)  # the bytes reach the socket before the process dies
                die(told)
            if told.get("stall_after") is not None and count >= int(told["stall_after"]):
                await asyncio.Event().wait()  # wedged: no byte, no CPU, until killed

        await send(event({"choices": [{"finish_reason": None, "index": 0,
                                       "delta": {"role": "assistant", "content": None}}], **base}))
        for i in range(1, limit + 1):
            delay = told.get("token_delay") or os.environ.get("STANDIN_TOKEN_DELAY")
            if delay:
                await asyncio.sleep(float(delay))
            self.predicted_total += 1
            await send(event({"choices": [{"finish_reason": None, "index": 0, "delta": {"content": f" w{i}"}}],
                              **base}))
        usage = {"completion_tokens": limit, "prompt_tokens": prompt, "total_tokens": prompt + limit}
        with_usage = (body.get("stream_options") or {}).get("include_usage") is True
        finish = {"choices": [{"finish_reason": "length", "index": 0, "delta": {}}], **base}
        if not with_usage:  # llama-server puts the timings on the finish event when it sends no usage event
            finish["timings"] = self._timings(prompt, limit)
        await send(event(finish))
        if with_usage:
            await send(event({"choices": [], **base, "usage": usage, "timings": self._timings(prompt, limit)}))
        await send(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    @staticmethod
    def _timings(prompt: int, predicted: int) -> dict:
        return {"prompt_n": prompt, "prompt_ms": 1.0, "predicted_n": predicted, "predicted_ms": 2.0,
                "prompt_per_second": 1000.0 * prompt, "predicted_per_second": 500.0 * predicted}

    def _record(self, n: int, data: bytes) -> None:
        if self.record is not None:
            (self.record / f"{os.getpid()}-{n}.reply").write_bytes(data)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="stand-in for llama-server (tests only)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--api-key")
    parser.add_argument("-m", "--model")
    parser.add_argument("-a", "--alias")
    parser.add_argument("-n", "--n-predict", type=int, default=-1)
    args, _ = parser.parse_known_args(argv)  # llama-server's other flags mean nothing here
    return args


def main(argv: Optional[list[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    if os.environ.get("STANDIN_EXIT_AT_START"):
        print(f"stand-in: exiting at start with code {os.environ['STANDIN_EXIT_AT_START']}", flush=True)
        sys.exit(int(os.environ["STANDIN_EXIT_AT_START"]))
    if os.environ.get("STANDIN_IGNORE_TERM"):
        signal.signal(signal.SIGTERM, lambda *_: print("stand-in: SIGTERM ignored", flush=True))
    standin = StandIn(args, crashing=crash_at_load(argv))
    print(f"stand-in: listening on {args.host}:{args.port} as {standin.alias}", flush=True)
    # SIGTERM keeps its default action (the process ends at once), as a test of a stop expects.
    web.run_app(standin.app(), host=args.host, port=args.port, print=None, handle_signals=False)


if __name__ == "__main__":
    main()
