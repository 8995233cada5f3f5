"""Models from the Hugging Face Hub: `hf:OWNER/REPO[:QUANT]` and `hf:OWNER/REPO/FILE.gguf[@REVISION]`.

huggingface_hub does the talking (the token from HF_TOKEN or `hf auth login`, HF_ENDPOINT, retries, the
Hub's own errors); slp decides which files a model needs (a split set whole, a vision model's
projector), checks each against the sha256 in the Hub's LFS metadata, and records the model only once
every file is complete and verified.

Files live in the library's cache layout (`$HF_HOME/hub/models--OWNER--REPO/blobs/<sha256>`, linked from
`snapshots/<commit>/<file>`), so other tools find them and nothing is copied. A download grows
`blobs/<sha256>.incomplete`, which the next pull resumes from: the library itself no longer resumes
across runs (it deletes its partial file on failure), so slp drives its `http_get` with the offset.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional
from urllib.parse import urlparse

from slp.models.errors import ModelError
from slp.models.fetch import ProgressArg, file_sha256, reporter
from slp.models.store import SPLIT_RE, InstalledModel, ModelFile, ModelStore, name_for_file

PREFIX = "hf:"
KV_OVERHEAD = 1.2  # a model needs about its file size again x1.2 (KV cache, compute buffers) to run
_PART = r"[A-Za-z0-9][A-Za-z0-9._-]*"
_REPO_RE = re.compile(rf"{_PART}/{_PART}")
_QUANT_RE = re.compile(r"(?:^|[-._])((?:I?Q[1-8](?:_[0-9A-Z]+)*)|BF16|F16|F32|FP16|MXFP4)(?=$|[-._])")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")

# llama.cpp's quantizations from smallest to largest: Q4_K_M is the usual default (llama.cpp's `-hf`,
# Ollama), the other 4-bit ones come next; then whatever is largest that fits; full precision last.
QUALITY = ("IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "Q2_K_S", "Q2_K", "Q2_K_L", "IQ3_XXS",
           "IQ3_XS", "IQ3_S", "IQ3_M", "Q3_K_S", "Q3_K_M", "Q3_K_L", "IQ4_XS", "IQ4_NL", "Q4_0", "Q4_1",
           "Q4_K_S", "Q4_K_M", "Q4_K_L", "Q4_K_XL", "Q5_0", "Q5_1", "Q5_K_S", "Q5_K_M", "Q5_K_L", "Q6_K",
           "Q6_K_L", "Q8_0", "F16", "FP16", "BF16", "F32")
FOUR_BIT = {"IQ4_XS", "IQ4_NL", "Q4_0", "Q4_1", "Q4_K_S", "Q4_K_L", "Q4_K_XL", "MXFP4"}
FULL = {"F16", "FP16", "BF16", "F32"}
PROJECTOR_PREFERENCE = ("F16", "BF16", "Q8_0", "F32")


@dataclass(frozen=True)
class HubRef:
    repo: str
    filename: Optional[str] = None
    quant: Optional[str] = None
    revision: Optional[str] = None

    def __str__(self) -> str:
        text = PREFIX + self.repo + (f"/{self.filename}" if self.filename else "")
        return text + (f":{self.quant}" if self.quant else "") + (f"@{self.revision}" if self.revision else "")


def is_hub_ref(text: str) -> bool:
    return text.startswith(PREFIX)


def parse_ref(text: str) -> HubRef:
    """`hf:OWNER/REPO[:QUANT][@REV]` or `hf:OWNER/REPO/PATH/FILE.gguf[@REV]`; anything else raises."""
    spec = text.removeprefix(PREFIX).strip()
    usage = (f"cannot read {text!r}: expected hf:OWNER/REPO, hf:OWNER/REPO:QUANT or "
             "hf:OWNER/REPO/FILE.gguf (each optionally @REVISION)")
    revision = None
    if "@" in spec:
        spec, revision = spec.rsplit("@", 1)
        if not revision or not re.fullmatch(r"[A-Za-z0-9._/-]+", revision):
            raise ModelError(usage)
    parts = spec.split("/")
    if len(parts) < 2:
        raise ModelError(usage)
    owner, name = parts[0], parts[1]
    quant = None
    if len(parts) == 2 and ":" in name:
        name, quant = name.split(":", 1)
        if not re.fullmatch(r"[A-Za-z0-9_]+", quant):
            raise ModelError(usage)
    repo = f"{owner}/{name}"
    if not _REPO_RE.fullmatch(repo) or ".." in repo:
        raise ModelError(usage)
    filename = "/".join(parts[2:]) or None
    if filename is not None and (not filename.endswith(".gguf") or ".." in parts[2:] or "" in parts[2:]):
        raise ModelError(f"cannot read {text!r}: a file must be a .gguf path inside the repository")
    return HubRef(repo=repo, filename=filename, quant=quant.upper() if quant else None, revision=revision)


def quant_of(filename: str) -> Optional[str]:
    """`Llama-3.2-1B-Instruct-Q4_K_M.gguf` -> `Q4_K_M` (the last quantization named in the file name)."""
    base = Path(filename).name
    split = SPLIT_RE.match(base)
    stem = (split.group("base") if split else base.removesuffix(".gguf")).upper()
    found = _QUANT_RE.findall(stem)
    return found[-1] if found else None


@dataclass(frozen=True)
class RemoteFile:
    name: str
    size: Optional[int]
    sha256: Optional[str]  # from the Hub's LFS metadata; None for a file kept in git itself


@dataclass
class ModelSet:
    """One model in a repository: a GGUF, or the shards of a split one in order."""

    key: str
    files: list[RemoteFile] = field(default_factory=list)

    @property
    def quant(self) -> Optional[str]:
        return quant_of(self.files[0].name)

    @property
    def size(self) -> int:
        return sum(f.size or 0 for f in self.files)

    @property
    def label(self) -> str:
        return self.quant or self.key


@dataclass
class Plan:
    """What a pull will fetch, decided before any byte of a model is downloaded."""

    ref: HubRef
    commit: str
    model: ModelSet
    mmproj: Optional[RemoteFile]
    note: str  # one line for the user: which file, and why


def _is_projector(name: str) -> bool:
    return "mmproj" in Path(name).name.lower()


def group_models(files: list[RemoteFile]) -> list[ModelSet]:
    """The repository's models: GGUFs that are not projectors, split shards gathered in order."""
    sets: dict[str, ModelSet] = {}
    for f in sorted(files, key=lambda f: f.name):
        if not f.name.endswith(".gguf") or _is_projector(f.name):
            continue
        split = SPLIT_RE.match(Path(f.name).name)
        key = str(Path(f.name).with_name(split.group("base"))) if split else f.name.removesuffix(".gguf")
        sets.setdefault(key, ModelSet(key=key)).files.append(f)
    return list(sets.values())


