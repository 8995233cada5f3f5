"""A project's prompt, computed once: its engine's KV state for the project's prefix kept on disk.

llama-server keeps prompts in memory only; an unload, keep-alive expiry, eviction, restart or agent stop
loses them, and a long system prompt is paid for again (seconds on a CPU). The engine can save a slot's
KV state to a file and restore it (`--slot-save-path`, `POST /slots/{id}?action=save|restore`); this
module ties that to projects:

- **Save** (`save`, the supervisor's last step before it stops a ready engine on purpose): the engine's
  idle slots are saved, the token ids at the head of each file say whose prefix it holds (the longest
  common prefix with each project's system prompt as the chat template renders it), and one file per
  project and model is kept; the rest are deleted. Bounded by STOPPING_GRACE (slp.lifecycle): a stop
  never waits longer.
- **Restore** (`prepare`, before a project's first request reaches an engine process): the entry whose
  key matches is checked (its sha256) and restored into an idle slot, and the request is sent to that
  slot (`id_slot`); later requests find the prefix there as llama.cpp always does. A missing entry is a
  miss; a corrupt one, one of another model, build or settings, or one the engine refuses, is deleted
  with a log line and the request goes on uncached: never a wrong answer, never an error to the client.

An entry's key: the model file's sha256, the engine build, the engine arguments that shape the KV cache
(context, slots, flash attention, GPU layers, template, safe mode...) and the sha256 of the project's
system prompt, which with the model's tokenizer and template fixes the prefix's tokens. Entries are
bounded in bytes (`prompt_cache_size`), least recently used evicted. Files: `<project>--<model>.bin`
(llama.cpp's sequence-state file) and its `.json` (key, sha256, tokens, dates), written after the data.
Models with a vision projector or a recurrent/hybrid architecture are skipped: their state is not a
prefix the engine can reuse.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

import aiohttp

from slp.models.fetch import file_sha256
from slp.paths import write_json_atomic

if TYPE_CHECKING:
    from slp.engine.pool import Engine
    from slp.projects.schema import Project, PromptCacheEntry
    from slp.server.observe import Metrics
    from slp.settings import Settings

log = logging.getLogger("slp.prompt_cache")

FORMAT = 1
CONTROL_TIMEOUT = 30.0  # one save, restore or tokenize call (a restore reads the whole file)
MATCH_SHARE = 0.9  # a slot holds a project's prefix when it shares this much of it (the template's turn end differs)
_USER_MARK = "slp-prefix-ends-here"  # a first user message, to cut the rendered prefix where it starts
_STATE_MAGIC = 0x67677371  # llama.cpp's LLAMA_STATE_SEQ_MAGIC ("ggsq")
_TOKEN_NULL = 0xFFFFFFFF  # server_tokens' packed form starts with LLAMA_TOKEN_NULL
# Arguments that do not change what a slot's KV state is (where it listens, how it is guarded or logged).
_NEUTRAL_ARGS = {"--host": 1, "--port": 1, "--alias": 1, "--threads": 1, "--poll": 1, "--n-predict": 1,
                 "--cache-ram": 1, "--metrics": 0, "--no-webui": 0, "--slot-save-path": 1, "--model": 1}
_RECURRENT_KEY = re.compile(r"\.(ssm|wkv|shortconv|time_mix|rwkv)[._]")


def _safe(text: str) -> str:
    """A file-name part llama-server accepts (letters, digits, - _ .)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)[:80]


def kv_args(argv: list[str]) -> list[str]:
    """The engine arguments that shape its KV state (its command less where it listens and such)."""
    out, skip = [], 0
    for arg in argv[1:]:
        if skip:
            skip -= 1
            continue
        if arg in _NEUTRAL_ARGS:
            skip = _NEUTRAL_ARGS[arg]
            continue
        out.append(arg)
    return out


def state_tokens(path: Path) -> list[int]:
    """The token ids at the head of a llama.cpp sequence-state file (llama-server's packed form or a plain
    list). Raises ValueError for a file that is not one."""
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12:
            raise ValueError("too short")
        magic, _version, count = struct.unpack("<3I", head)
        if magic != _STATE_MAGIC:
            raise ValueError("not a sequence-state file")
        data = f.read(4 * count)
    if len(data) < 4 * count:
        raise ValueError("cut short")
    packed = struct.unpack(f"<{count}I", data)
    if count >= 3 and packed[0] == _TOKEN_NULL:  # [NULL, version, n, tokens..., media]
        n = packed[2]
        return list(packed[3:3 + n])
    return list(packed)


