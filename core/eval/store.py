"""The evaluations folder: ``evals/<id>/spec.json`` (what was asked, its state and, once done,
its summary) and ``evals/<id>/rows.jsonl`` (one line per finished row: the prompt, the
reference, every model's answer, scores and the judge's replies).

Rows are appended as they finish, each line whole (flushed and synced), so a stopped or
killed evaluation keeps every row it finished and resumes from the next. A row counts once its
newline is on disk: a line cut short by a kill (even one whose JSON is whole) is neither read
back nor counted, and the next append cuts it.

One process runs an evaluation at a time: it holds ``evals/<id>/lock`` (an advisory lock the
system lets go when the process dies; the file says the pid), so a page and ``eval --resume``
cannot both append to one file. A Stop from anywhere (another page, the CLI) is a ``stop``
file the runner sees between chunks.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from core.errors import StudioError
from core.files import write_json_atomic

SPEC_FILE, ROWS_FILE, LOCK_FILE, STOP_FILE = "spec.json", "rows.jsonl", "lock", "stop"
TAIL_BLOCK = 1 << 16  # how far back at a time a cut line's start is looked for


class EvalSpec(BaseModel):
    """spec.json: an evaluation's question, state and (when complete) its summary."""

    id: str
    models: list[str]
    data: str
    data_name: str
    fingerprint: str
    metrics: list[str]
    sampling: dict[str, Any]
    judge: dict[str, Any] | None = None  # {"kind": "url"|"studio", "model", "url"?, ...}
    # held-out rows near-duplicating training rows: {"training", "pairs": [[line, line,
    # similarity]], "excluded"} (``core.data.leaks``); None when not checked
    leaks: dict[str, Any] | None = None
    rows_total: int
    rows_done: int = 0
    # "failed": ended by an error that is not the user's (its message in ``error``); like a
    # stopped one it keeps its rows and resumes
    state: Literal["running", "stopped", "failed", "complete"] = "running"
    error: str | None = None
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat())
    summary: dict[str, Any] | None = None


class EvalStore:
    """Every evaluation of the studio."""

    def __init__(self, folder: Path):
        self.folder = folder

    def create(self, **fields: Any) -> EvalSpec:
        spec = EvalSpec(id=str(uuid.uuid4()), **fields)
        (self.folder / spec.id).mkdir(parents=True)
        self.save(spec)
        return spec

    def save(self, spec: EvalSpec) -> None:
        write_json_atomic(self.folder / spec.id / SPEC_FILE, spec.model_dump(mode="json"))

    def path(self, eval_id: str) -> Path:
        try:
            checked = str(uuid.UUID(eval_id))
        except (ValueError, TypeError, AttributeError):
            raise StudioError(f"{eval_id!r} is not an evaluation id") from None
        folder = self.folder / checked
        if not (folder / SPEC_FILE).is_file():
            raise StudioError(f"no evaluation {checked}", hint="lora-studio evals lists them")
        return folder

    def get(self, eval_id: str) -> EvalSpec:
        return EvalSpec.model_validate_json((self.path(eval_id) / SPEC_FILE).read_text())

    def list(self) -> list[EvalSpec]:
        """Every readable evaluation, newest first."""
        found = []
        for spec_file in self.folder.glob(f"*/{SPEC_FILE}"):
            try:
                found.append(EvalSpec.model_validate_json(spec_file.read_text()))
            except (OSError, ValueError):
                continue
        return sorted(found, key=lambda spec: spec.created_at, reverse=True)

    def rows(self, eval_id: str) -> list[dict]:
        """The finished rows, in order: the lines that end with their newline."""
        path = self.path(eval_id) / ROWS_FILE
        if not path.is_file():
            return []
        *whole, _cut = path.read_bytes().split(b"\n")  # the last piece: empty, or cut short
        rows = []
        for line in whole:
            try:
                rows.append(json.loads(line))
            except ValueError:
                break
        return rows

    def append(self, eval_id: str, rows: list[dict]) -> None:
        """Add finished rows, each line whole on disk before this returns. Only the file's
        tail is read (a cut line's start), so appending stays cheap as the file grows."""
        path = self.path(eval_id) / ROWS_FILE
        with path.open("a+b") as out:
            _cut_partial_line(out)
            for row in rows:
                out.write(json.dumps(row, ensure_ascii=False).encode() + b"\n")
            out.flush()
            os.fsync(out.fileno())

    @contextlib.contextmanager
    def running(self, eval_id: str) -> Iterator[None]:
        """Hold the evaluation's lock while the block runs: refused, naming the process,
        when another holds it."""
        folder = self.path(eval_id)
        with (folder / LOCK_FILE).open("a+") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                lock.seek(0)
                holder = lock.read().strip() or "another process"
                raise StudioError(
                    f"evaluation {eval_id} is running (process {holder})",
                    hint="stop it first: the page's Stop, or lora-studio eval --stop ID",
                ) from None
            lock.truncate(0)
            lock.write(str(os.getpid()))
            lock.flush()
            (folder / STOP_FILE).unlink(missing_ok=True)
            try:
                yield
            finally:
                (folder / STOP_FILE).unlink(missing_ok=True)
                fcntl.flock(lock, fcntl.LOCK_UN)

    def is_running(self, eval_id: str) -> bool:
        """Whether a process holds the evaluation's lock now."""
        lock_file = self.path(eval_id) / LOCK_FILE
        if not lock_file.is_file():
            return False
        with lock_file.open("r") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:
                return True
            fcntl.flock(lock, fcntl.LOCK_UN)
            return False

    def request_stop(self, eval_id: str) -> bool:
        """Ask the process running the evaluation to stop after its chunk; False when
        none runs it."""
        if not self.is_running(eval_id):
            return False
        (self.path(eval_id) / STOP_FILE).touch()
        return True

    def state(self, spec: EvalSpec) -> str:
        """What a person is told of ``spec``: its state, "interrupted" for one whose process
        died while it ran (it resumes like a stopped one)."""
        if spec.state == "running" and not self.is_running(spec.id):
            return "interrupted"
        return spec.state

    def stop_requested(self, eval_id: str) -> bool:
        return (self.folder / eval_id / STOP_FILE).exists()


def _cut_partial_line(f) -> None:
    """A kill mid-write leaves a last line without its newline: cut it, looking back from
    the end a block at a time."""
    end = f.seek(0, os.SEEK_END)
    if end == 0:
        return
    f.seek(end - 1)
    if f.read(1) == b"\n":
        return
    position = end
    while position > 0:
        start = max(0, position - TAIL_BLOCK)
        f.seek(start)
        found = f.read(position - start).rfind(b"\n")
        if found >= 0:
            f.truncate(start + found + 1)
            return
        position = start
    f.truncate(0)