def _human(n: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def _rank(model: ModelSet) -> int:
    return QUALITY.index(model.quant) if model.quant in QUALITY else -1


def choose(models: list[ModelSet], budget: int) -> tuple[ModelSet, str]:
    """The model to pull when none is named: Q4_K_M if it fits the memory budget (file size x1.2 for
    the KV cache and compute buffers), else the largest other 4-bit one that fits, else the largest
    quantized one that fits, else full precision. Nothing fitting is an error naming the smallest."""
    fits = [m for m in models if m.size * KV_OVERHEAD <= budget]
    tiers = ([m for m in fits if m.quant == "Q4_K_M"], [m for m in fits if m.quant in FOUR_BIT],
             [m for m in fits if m.quant not in FULL], fits)
    for tier in tiers:
        if tier:
            best = max(tier, key=lambda m: (m.size, _rank(m)))
            why = "the usual default" if best.quant == "Q4_K_M" else "the best"
            return best, (f"{why} that fits the memory budget of {_human(budget)} "
                          f"({_human(best.size)}, about {_human(best.size * KV_OVERHEAD)} to run)")
    smallest = min(models, key=lambda m: m.size)
    raise ModelError(f"no quantization fits the memory budget of {_human(budget)}: the smallest, "
                     f"{smallest.label}, needs about {_human(smallest.size * KV_OVERHEAD)}; raise "
                     "SLP_MEMORY_BUDGET or name one with :QUANT")


def _projector(files: list[RemoteFile]) -> Optional[RemoteFile]:
    projectors = [f for f in files if f.name.endswith(".gguf") and _is_projector(f.name)]
    if not projectors:
        return None

    def preference(f: RemoteFile) -> int:
        quant = quant_of(f.name)
        return PROJECTOR_PREFERENCE.index(quant) if quant in PROJECTOR_PREFERENCE else len(PROJECTOR_PREFERENCE)

    return min(projectors, key=lambda f: (preference(f), f.name))


# --- talking to the Hub -----------------------------------------------------------------------------

def endpoint() -> str:
    """HF_ENDPOINT as it is now (the library reads it once, at import)."""
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def cache_dir() -> Path:
    """The library's cache folder as the environment says now (HF_HUB_CACHE, else HF_HOME/hub)."""
    from huggingface_hub import constants

    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path(constants.HF_HUB_CACHE)


def _has_token() -> bool:
    from huggingface_hub import get_token

    return bool(get_token())


def _network_errors() -> tuple[type[BaseException], ...]:
    """The HTTP client's transport errors (httpx2 in huggingface_hub 2.x, httpx before)."""
    found: list[type[BaseException]] = []
    for module in ("httpx2", "httpx"):
        try:
            found.append(__import__(module).TransportError)
        except (ImportError, AttributeError):
            pass
    return tuple(found)


def hub_error(exc: BaseException, ref: HubRef, filename: Optional[str] = None) -> ModelError:
    """One line for the user from what huggingface_hub raised."""
    from huggingface_hub import errors

    where = f"{ref.repo}" + (f" ({filename})" if filename else "")
    login = "set HF_TOKEN or run `hf auth login`"
    if isinstance(exc, errors.GatedRepoError):
        if _has_token():
            return ModelError(f"{ref.repo} is gated and your token has no access to it: accept its terms at "
                              f"{endpoint()}/{ref.repo}")
        return ModelError(f"{ref.repo} is gated: accept its terms at {endpoint()}/{ref.repo}, then {login}")
    if isinstance(exc, errors.RepositoryNotFoundError):
        return ModelError(f"no repository {ref.repo} on the Hugging Face Hub (if it is private, {login})")
    if isinstance(exc, errors.RevisionNotFoundError):
        return ModelError(f"{ref.repo} has no revision {ref.revision!r}")
    if isinstance(exc, errors.EntryNotFoundError):
        return ModelError(f"{ref.repo} has no file {filename or ref.filename!r}")
    if isinstance(exc, errors.HfHubHTTPError):
        status = getattr(getattr(exc, "response", None), "status_code", "an error")
        return ModelError(f"the Hugging Face Hub answered {status} for {where}")
    if isinstance(exc, _network_errors()):
        reason = " ".join(str(exc).split()) or type(exc).__name__
        return ModelError(f"cannot reach the Hugging Face Hub at {endpoint()} ({reason}); check the network "
                          "(a pull started again resumes where it stopped)")
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return ModelError(f"disk full while downloading {where} to {cache_dir()}: free some space and pull "
                          "again (it resumes)")
    if isinstance(exc, OSError):
        reason = " ".join(str(exc.strerror or exc).split())
        return ModelError(f"download of {where} failed: {reason}; pull again to resume")
    return ModelError(f"download of {where} failed: {' '.join(str(exc).split()) or type(exc).__name__}")


def _repo_files(ref: HubRef) -> tuple[str, list[RemoteFile]]:
    """The revision's commit and its files with sizes and LFS sha256 (one API call)."""
    from huggingface_hub import HfApi

    try:
        info = HfApi(endpoint=endpoint()).model_info(ref.repo, revision=ref.revision, files_metadata=True)
    except Exception as exc:  # the library's errors and the HTTP client's; each becomes one line
        raise hub_error(exc, ref) from None
    files = []
    for sibling in info.siblings or []:
        lfs = sibling.lfs
        sha = (lfs.get("sha256") if isinstance(lfs, dict) else getattr(lfs, "sha256", None)) if lfs else None
        files.append(RemoteFile(name=sibling.rfilename, size=sibling.size, sha256=sha))
    if not info.sha:
        raise ModelError(f"the Hugging Face Hub gave no commit for {ref.repo}")
    return info.sha, files


def plan(text: str, budget: int) -> Plan:
    """Decide what `hf:...` means: which model files (and projector) at which commit."""
    ref = parse_ref(text)
    commit, files = _repo_files(ref)
    models = group_models(files)
    if not models:
        raise ModelError(f"{ref.repo} has no GGUF model files (llama.cpp needs GGUF; look for a -GGUF "
                         "repository of the same model)")
    if ref.filename is not None:
        wanted = next((m for m in models if ref.filename in (f.name for f in m.files)), None)
        if wanted is None:
            names = ", ".join(f.name for m in models for f in m.files[:1])
            raise ModelError(f"{ref.repo} has no file {ref.filename!r}; its GGUF files: {names}")
        note = f"{wanted.files[0].name} ({_human(wanted.size)})"
    elif ref.quant is not None:
        matching = [m for m in models if (m.quant or "") == ref.quant]
        if not matching:
            have = ", ".join(sorted({m.label for m in models}, key=lambda q: (q not in QUALITY, QUALITY.index(q)
                                                                               if q in QUALITY else 0, q)))
            raise ModelError(f"{ref.repo} has no quantization {ref.quant}; it has: {have}")
        wanted = min(matching, key=lambda m: m.key)
        note = f"{wanted.label}: {wanted.files[0].name} ({_human(wanted.size)})"
    else:
        wanted, why = choose(models, budget)
        others = sorted({m.label for m in models} - {wanted.label})
        note = (f"picked {wanted.label}: {wanted.files[0].name}, {why}"
                + (f"; also available: {', '.join(others)} (pull hf:{ref.repo}:QUANT)" if others else ""))
    if len(wanted.files) > 1:
        note += f", in {len(wanted.files)} parts"
    mmproj = _projector(files)
    if mmproj is not None:
        note += f", with the vision projector {mmproj.name}"
    return Plan(ref=ref, commit=commit, model=wanted, mmproj=mmproj, note=note)


class _NoBar:
    """Stands in for huggingface_hub's tqdm bar: slp reports progress from the bytes it writes."""

    def __init__(self, *args: Any, **kwargs: Any):
        pass

    def __enter__(self) -> "_NoBar":
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def update(self, n: int = 1) -> None:
        pass


class _ReportingFile:
    """The partial file, reporting how much of the whole it holds as the library writes to it, and
    hashing what is written in order (so a finished download needs no second read to be verified).
    If the library rewinds (a server that ignored the range), the hash is abandoned: `sha256` is None."""

    def __init__(self, raw: Any, label: str, total: Optional[int], report: Callable[[str, int, Optional[int]], None],
                 digest: Any):
        self.raw, self.label, self.total, self.report, self.digest = raw, label, total, report, digest
        self.hashed = raw.tell()

    def write(self, data: bytes) -> int:
        if self.digest is not None and self.raw.tell() == self.hashed:
            self.digest.update(data)
            self.hashed += len(data)
        else:
            self.digest = None
        written = self.raw.write(data)
        self.report(self.label, self.raw.tell(), self.total)
        return written

    def sha256(self) -> Optional[str]:
        self.raw.flush()
        if self.digest is None or self.hashed != os.fstat(self.raw.fileno()).st_size:
            return None
        return self.digest.hexdigest()

    def __getattr__(self, name: str) -> Any:  # seek, tell, truncate, flush: the file's own
        return getattr(self.raw, name)


def _repo_folder(repo: str) -> Path:
    return cache_dir() / ("models--" + repo.replace("/", "--"))


def _link(blob: Path, pointer: Path) -> None:
    pointer.parent.mkdir(parents=True, exist_ok=True)
    pointer.unlink(missing_ok=True)
    try:
        pointer.symlink_to(os.path.relpath(blob, pointer.parent))
    except OSError:  # no symlinks (some Windows set-ups): the library then keeps a copy, as here
        shutil.copyfile(blob, pointer)


def _verified(path: Path, remote: RemoteFile, report: Callable, ref: HubRef, actual: Optional[str] = None) -> str:
    actual = actual or file_sha256(path, report, f"verify {Path(remote.name).name}")
    if remote.sha256 is not None and actual != remote.sha256:
        raise ModelError(f"sha256 mismatch for {remote.name} from {ref.repo}: the Hub's LFS metadata says "
                         f"{remote.sha256}, the download is {actual}; refused, nothing was installed")
    return actual


def download(remote: RemoteFile, ref: HubRef, commit: str, progress: ProgressArg = None) -> tuple[Path, str, bool]:
    """Fetch one file into the cache (resuming a partial one) and verify it.

    Returns (snapshot path, sha256, whether this call downloaded it). A file already in the cache is
    verified, not fetched again. A mismatch deletes what was downloaded, so the next pull starts over.
    """
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    report = reporter(progress)
    folder = _repo_folder(ref.repo)
    pointer = folder / "snapshots" / commit / remote.name
    if pointer.is_file():
        try:
            return pointer, _verified(pointer, remote, report, ref), False
        except ModelError:
            _delete_cached(pointer)  # a damaged cache entry: fetch it again below
    label = Path(remote.name).name
    try:
        url = hf_hub_url(ref.repo, remote.name, revision=commit, endpoint=endpoint())
        meta = get_hf_file_metadata(url, endpoint=endpoint())
        etag = (meta.etag or "").strip('"')
        if remote.sha256 is not None and _SHA256_RE.fullmatch(etag) and etag != remote.sha256:
            raise ModelError(f"the Hub disagrees with itself about {remote.name}: LFS sha256 {remote.sha256}, "
                             f"download etag {etag}; refused")
        blob = folder / "blobs" / (remote.sha256 or etag or f"slp-{commit}-{label}")
        total = meta.size if meta.size is not None else remote.size
        if blob.is_file():
            _link(blob, pointer)
            return pointer, _verified(pointer, remote, report, ref), False
        blob.parent.mkdir(parents=True, exist_ok=True)
        partial = blob.with_name(blob.name + ".incomplete")
        have = partial.stat().st_size if partial.is_file() else 0
        if total is not None and have > total:
            partial.unlink()
            have = 0
        if total is not None:
            free = shutil.disk_usage(blob.parent).free
            if free < total - have:
                raise ModelError(f"not enough disk space for {remote.name}: it needs {_human(total - have)} "
                                 f"more, {blob.parent} has {_human(free)} free")
        headers = build_hf_headers()
        if urlparse(meta.location).netloc != urlparse(url).netloc:
            headers.pop("authorization", None)  # a signed CDN link: the token stays with the Hub
        digest = _hash_prefix(partial, have, report, label)
        with open(partial, "ab") as raw:
            report(label, have, total)
            out = _ReportingFile(raw, label, total, report, digest)
            http_get(meta.location, out, resume_size=have,  # type: ignore[arg-type]
                     headers=headers, expected_size=total, displayed_filename=label, tqdm_class=_NoBar)
            raw.flush()
            os.fsync(raw.fileno())
            streamed = out.sha256()
    except ModelError:
        raise
    except Exception as exc:
        raise hub_error(exc, ref, remote.name) from None
    try:
        actual = _verified(partial, remote, report, ref, streamed)
    except ModelError:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, blob)
    _link(blob, pointer)
    if ref.revision and ref.revision != commit:  # a branch or tag: remember what it pointed at, as the library does
        refs = folder / "refs" / ref.revision
        refs.parent.mkdir(parents=True, exist_ok=True)
        refs.write_text(commit)
    return pointer, actual, True


