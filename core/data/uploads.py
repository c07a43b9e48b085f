"""Datasets that arrive from outside: uploads stored by content, and paths confined to the
folders a shared studio may read."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from core.errors import StudioError
from core.files import replacing


def confine(path: str | Path, roots: list[Path]) -> Path:
    """``path`` with symlinks and ``..`` resolved, if it lies under one of ``roots``;
    otherwise a StudioError naming the roots (the studio is open to other machines, and a
    path box must not read whatever the server can)."""
    try:
        resolved = Path(path).expanduser().resolve()
    except (OSError, ValueError, RuntimeError):
        raise StudioError(f"{str(path)[:200]!r} is not a usable path") from None
    for root in roots:
        if resolved.is_relative_to(root.expanduser().resolve()):
            return resolved
    allowed = ", ".join(str(r) for r in roots)
    raise StudioError(
        f"{path} is outside the folders datasets may be read from ({allowed})",
        hint="upload the file instead, or add its folder to LORA_STUDIO_DATA_ROOTS",
    )


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