def common_prefix(tokens: list[int], prefix: list[int]) -> int:
    """How many of `prefix`'s tokens open `tokens` (also past a BOS the template left out)."""
    best = 0
    for offset in (0, 1):
        n, limit = 0, min(len(prefix), len(tokens) - offset)
        while n < limit and tokens[offset + n] == prefix[n]:
            n += 1
        best = max(best, n)
    return best


def _file_identity(path: Path) -> str:
    """For a model whose sha256 is not recorded: its size and modification time (hashing gigabytes on the
    request path is not an option), which change whenever the file does."""
    try:
        stat = path.stat()
    except OSError:
        return f"unknown-{path.name}"
    return f"stat-{stat.st_size}-{stat.st_mtime_ns}"


class PromptStore:
    """The cache's files under one folder: look up, commit, discard, evict, list, clear (blocking calls)."""

    def __init__(self, root: Path, limit_bytes: int):
        self.root = root
        self.limit = limit_bytes

    def ready(self) -> Path:
        """The folder, made private if new; files a stop or crash left half-written are removed."""
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        for leftover in self.root.glob("*.tmp"):
            leftover.unlink(missing_ok=True)
        return self.root

    @staticmethod
    def name(project_id: str, model_sha: str) -> str:
        return f"{_safe(project_id)}--{_safe(model_sha)[:16]}"

    def meta(self, name: str) -> Optional[dict]:
        try:
            return json.loads((self.root / f"{name}.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def commit(self, tmp: Path, name: str, meta: dict) -> None:
        """Make a saved file an entry: data first, then its description (an entry exists once both do)."""
        meta["sha256"] = file_sha256(tmp)
        meta["bytes"] = tmp.stat().st_size
        os.replace(tmp, self.root / f"{name}.bin")
        write_json_atomic(self.root / f"{name}.json", meta)

    def touch(self, name: str, meta: dict) -> None:
        meta["used_at"] = time.time()
        write_json_atomic(self.root / f"{name}.json", meta)

    def discard(self, name: str) -> None:
        for suffix in (".json", ".bin"):
            (self.root / f"{name}{suffix}").unlink(missing_ok=True)

    def entries(self, project_id: Optional[str] = None) -> list[dict]:
        """Every entry (or a project's), most recently used first; data files without a description go."""
        if not self.root.is_dir():
            return []
        found = []
        for path in self.root.glob("*.bin"):
            name = path.stem
            meta = self.meta(name)
            if meta is None:
                if time.time() - path.stat().st_mtime > 60:  # not one being committed right now
                    path.unlink(missing_ok=True)
                continue
            if project_id is None or meta.get("project_id") == project_id:
                found.append({**meta, "name": name})
        return sorted(found, key=lambda m: m.get("used_at") or 0, reverse=True)

    def evict(self) -> list[str]:
        """Delete least recently used entries until the cache fits its size bound; their names."""
        entries = self.entries()
        total, gone = sum(e.get("bytes", 0) for e in entries), []
        while entries and total > self.limit:
            oldest = entries.pop()
            self.discard(oldest["name"])
            total -= oldest.get("bytes", 0)
            gone.append(oldest["name"])
        return gone

    def clear(self, project_id: Optional[str] = None) -> tuple[int, int]:
        """Delete a project's entries (all with None): (how many, bytes)."""
        entries = self.entries(project_id)
        for entry in entries:
            self.discard(entry["name"])
        return len(entries), sum(e.get("bytes", 0) for e in entries)


@dataclass
class _Seen:
    """What one engine process was asked for: the projects (by id) whose first request it has had."""

    pid: Optional[int]
    projects: dict[str, "Project"] = field(default_factory=dict)
    pending: dict[str, asyncio.Future] = field(default_factory=dict)


class PromptCache:
    """Saves projects' prefixes when engines stop and restores them for their first request."""

    def __init__(self, store: PromptStore, *, settings: Callable[[], "Settings"],
                 http: Callable[[], aiohttp.ClientSession], engine_auth: str, build: str,
                 model_sha: Callable[[Path], Optional[str]], metrics: "Metrics"):
        self.store = store
        self._settings = settings
        self._http = http
        self._headers = {"Authorization": engine_auth, "Content-Type": "application/json"}
        self._build = build
        self._model_sha = model_sha
        self._metrics = metrics
        self._skip: dict[Path, Optional[str]] = {}  # model file -> why it is never cached (None: it is)
        self._shas: dict[Path, Optional[str]] = {}

    # ------------------------------------------------------------------ keys

    def _key(self, engine: "Engine", project: "Project") -> Optional[dict]:
        """The entry key for `project` on `engine`, or None when this engine's model is never cached."""
        if self._why_skipped(engine) is not None:
            return None
        sha = self._shas.get(engine.path)
        if sha is None:
            sha = self._shas[engine.path] = self._model_sha(engine.path) or _file_identity(engine.path)
        return {"format": FORMAT, "model_sha256": sha, "build": self._build,
                "args": kv_args(engine.extra.get("argv") or []), "safe_mode": engine.supervisor.safe_mode,
                "prefix_sha256": hashlib.sha256(project.system_prompt.encode()).hexdigest()}

    def _why_skipped(self, engine: "Engine") -> Optional[str]:
        """Why this engine's model is never cached (a projector, a recurrent state), else None."""
        if engine.path not in self._skip:
            why = None
            if "--mmproj" in (engine.extra.get("argv") or []):
                why = "a vision model's projector: its image tokens are not a prefix the engine can save"
            else:
                from slp.models.gguf_header import read_header

                try:
                    fields = read_header(engine.path, tensors=False).fields
                except (OSError, ValueError):
                    fields = {}
                if any(_RECURRENT_KEY.search(key) for key in fields):
                    why = f"a recurrent or hybrid architecture ({fields.get('general.architecture')})"
            if why is not None:
                log.info("%s: prompts are not cached on disk: %s", engine.name, why)
            self._skip[engine.path] = why
        return self._skip[engine.path]

    def _seen(self, engine: "Engine") -> _Seen:
        seen = engine.extra.get("prompts")
        pid = engine.supervisor.pid
        if seen is None or seen.pid != pid:  # a new engine process holds nothing yet
            seen = engine.extra["prompts"] = _Seen(pid)
        return seen

    # ------------------------------------------------------------------ the request side

    async def prepare(self, engine: "Engine", project: "Project", body: dict) -> bool:
        """Before `project`'s request goes to `engine`: restore its prefix there if the engine does not
        hold it and an entry matches, and send the request to that slot. True when `body` changed."""
        seen = self._seen(engine)
        known = seen.projects.get(project.id)
        if known is not None and known.system_prompt == project.system_prompt:
            pending = seen.pending.get(project.id)
            if pending is not None:
                await asyncio.shield(pending)  # the first request is restoring it: do not compute it again
            return False
        seen.projects[project.id] = project
        done = seen.pending[project.id] = asyncio.get_running_loop().create_future()
        try:
            slot = await self._restore(engine, project)
        except Exception:  # noqa: BLE001 - the cache must never fail a request: it goes on uncached
            log.exception("%s: restoring project %s's prompt failed; it is computed instead", engine.name,
                          project.name)
            slot = None
        finally:
            seen.pending.pop(project.id, None)
            done.set_result(None)
        if slot is None:
            return False
        body["id_slot"] = slot
        return True

    async def _restore(self, engine: "Engine", project: "Project") -> Optional[int]:
        key = await asyncio.to_thread(self._key, engine, project)
        if key is None:
            return None
        name = self.store.name(project.id, key["model_sha256"])
        meta = await asyncio.to_thread(self.store.meta, name)
        if meta is None:
            self._metrics.prompt_cache_misses.labels(engine.name).inc()
            return None
        why = await asyncio.to_thread(self._invalid, name, meta, key)
        if why is not None:
            self._discard(engine, project, name, why)
            return None
        started = time.monotonic()
        try:
            slot = await self._idle_slot(engine)
        except (EngineRefused, aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            slot, exc_text = None, str(exc) or type(exc).__name__
            log.warning("%s: no slot to restore project %s's prompt into (%s)", engine.name, project.name, exc_text)
        if slot is None:
            self._metrics.prompt_cache_misses.labels(engine.name).inc()
            return None
        try:
            await self._call(engine, f"/slots/{slot}?action=restore", {"filename": f"{name}.bin"})
        except EngineRefused as exc:
            self._discard(engine, project, name, f"the engine refused it: {exc}")
            return None
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            log.warning("%s: restoring project %s's prompt failed (%s); it is computed instead", engine.name,
                        project.name, str(exc) or type(exc).__name__)
            self._metrics.prompt_cache_misses.labels(engine.name).inc()
            return None
        took = time.monotonic() - started
        self._metrics.prompt_cache_restores.labels(engine.name).inc()
        self._metrics.prompt_cache_restore_seconds.observe(took)
        await asyncio.to_thread(self.store.touch, name, meta)
        log.info("%s: restored project %s's prompt (%d tokens, %.0f MB) into slot %d in %.0f ms", engine.name,
                 project.name, meta.get("tokens", 0), meta.get("bytes", 0) / 1e6, slot, took * 1000)
        return slot

    def _invalid(self, name: str, meta: dict, key: dict) -> Optional[str]:
        """Why an entry must not be restored (another key, changed or missing data), or None."""
        if meta.get("key") != key:
            differ = sorted(k for k in key if (meta.get("key") or {}).get(k) != key[k])
            return f"saved for another {', '.join(differ) or 'format'}"
        path = self.store.root / f"{name}.bin"
        try:
            if path.stat().st_size != meta.get("bytes") or file_sha256(path) != meta.get("sha256"):
                return "its data does not match its checksum (corrupt or changed)"
        except OSError:
            return "its data file is missing"
        return None

    def _discard(self, engine: "Engine", project: "Project", name: str, why: str) -> None:
        log.warning("%s: discarded project %s's saved prompt %s: %s; computing it instead", engine.name,
                    project.name, name, why)
        self._metrics.prompt_cache_discards.labels(engine.name).inc()
        self.store.discard(name)

    # ------------------------------------------------------------------ the stop side

    async def save(self, engine: "Engine") -> None:
        """Save the prefixes of the projects this engine process served (its stop's last step); what
        fails is logged in a line: a stop goes on regardless."""
        seen = engine.extra.get("prompts")
        if seen is None or seen.pid != engine.supervisor.pid or not seen.projects:
            return
        keyed = await asyncio.to_thread(self._keys, engine, list(seen.projects.values()))
        if not keyed:
            return
        try:
            await self._save(engine, keyed)
        except (EngineRefused, aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as exc:
            log.warning("%s: project prompts not saved: %s", engine.name, exc or type(exc).__name__)

    def _keys(self, engine: "Engine", projects: list["Project"]) -> dict[str, tuple["Project", dict]]:
        """project id -> (project, entry key) for the projects whose prefix can be cached (blocking: the
        first call for a model reads its header and record)."""
        keys = {p.id: (p, self._key(engine, p)) for p in projects}
        return {pid: (p, key) for pid, (p, key) in keys.items() if key is not None}

    async def _save(self, engine: "Engine", keyed: dict[str, tuple["Project", dict]]) -> None:
        started = time.monotonic()
        min_tokens = self._settings().prompt_cache_min_tokens
        slots = [s for s in await self._get(engine, "/slots")
                 if not s.get("is_processing") and s.get("id_task") is not None
                 and (s.get("n_prompt_tokens") or 0) >= min_tokens]
        if not slots:
            return
        prefixes = {}
        for project, _ in keyed.values():
            tokens = await self._prefix_tokens(engine, project)
            if len(tokens) >= min_tokens:
                prefixes[project.id] = tokens
        if not prefixes:
            return
        # A save writes the slot's whole KV state: only slots long enough to hold a prefix, the most recently
        # used first, and none once every project has its own.
        shortest = MATCH_SHARE * min(len(prefix) for prefix in prefixes.values())
        slots = sorted((s for s in slots if s["n_prompt_tokens"] >= shortest), key=lambda s: -s["id_task"])
        best: dict[str, tuple[int, Path, int]] = {}  # project id -> (shared tokens, file, slot's tokens)
        tmps = []
        try:
            for slot in slots:
                if len(best) == len(prefixes):
                    break
                tmp = self.store.root / f"{_safe(str(engine.supervisor.pid))}-slot{slot['id']}.tmp"
                tmps.append(tmp)
                await self._call(engine, f"/slots/{slot['id']}?action=save", {"filename": tmp.name})
                tokens = await asyncio.to_thread(state_tokens, tmp)
                for project_id, prefix in prefixes.items():
                    shared = common_prefix(tokens, prefix)
                    if shared >= max(min_tokens, MATCH_SHARE * len(prefix)) and \
                            shared > best.get(project_id, (0, None, 0))[0]:
                        best[project_id] = (shared, tmp, len(tokens))
            if not best:
                log.info("%s: no idle slot holds the prefix of a project it served: nothing saved", engine.name)
            for project_id, (shared, tmp, total) in best.items():
                project, key = keyed[project_id]
                name = self.store.name(project_id, key["model_sha256"])
                copy = tmp.with_name(f"{name}.bin.tmp")
                copy.unlink(missing_ok=True)
                await asyncio.to_thread(os.link, tmp, copy)  # the slot's file may be another project's best too
                now = time.time()
                meta = {"key": key, "project_id": project_id, "project": project.name, "model": engine.name,
                        "prefix_tokens": shared, "tokens": total, "saved_at": now, "used_at": now}
                await asyncio.to_thread(self.store.commit, copy, name, meta)
                self._metrics.prompt_cache_saves.labels(engine.name).inc()
                log.info("%s: saved project %s's prompt (%d prefix tokens of %d, %.0f MB)", engine.name,
                         project.name, shared, total, meta["bytes"] / 1e6)
        finally:
            for tmp in tmps:
                tmp.unlink(missing_ok=True)
        gone = await asyncio.to_thread(self.store.evict)
        if gone:
            log.info("prompt cache over its size bound: evicted %s", ", ".join(gone))
        self._metrics.prompt_cache_save_seconds.observe(time.monotonic() - started)

    async def _prefix_tokens(self, engine: "Engine", project: "Project") -> list[int]:
        """The project's system prompt as the model's chat template renders it before a first user message
        (some templates, Gemma's, fold it into that message), in the engine's tokens."""
        rendered = await self._call(engine, "/apply-template", {"messages": [
            {"role": "system", "content": project.system_prompt}, {"role": "user", "content": _USER_MARK}]})
        prompt = rendered.get("prompt", "")
        if _USER_MARK not in prompt:
            return []
        tokens = await self._call(engine, "/tokenize", {"content": prompt[:prompt.index(_USER_MARK)],
                                                         "add_special": False, "parse_special": True})
        return [t if isinstance(t, int) else t.get("id") for t in tokens.get("tokens", [])]

    # ------------------------------------------------------------------ the engine's control API

    async def _idle_slot(self, engine: "Engine") -> Optional[int]:
        """An idle slot, one never used first (a restore replaces what a slot holds)."""
        idle = [s for s in await self._get(engine, "/slots") if not s.get("is_processing")]
        if not idle:
            return None
        return min(idle, key=lambda s: (s.get("id_task") is not None, s["id"]))["id"]

    async def _get(self, engine: "Engine", path: str) -> Any:
        async with self._http().get(f"{engine.supervisor.base_url}{path}", headers=self._headers,
                                    timeout=aiohttp.ClientTimeout(total=CONTROL_TIMEOUT)) as resp:
            return await _answer(resp)

    async def _call(self, engine: "Engine", path: str, body: dict) -> Any:
        async with self._http().post(f"{engine.supervisor.base_url}{path}", json=body, headers=self._headers,
                                     timeout=aiohttp.ClientTimeout(total=CONTROL_TIMEOUT)) as resp:
            return await _answer(resp)

    # ------------------------------------------------------------------ reading and clearing

    def entries(self, project_id: str) -> list["PromptCacheEntry"]:
        """A project's entries as the API shows them (blocking)."""
        from slp.projects.schema import PromptCacheEntry

        fields = PromptCacheEntry.model_fields
        return [PromptCacheEntry(**{k: v for k, v in e.items() if k in fields})
                for e in self.store.entries(project_id)]

    def clear(self, project_id: Optional[str]) -> tuple[int, int]:
        return self.store.clear(project_id)


class EngineRefused(Exception):
    """The engine answered a control call with an error."""


async def _answer(resp: aiohttp.ClientResponse) -> Any:
    """A control call's JSON answer; EngineRefused for an error or an answer that is not JSON."""
    try:
        data = await resp.json(content_type=None)
    except ValueError:
        raise EngineRefused(f"HTTP {resp.status} without JSON") from None
    if resp.status != 200:
        error = data.get("error") if isinstance(data, dict) else None
        raise EngineRefused(str(error.get("message")) if isinstance(error, dict) else f"HTTP {resp.status}")
    return data


def build_id(build: dict, binary: Path) -> str:
    """The engine build an entry was made by: its source commit, preset and flags (the build cache's key),
    else the binary's size and time (a binary slp did not build)."""
    if build.get("commit") and build.get("cache_key"):
        return f"{build['commit'][:12]}-{build.get('preset', 'cpu')}-{build['cache_key']}"
    try:
        stat = binary.stat()
        return f"binary-{stat.st_size}-{stat.st_mtime_ns}"
    except OSError:
        return f"binary-{binary}"
