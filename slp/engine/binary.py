"""Find the llama-server binary that build.py cached, and the build record written next to it.

build.py is standalone (it runs before slp is installed), so the cache location rule is written
there; `engine_cache_root()` follows the same rule through platformdirs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import platformdirs

from slp.engine.cpuinfo import cpu_features, missing_features
from slp.settings import Settings


class EngineNotFound(Exception):
    """No usable llama-server: says how to get one."""


def engine_cache_root() -> Path:
    if os.environ.get("SLP_ENGINE_CACHE"):
        return Path(os.environ["SLP_ENGINE_CACHE"]).expanduser()
    return Path(platformdirs.user_cache_dir("slp", appauthor=False)) / "engine"


def cached_builds() -> list[tuple[dict, Path]]:
    """Every complete cache entry as (build record, binary), newest build first."""
    root = engine_cache_root()
    found = []
    if root.is_dir():
        for entry in root.iterdir():
            binary, record = entry / "bin" / "llama-server", entry / "build.json"
            if binary.is_file() and os.access(binary, os.X_OK) and record.is_file():
                try:
                    found.append((json.loads(record.read_text()), binary))
                except ValueError:
                    continue
    return sorted(found, key=lambda item: item[0].get("built_at", ""), reverse=True)


def usable_here(record: dict, features: Optional[list[str]] = None) -> bool:
    """A build this machine may run: built for this CPU (or portable) and not refused by its self-test."""
    test = record.get("self_test")
    return not missing_features(record, features) and not (isinstance(test, dict) and test.get("ok") is False)


def find_engine(settings: Settings) -> tuple[Path, Optional[dict]]:
    """Return (llama-server path, build record or None). `SLP_ENGINE_BIN` wins over the cache; in the cache,
    the newest build that runs on this CPU (a shared cache may hold builds for other CPUs)."""
    if settings.engine_bin:
        return settings.engine_bin, build_record_for(settings.engine_bin)
    builds = cached_builds()
    if not builds:
        raise EngineNotFound(f"no llama-server built yet (looked in {engine_cache_root()}); "
                             "run `python3 build.py` (or `make run`) first, or set SLP_ENGINE_BIN")
    features = cpu_features()
    for record, binary in builds:
        if usable_here(record, features):
            return binary, record
    lacking = sorted({f for record, _ in builds for f in missing_features(record, features)})
    raise EngineNotFound(f"the cached engines were built for another CPU (this one lacks {', '.join(lacking)}); "
                         "run `python3 build.py` here, or `python3 build.py --preset cpu-portable` for a cache "
                         "shared by several machines")


def build_record_for(binary: Path) -> Optional[dict]:
    """The build.json beside a cached binary (`<entry>/bin/llama-server` → `<entry>/build.json`)."""
    record = Path(binary).parent.parent / "build.json"
    try:
        return json.loads(record.read_text())
    except (OSError, ValueError):
        return None
