"""Finding GGUF models already on disk (`slp model scan`), to register where they lie.

The usual places: the Hugging Face cache, LM Studio's models folder, and llama.cpp's download cache.
A split model is one find (its first shard); projectors and later shards are not models of their own.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from slp.models.store import SPLIT_RE, ModelStore, name_for_file

SKIP_DIRS = {".git", "node_modules", "__pycache__", ".locks"}


@dataclass(frozen=True)
class Found:
    path: Path  # the file to register (a split model's first shard)
    name: str  # the name `slp model add` would give it
    size: int  # all shards together
    known_as: Optional[str]  # the installed model already using this file, if any


def usual_places() -> list[Path]:
    """Where GGUF files usually are on this machine (those that exist)."""
    home = Path.home()
    hf = (Path(os.environ["HF_HUB_CACHE"]) if os.environ.get("HF_HUB_CACHE")
          else Path(os.environ.get("HF_HOME") or home / ".cache" / "huggingface") / "hub")
    if os.environ.get("LLAMA_CACHE"):
        llama = Path(os.environ["LLAMA_CACHE"])
    elif sys.platform == "darwin":
        llama = home / "Library" / "Caches" / "llama.cpp"
    else:
        llama = Path(os.environ.get("XDG_CACHE_HOME") or home / ".cache") / "llama.cpp"
    places = [hf, home / ".lmstudio" / "models", home / ".cache" / "lm-studio" / "models", llama]
    return [p.expanduser() for p in places if p.expanduser().is_dir()]


def _ggufs(root: Path) -> Iterable[Path]:
    for folder, dirs, files in os.walk(root, followlinks=False):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and d != "blobs"]  # HF blobs: found via snapshots
        for name in files:
            if name.lower().endswith(".gguf"):
                yield Path(folder) / name


def scan(store: ModelStore, folders: Optional[list[Path]] = None) -> list[Found]:
    """GGUF models under `folders` (default: the usual places), first shards only, sorted by path."""
    known = {m.path.resolve(): m.name for m in store.list(include_missing=True)}
    found: dict[Path, Found] = {}
    for root in folders if folders is not None else usual_places():
        for path in _ggufs(Path(root).expanduser()):
            if "mmproj" in path.name.lower():
                continue
            split = SPLIT_RE.match(path.name)
            if split and int(split.group("no")) != 1:
                continue
            try:
                real = path.resolve(strict=True)
                size = real.stat().st_size
                if split:
                    count = int(split.group("count"))
                    size = sum((path.with_name(f"{split.group('base')}-{i:05d}-of-{count:05d}.gguf")
                                .resolve(strict=True).stat().st_size) for i in range(1, count + 1))
            except OSError:
                continue  # a broken link or an incomplete split set: nothing to add
            key = path.absolute()
            found[key] = Found(path=key, name=name_for_file(path.name),
                               size=size, known_as=known.get(real) or known.get(key))
    return [found[k] for k in sorted(found)]
