"""Datasets that arrive from outside: uploads stored by content (paths a page user types go
through ``core.access``)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from core.errors import StudioError
from core.files import replacing


def store_upload(source: Path, folder: Path) -> Path:
    """Keep an uploaded dataset as ``<sha256>.jsonl``: the same content is stored once, and
    nothing of the uploaded file's name reaches the path."""
    with source.open("rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()  # streamed, not read whole
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{digest}.jsonl"
    if not target.exists():
        try:
            with replacing(target) as partial:
                shutil.copyfile(source, partial)
        except OSError as exc:
            raise StudioError(
                f"the upload could not be stored in {folder}: {exc.strerror or exc}",
                hint="free some disk space and upload it again",
            ) from None
    return target
