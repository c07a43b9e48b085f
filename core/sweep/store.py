"""The sweeps folder: ``sweeps/<id>/sweep.json`` (what was asked and where it stands) and
``sweeps/<id>/study.db`` (Optuna's study in SQLite: every trial's settings, state,
validation losses and objective, and the ids of its run, adapter and evaluation).

One process runs a sweep at a time: it holds ``sweeps/<id>/lock`` (the system lets it go when
the process dies), so a page and ``sweep --resume`` cannot both add trials. A Stop from
anywhere is a ``stop`` file the runner sees between events.
"""

from __future__ import annotations

import contextlib
import functools
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from optuna.storages import RDBStorage
from pydantic import BaseModel, Field

from core.errors import StudioError
from core.files import write_json_atomic
from core.train.runs import try_lock

SPEC_FILE, STUDY_FILE, LOCK_FILE, STOP_FILE = "sweep.json", "study.db", "lock", "stop"
VALIDATION_LOSS = "validation_loss"


class SweepSpec(BaseModel):
    """sweep.json: a sweep's question and state (its trials are in the study)."""

    id: str
    name: str
    model: str  # the base's id or folder, as ``lora-studio train --model`` takes it
    data: str
    data_name: str
    test_data: str | None = None  # a file of test rows given for every trial
    fixed: dict[str, Any]  # the training parameters every trial shares (as given)
    vary: list[str]  # the --vary texts, as given (parsed again on resume)
    trials: int
    objective: str = VALIDATION_LOSS
    direction: Literal["minimize", "maximize"] = "minimize"
    # measured on the test rows by the studio's evaluation; else each run's best validation
    # loss (no test rows, or rows without references for validation_loss)
    held_out: bool = False
    parallel: int = 1
    prune: bool = True
    seed: int = 0
    # "interrupted": said "running" by a process that died (read so, never written)
    state: Literal["running", "stopped", "failed", "complete", "interrupted"] = "running"
    error: str | None = None
    seconds: float = 0.0  # time spent running it, over all its sessions
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat())

    @property
    def measured(self) -> str:
        """What the objective's figures are, in words."""
        if not self.held_out:
            return "best validation loss (validation rows; no held-out rows)"
        metric = "loss" if self.objective == VALIDATION_LOSS else self.objective
        return f"{metric} on the held-out rows"


@functools.lru_cache(maxsize=32)
def _storage(url: str) -> RDBStorage:
    return RDBStorage(url)


class SweepStore:
    """The ``sweeps/`` folder."""

    def __init__(self, folder: Path):
        self.folder = folder

    def create(self, **fields: Any) -> SweepSpec:
        spec = SweepSpec(id=str(uuid.uuid4()), **fields)
        self.path(spec.id).mkdir(parents=True)
        self.save(spec)
        return spec

    def save(self, spec: SweepSpec) -> None:
        write_json_atomic(self.path(spec.id) / SPEC_FILE, spec.model_dump(mode="json"))

    def path(self, sweep_id: str) -> Path:
        try:
            if str(uuid.UUID(sweep_id)) == sweep_id:
                return self.folder / sweep_id
        except (ValueError, AttributeError, TypeError):
            pass
        raise StudioError(f"'{sweep_id}' is not a sweep id", hint="see `lora-studio sweeps`")

    def study_storage(self, sweep_id: str) -> RDBStorage:
        """The study's storage (SQLite), one per file for the process: the page reads a
        running sweep's table every second, and each new storage would open its own pool."""
        return _storage(f"sqlite:///{self.path(sweep_id) / STUDY_FILE}")

    def get(self, sweep_id: str) -> SweepSpec:
        file = self.path(sweep_id) / SPEC_FILE
        if not file.is_file():
            raise StudioError(f"no sweep {sweep_id}", hint="see `lora-studio sweeps`")
        return self._settled(SweepSpec.model_validate_json(file.read_text(encoding="utf-8")))

    def list(self) -> list[SweepSpec]:
        """Every sweep, newest first (a folder without a readable sweep.json is skipped)."""
        found = []
        for folder in self.folder.glob("*/" + SPEC_FILE):
            with contextlib.suppress(OSError, ValueError):
                found.append(SweepSpec.model_validate_json(folder.read_text(encoding="utf-8")))
        return sorted(map(self._settled, found), key=lambda s: s.created_at, reverse=True)

    def _settled(self, spec: SweepSpec) -> SweepSpec:
        """A sweep said running whose process is gone (its lock free) is interrupted."""
        if spec.state == "running" and not self.is_running(spec.id):
            spec.state = "interrupted"
        return spec

    @contextlib.contextmanager
    def running(self, sweep_id: str) -> Iterator[None]:
        """Hold the sweep's lock while it runs; refused while another process holds it."""
        lock = try_lock(self.path(sweep_id) / LOCK_FILE)
        if lock is None:
            raise StudioError(
                f"sweep {sweep_id} is running in another process",
                hint="wait for it, or stop it there (or: lora-studio sweep --stop ID)",
            )
        (self.path(sweep_id) / STOP_FILE).unlink(missing_ok=True)
        try:
            yield
        finally:
            lock.close()

    def is_running(self, sweep_id: str) -> bool:
        lock = try_lock(self.path(sweep_id) / LOCK_FILE)
        if lock is None:
            return True
        lock.close()
        return False

    def request_stop(self, sweep_id: str) -> bool:
        """Ask the process running the sweep to stop it (its trial stays resumable)."""
        if not self.is_running(sweep_id):
            return False
        (self.path(sweep_id) / STOP_FILE).touch()
        return True

    def stop_requested(self, sweep_id: str) -> bool:
        return (self.path(sweep_id) / STOP_FILE).exists()
