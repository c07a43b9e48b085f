"""Writes that never leave a half-written file behind."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def replacing(target: Path) -> Iterator[Path]:
    """A fresh temporary path beside ``target`` to write; renamed over ``target`` when the
    block ends, removed if it fails. ``target`` appears whole or not at all, keeps its mode
    (a new file gets the umask's), and two writers of one target never share a temporary
    file (the name is unique)."""
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".partial")
    os.close(fd)
    partial = Path(name)
    try:
        yield partial
        os.chmod(partial, _mode_for(target))
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """Write to a temporary file in the same folder, flush it to disk, rename it over
    ``path``, then flush the folder (the rename itself survives a power cut): a reader sees
    the old content or the new, never a mix."""
    with replacing(path) as partial, partial.open("w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    sync_folder(path.parent)


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def sync_folder(folder: Path) -> None:
    """fsync a folder, so the renames in it are on disk (a no-op where folders cannot be
    opened for it)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _mode_for(target: Path) -> int:
    """The mode ``target`` has, or the one a new file gets under the umask."""
    try:
        return stat.S_IMODE(target.stat().st_mode)
    except FileNotFoundError:
        return 0o666 & ~_umask()


def _umask() -> int:
    """The process's umask, read without changing it where Linux tells it (setting it to
    read it would race with other threads creating files)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
