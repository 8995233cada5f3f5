"""Which files are documents: binary ones are not (`looks_binary`, git's rule), and `walk` picks the files
`slp project add-doc` adds for the paths it is given: a file as it is; a folder walked, with what git would
leave out left out (its .gitignore files, hidden files and folders) and binary files skipped.

Standard library, plus `pathspec` for .gitignore's rules (imported when a folder has one), so the CLI
command stays quick to start. The walk runs on the CLI's side: files are read and uploaded by the client.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

SNIFF_BYTES = 8192  # a NUL in the first 8 KiB marks a binary file, as git decides it
BOMS = ((b"\xff\xfe\x00\x00", "utf-32"), (b"\x00\x00\xfe\xff", "utf-32"), (b"\xef\xbb\xbf", "utf-8-sig"),
        (b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16"))  # longest first: UTF-32 LE starts like UTF-16 LE


def looks_binary(head: bytes) -> bool:
    """A NUL byte in the first bytes of a file without a UTF-16/32 byte order mark (git's rule)."""
    return b"\x00" in head[:SNIFF_BYTES] and not any(head.startswith(bom) for bom, _ in BOMS)


@dataclass
class Found:
    """What a walk found: the files to add, and what it skipped with why (`hidden`, `ignored`, `binary`)."""

    files: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def is_binary(path: Path) -> bool:
    """A file to leave out of a folder: its first bytes say binary (a PDF is a document, not binary)."""
    try:
        with open(path, "rb") as file:
            head = file.read(8192)
    except OSError:
        return False  # unreadable: adding it says so, as one error
    return not head.startswith(b"%PDF-") and looks_binary(head)


def _ignore_spec(folder: Path) -> Optional[Any]:
    ignore = folder / ".gitignore"
    if not ignore.is_file():
        return None
    import pathspec

    try:
        lines = ignore.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    return pathspec.GitIgnoreSpec.from_lines(lines)


def walk(paths: list[Path]) -> Found:
    """The files to add for `paths`, in order, each once. A path that does not exist is a FileNotFoundError."""
    found, seen = Found(), set()

    def take(path: Path) -> None:
        key = os.path.realpath(path)
        if key not in seen:
            seen.add(key)
            found.files.append(path)

    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist")
        if not path.is_dir():
            take(path)  # named on purpose: added whatever it is, and refused by the agent if it cannot be read
            continue
        _walk_folder(path, [], found, take)
    return found


def _walk_folder(folder: Path, specs: list[tuple[Path, Any]], found: Found, take: Any) -> None:
    """Depth first, in name order; `specs` are the .gitignore rules of `folder` and the folders above it in
    the walk, each with the folder its patterns are relative to."""
    spec = _ignore_spec(folder)
    specs = [*specs, (folder, spec)] if spec is not None else specs
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        found.skipped.append((folder, "unreadable"))
        return
    for entry in entries:
        path = Path(entry.path)
        is_dir = entry.is_dir(follow_symlinks=False)
        if entry.name.startswith("."):
            found.skipped.append((path, "hidden"))
        elif any(rules.match_file(path.relative_to(base).as_posix() + ("/" if is_dir else ""))
                 for base, rules in specs):
            found.skipped.append((path, "ignored"))
        elif is_dir:
            _walk_folder(path, specs, found, take)
        elif not entry.is_file():
            found.skipped.append((path, "not a file"))
        elif is_binary(path):
            found.skipped.append((path, "binary"))
        else:
            take(path)
