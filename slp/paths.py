"""Where slp's files live, decided in one place and cheap to import (stdlib only).

`slp.settings` re-exports all of this and adds the Settings model (pydantic-settings). The CLI's quick
commands ask `configured_paths()` where the agent's run state is without loading (and validating) every
setting: it applies the same rule as `Settings().paths`, SLP_HOME from the environment, else `home` from
the config file, else the platform's user dirs.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator, Optional

APP_NAME = "slp"
ENV_PREFIX = "SLP_"  # Settings reads SLP_<FIELD>, case-insensitively (pydantic-settings' default)
HOME_FIELD = "home"


@dataclass(frozen=True)
class Paths:
    """Where slp reads and writes. Built by `paths()`; every module asks it instead of guessing."""

    config_dir: Path
    data_dir: Path
    log_dir: Path
    state_dir: Path

    @property
    def config_file(self) -> Path:
        return self.config_dir / "config.toml"

    @property
    def state_file(self) -> Path:
        """Run state of the agent: PIDs, create times, host/port (see slp.runstate)."""
        return self.state_dir / "agent.json"

    @property
    def db_file(self) -> Path:
        return self.data_dir / "slp.db"

    @property
    def default_models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def agent_log(self) -> Path:
        return self.log_dir / "agent.log"

    @property
    def engine_log(self) -> Path:
        return self.log_dir / "engine.log"

    @property
    def request_log(self) -> Path:
        """One JSON line per proxied request (rotated)."""
        return self.log_dir / "requests.jsonl"


def paths(home: Optional[os.PathLike | str] = None) -> Paths:
    """Return slp's folders: under `home`/`SLP_HOME` when given, else the platform's user dirs."""
    home = home if home is not None else os.environ.get("SLP_HOME")
    if home:
        root = Path(home).expanduser().resolve()
        return Paths(root / "config", root / "data", root / "logs", root / "run")
    import platformdirs  # only without a home: tests and SLP_HOME users never pay for it

    return Paths(
        Path(platformdirs.user_config_dir(APP_NAME)),
        Path(platformdirs.user_data_dir(APP_NAME)),
        Path(platformdirs.user_log_dir(APP_NAME)),
        Path(platformdirs.user_state_dir(APP_NAME)),
    )


def configured_home() -> Optional[Path]:
    """The `home` setting as `Settings().home` has it, without pydantic: SLP_HOME (any case) in the
    environment, else `home` in the config file, else None.

    Raises ValueError or OSError when the config file cannot be read (as `Settings()` does), and TypeError
    when its `home` is not a string (`Settings()` says why in its own words).
    """
    name = (ENV_PREFIX + HOME_FIELD).lower()
    from_env = {key.lower(): value for key, value in os.environ.items()}.get(name)
    if from_env is not None:
        return Path(from_env).expanduser()
    config_file = paths().config_file
    if not config_file.is_file():
        return None
    import tomllib

    with config_file.open("rb") as f:
        value = tomllib.load(f).get(HOME_FIELD)  # read as pydantic-settings' TomlConfigSettingsSource does
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"'{HOME_FIELD}' in {config_file} is not a string")
    return Path(value).expanduser()


def configured_paths() -> Paths:
    """`Settings().paths` without loading Settings (see `configured_home` for what it raises)."""
    return paths(configured_home())


def ensure_private_dir(path: Path) -> Path:
    """Create `path` and any missing parents readable by the current user only; return it.

    (`Path.mkdir(parents=True, mode=...)` applies the mode to the last folder only.)
    """
    missing = []
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    for folder in reversed(missing):
        folder.mkdir(mode=0o700, exist_ok=True)
    return path


@contextmanager
def atomic_write(dest: Path, mode: str = "wb", suffix: str = ".tmp") -> Iterator[IO]:
    """A private temp file beside `dest` (mode 0o600) that replaces `dest`, synced, only if the block
    finishes without error: a crash, Ctrl-C or full disk leaves `dest` as it was and no temp file."""
    import tempfile

    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=suffix)
    try:
        with os.fdopen(fd, mode) as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, data: dict) -> None:
    """`data` as JSON at `path`, whole or not at all (`atomic_write`)."""
    import json

    with atomic_write(path, "w") as out:
        json.dump(data, out, indent=2)
