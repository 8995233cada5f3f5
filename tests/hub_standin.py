"""A small stand-in for the Hugging Face Hub, for offline tests (a stand-in, named as such).

An aiohttp server on 127.0.0.1 that answers what huggingface_hub asks when `HF_ENDPOINT` points at
it: the repository info API (`/api/models/{repo}[/revision/{rev}]`, with sizes and LFS sha256 when
`blobs=true`) and file downloads (`/{repo}/resolve/{rev}/{file}`, HEAD and GET, with `X-Repo-Commit`,
`ETag`, `X-Linked-Etag` and `X-Linked-Size`, and `Range` for resumed downloads). Errors carry the
`X-Error-Code` header the library turns into its exceptions (RepoNotFound, GatedRepo, ...).

Files are served from real paths (byte ranges of them, so one real GGUF can play a split model's
shards). For faults a test can: cut a file's next download after N bytes and hang until released (a
download interrupted mid-way), declare a sha256 the bytes do not have, or declare a size that no disk
has room for.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from aiohttp import web

_sha_cache: dict[tuple[str, int, int], str] = {}


def _sha256(path: Path, start: int, length: int) -> str:
    key = (str(path), start, length)
    if key not in _sha_cache:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            f.seek(start)
            left = length
            while left:
                chunk = f.read(min(1 << 20, left))
                if not chunk:
                    break
                digest.update(chunk)
                left -= len(chunk)
        _sha_cache[key] = digest.hexdigest()
    return _sha_cache[key]


@dataclass
class HubFile:
    """A file of a repository: `length` bytes of `path` from `start` (default: the whole file)."""

    path: Path
    start: int = 0
    length: Optional[int] = None
    lfs: bool = True
    declared_sha256: Optional[str] = None  # what the Hub claims, when it is not the truth
    declared_size: Optional[int] = None

    @property
    def size(self) -> int:
        return self.length if self.length is not None else self.path.stat().st_size - self.start

    @property
    def sha256(self) -> str:
        return self.declared_sha256 or _sha256(self.path, self.start, self.size)

    @property
    def listed_size(self) -> int:
        return self.declared_size if self.declared_size is not None else self.size


@dataclass
class HubRepo:
    files: dict[str, HubFile]
    commit: str = "0123456789abcdef0123456789abcdef01234567"
    gated: bool = False


@dataclass
class Request:
    method: str
    path: str
    range: Optional[str]
    authorization: Optional[str]
    sent: int = 0  # bytes of the file body written to the client


@dataclass
class HubStandIn:
    repos: dict[str, HubRepo] = field(default_factory=dict)
    token: str = "hf_standin_token"
    requests: list[Request] = field(default_factory=list)
    url: str = ""
    _cuts: dict[str, int] = field(default_factory=dict)
    _release: threading.Event = field(default_factory=threading.Event)
    _loop: Optional[asyncio.AbstractEventLoop] = None

    # --- faults --------------------------------------------------------------------------------

    def cut_next_download(self, filename: str, after: int) -> None:
        """The next GET of `filename` sends `after` bytes, then stalls until `release()`."""
        self._release = threading.Event()
        self._cuts[filename] = after

    def release(self) -> None:
        self._release.set()

    def gets(self, filename: str) -> list[Request]:
        return [r for r in self.requests if r.method == "GET" and r.path.endswith("/" + filename)]

    # --- routes --------------------------------------------------------------------------------

    def _error(self, status: int, code: str, repo: Optional[HubRepo] = None) -> web.Response:
        headers = {"X-Error-Code": code, "X-Error-Message": code}
        if repo is not None:
            headers["X-Repo-Commit"] = repo.commit
        return web.json_response({"error": code}, status=status, headers=headers)

    def _repo(self, request: web.Request) -> tuple[str, Optional[HubRepo]]:
        name = f"{request.match_info['owner']}/{request.match_info['name']}"
        return name, self.repos.get(name)

    def _record(self, request: web.Request) -> Request:
        self.requests.append(Request(request.method, request.path, request.headers.get("Range"),
                                     request.headers.get("Authorization")))
        return self.requests[-1]

    async def info(self, request: web.Request) -> web.Response:
        self._record(request)
        name, repo = self._repo(request)
        if repo is None:
            return self._error(404, "RepoNotFound")
        revision = request.match_info.get("rev", "main")
        if revision not in ("main", repo.commit):
            return self._error(404, "RevisionNotFound", repo)
        with_blobs = request.query.get("blobs") in ("True", "true", "1")
        siblings = []
        for filename, f in repo.files.items():
            entry: dict = {"rfilename": filename}
            if with_blobs:
                entry.update(size=f.listed_size, blobId="0" * 40)
                if f.lfs:
                    entry["lfs"] = {"size": f.listed_size, "sha256": f.sha256, "pointerSize": 134}
            siblings.append(entry)
        return web.json_response({"_id": "standin", "id": name, "modelId": name, "sha": repo.commit,
                                  "private": False, "gated": "manual" if repo.gated else False,
                                  "disabled": False, "downloads": 0, "likes": 0, "tags": ["gguf"],
                                  "siblings": siblings})

    async def resolve(self, request: web.Request) -> web.StreamResponse:
        record = self._record(request)
        _, repo = self._repo(request)
        if repo is None:
            return self._error(404, "RepoNotFound")
        if request.match_info["rev"] not in ("main", repo.commit):
            return self._error(404, "RevisionNotFound", repo)
        if repo.gated and request.headers.get("Authorization") != f"Bearer {self.token}":
            return self._error(401, "GatedRepo", repo)
        filename = request.match_info["file"]
        f = repo.files.get(filename)
        if f is None:
            return self._error(404, "EntryNotFound", repo)
        etag = f.sha256 if f.lfs else "1" * 40
        headers = {"X-Repo-Commit": repo.commit, "ETag": f'"{etag}"', "Accept-Ranges": "bytes"}
        if f.lfs:
            headers.update({"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(f.listed_size)})
        if request.method == "HEAD":
            headers["Content-Length"] = str(f.listed_size)
            return web.Response(status=200, headers=headers)
        start = 0
        status = 200
        if request.headers.get("Range", "").startswith("bytes="):
            start = int(request.headers["Range"].removeprefix("bytes=").split("-")[0])
            status = 206
            headers["Content-Range"] = f"bytes {start}-{f.size - 1}/{f.size}"
        headers["Content-Length"] = str(f.size - start)
        response = web.StreamResponse(status=status, headers=headers)
        await response.prepare(request)
        cut, release = self._cuts.pop(filename, None), self._release
        sent = 0
        with open(f.path, "rb") as src:
            src.seek(f.start + start)
            left = f.size - start
            while left:
                step = min(1 << 20, left)
                if cut is not None and sent + step > cut:
                    step = cut - sent
                chunk = src.read(step)
                if chunk:
                    await response.write(chunk)
                    sent += len(chunk)
                    record.sent = sent
                    left -= len(chunk)
                if cut is not None and sent >= cut:
                    # The client is interrupted meanwhile; the wait is bounded so a failing test ends.
                    await asyncio.get_running_loop().run_in_executor(None, release.wait, 120)
                    raise ConnectionResetError("cut by the test")
        await response.write_eof()
        return response

    # --- running -------------------------------------------------------------------------------

    def start(self) -> "HubStandIn":
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            app = web.Application()
            repo_path = "/{owner}/{name}"
            app.router.add_get("/api/models" + repo_path, self.info)
            app.router.add_get("/api/models" + repo_path + "/revision/{rev}", self.info)
            app.router.add_route("HEAD", repo_path + "/resolve/{rev}/{file:.+}", self.resolve)
            app.router.add_get(repo_path + "/resolve/{rev}/{file:.+}", self.resolve, allow_head=False)
            runner = web.AppRunner(app, access_log=None)
            loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, "127.0.0.1", 0)
            loop.run_until_complete(site.start())
            port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            self.url = f"http://127.0.0.1:{port}"
            self._runner = runner
            ready.set()
            loop.run_forever()
            loop.run_until_complete(runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, name="hub-standin", daemon=True)
        self._thread.start()
        assert ready.wait(10), "the Hub stand-in did not start"
        return self

    def stop(self) -> None:
        self.release()
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