def _hash_prefix(partial: Path, have: int, report: Callable, label: str) -> Any:
    """A sha256 of what an earlier, interrupted pull already wrote (read once), to continue from."""
    digest = hashlib.sha256()
    if have:
        done = 0
        with open(partial, "rb") as f:
            while done < have and (chunk := f.read(min(1 << 20, have - done))):
                digest.update(chunk)
                done += len(chunk)
                report(f"check {label} (resumed)", done, have)
    return digest


def _delete_cached(pointer: Path) -> None:
    blob = pointer.resolve() if pointer.is_symlink() else None
    pointer.unlink(missing_ok=True)
    if blob is not None:
        blob.unlink(missing_ok=True)


def pull(store: ModelStore, the_plan: Plan, name: Optional[str] = None,
         progress: ProgressArg = None) -> InstalledModel:
    """Download and verify every file of `the_plan`, then record the model in `store` (only then:
    Ctrl-C or a failure before leaves the store as it was, and the next pull resumes)."""
    model = the_plan.model
    name = name or name_for_file(model.files[0].name)
    store.check_record_name(name, f"{PREFIX}{the_plan.ref.repo}")
    source = f"{PREFIX}{the_plan.ref.repo}/{model.files[0].name}@{the_plan.commit}"
    existing = store.resolve(name, include_missing=True)
    if existing is not None and existing.source != source:
        raise ModelError(f"a model named {name!r} is already installed (from {existing.source}); "
                         "choose another with --name, or remove it first")
    files: list[ModelFile] = []
    wanted = [(f, "model") for f in model.files] + ([(the_plan.mmproj, "mmproj")] if the_plan.mmproj else [])
    for remote, role in wanted:
        path, sha, fetched = download(remote, the_plan.ref, the_plan.commit, progress)
        was_ours = existing is not None and any(f.path == path and f.owned for f in existing.files)
        files.append(ModelFile(path=path, role=role, sha256=sha, size=path.stat().st_size,
                               owned=fetched or was_ours))
    return store.record(name, files, source=source, repo=the_plan.ref.repo, commit=the_plan.commit,
                        quant=model.quant)
