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


def find_engine(settings: Settings) -> tuple[Path, Optional[dict]]:
    """Return (llama-server path, build record or None). `SLP_ENGINE_BIN` wins over the cache."""
    if settings.engine_bin:
        return settings.engine_bin, build_record_for(settings.engine_bin)
    builds = cached_builds()
    if not builds:
        raise EngineNotFound(f"no llama-server built yet (looked in {engine_cache_root()}); "
                             "run `python3 build.py` (or `make run`) first, or set SLP_ENGINE_BIN")
    record, binary = builds[0]
    return binary, record


def build_record_for(binary: Path) -> Optional[dict]:
    """The build.json beside a cached binary (`<entry>/bin/llama-server` → `<entry>/build.json`)."""
    record = Path(binary).parent.parent / "build.json"
    try:
        return json.loads(record.read_text())
    except (OSError, ValueError):
        return None
