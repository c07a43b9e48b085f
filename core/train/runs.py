"""Runs that are not (yet) adapters: their state, kept in ``runs/<id>/state.json``.

A run folder is in one of four states until it is published (then it is gone from ``runs/``):

- ``running``: a training process works on it now;
- ``stopped``: the user stopped it; resumable from its last checkpoint;
- ``interrupted``: the worker or the whole studio died (SIGKILL, out of memory, power loss,
  a full disk); resumable from its last checkpoint;
- ``failed``: an error that resuming would not fix (a bad dataset, a missing model), or a
  publish that went wrong (then ``publishable`` is set and the run can be published again).

``state.json`` is rewritten atomically on every change. A ``running`` run whose process is gone
(its liveness lock, ``runs/<id>/.alive``, is free) is marked ``interrupted`` by the next
studio that looks; looking never takes the runs lock that a start needs.
"""

from __future__ import annotations

import fcntl
import shutil
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from core.errors import StudioError
from core.files import write_json_atomic
from core.train import checkpoints

STATE_FILE = "state.json"
CHECKPOINTS = "checkpoints"
DATA = "data"
REWARDS = "rewards"  # a GRPO run's copies of its reward files
LOCK_FILE = ".training.lock"
ALIVE_FILE = ".alive"  # locked by whoever runs the run, for as long as it runs
STOP_REQUEST = "stop"  # "stop this run", from a process that does not own it (core.train.watch)

RunState = Literal["running", "stopped", "interrupted", "failed"]
RESUMABLE: tuple[RunState, ...] = ("stopped", "interrupted")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class RunRecord(BaseModel):
    """state.json: what a run is, where it stands, and everything resuming it needs."""

    model_config = ConfigDict(extra="allow")

    id: str
    name: str
    state: RunState
    model_id: str
    model_path: str
    model_layers: int | None = None
    model_quantization: dict[str, Any] | None = None  # the base's, e.g. {"bits": 4, ...}
    dataset_name: str
    dataset_format: str | None = None
    dataset_system: str | None = None  # the system prompt of every row, if they share one
    params: dict[str, Any]
    launch: dict[str, Any] | None = None  # core.machine.launch.Launch, for a run over several ranks
    # test rows that nearly copy training rows: [test line, training line, similarity]
    leaked_test_rows: list[list] = Field(default_factory=list)
    step: int = 0
    total_steps: int | None = None
    checkpoint_step: int | None = None
    best_validation_loss: float | None = None
    error: str | None = None
    hint: str | None = None
    pruned: str | None = None  # why a sweep stopped it early (core.sweep.runner)
    publishable: bool = False
    completed: dict[str, Any] | None = None  # the worker's complete event, kept to publish again
    elapsed_seconds: float = 0.0
    created_at: str = Field(default_factory=_now)
    updated_at: str = Field(default_factory=_now)

    @property
    def resumable(self) -> bool:
        return self.state in RESUMABLE

    def write(self, folder: Path) -> None:
        self.updated_at = _now()
        write_json_atomic(folder / STATE_FILE, self.model_dump(mode="json"))

    @classmethod
    def read(cls, folder: Path) -> RunRecord:
        """The record of a run folder; one without a readable state.json is a failed run
        (made by an older studio, or damaged), so that it can still be seen and discarded."""
        try:
            return cls.model_validate_json((folder / STATE_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError, ValidationError):
            return cls(
                id=folder.name,
                name=folder.name,
                state="failed",
                model_id="?",
                model_path="",
                dataset_name="?",
                params={},
                error=f"{folder / STATE_FILE} is missing or unreadable",
            )


def check_run_id(run_id: str) -> str:
    """Run ids are UUIDs: anything else (a path, '..') is refused before touching disk."""
    try:
        if str(uuid.UUID(run_id)) == run_id:
            return run_id
    except (ValueError, AttributeError, TypeError):
        pass
    raise StudioError(f"'{run_id}' is not a run id", hint="see `lora-studio runs` for the ids")


class RunStore:
    """The ``runs/`` folder: list, read and discard unfinished runs."""

    def __init__(self, folder: Path):
        self.folder = folder

    def path(self, run_id: str) -> Path:
        return self.folder / check_run_id(run_id)

    def list(self) -> list[RunRecord]:
        """Every run folder's record, newest first."""
        if not self.folder.is_dir():
            return []
        folders = [p for p in self.folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
        records = [RunRecord.read(p) for p in folders]
        return sorted(records, key=lambda r: r.created_at, reverse=True)

    def get(self, run_id: str) -> RunRecord:
        folder = self.path(run_id)
        if not folder.is_dir():
            raise StudioError(f"no run {run_id}", hint="see `lora-studio runs` for the ids")
        return RunRecord.read(folder)

    def discard(self, run_id: str) -> None:
        """Delete a run folder and its checkpoints (never a running run's)."""
        record = self.get(run_id)
        if record.state == "running":
            raise StudioError(f"run {run_id} is running", hint="stop it first, then discard it")
        shutil.rmtree(self.path(run_id))

    def mark_interrupted(self) -> list[RunRecord]:
        """Runs recorded as running whose process is gone (nobody holds their liveness
        lock). Safe at any time, from any process: it takes no lock a start needs."""
        marked = []
        for record in self.list():
            if record.state != "running":
                continue
            folder = self.path(record.id)
            probe = try_lock(folder / ALIVE_FILE)
            if probe is None:
                continue  # its process runs it
            with probe:
                record = RunRecord.read(folder)  # as it is now that nobody can change it
                if record.state != "running":
                    continue
                record.state = "interrupted"
                record.checkpoint_step = latest_checkpoint_step(folder)
                record.error = record.error or "the studio stopped while this run was training"
                record.write(folder)
                marked.append(record)
        return marked


def latest_checkpoint_step(run_folder: Path) -> int | None:
    found = checkpoints.steps(run_folder / CHECKPOINTS)
    return found[-1] if found else None


def take_runs_lock(folder: Path, slot: int = 0) -> IO | None:
    """The exclusive lock on a studio's runs folder, held for a whole run, across processes
    (a CLI run and the page on one studio); None when another holds it. A sweep whose memory
    plan allows several trials at once takes one slot per trial (slot 0 is every run's)."""
    return try_lock(folder / (LOCK_FILE if slot == 0 else f"{LOCK_FILE}.{slot}"))


def hold_alive(run_folder: Path) -> IO:
    """The run's liveness lock, held by whoever runs it (and passed to its worker, so it
    holds while the worker lives). Waits: a lister holds it for a moment at most."""
    lock = (run_folder / ALIVE_FILE).open("a")
    fcntl.flock(lock, fcntl.LOCK_EX)
    return lock


def try_lock(path: Path) -> IO | None:
    """An exclusive lock on ``path`` (created if need be), or None when another holds it."""
    lock = path.open("a")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        return None
    return lock
