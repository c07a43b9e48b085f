"""The evaluations folder: ``evals/<id>/spec.json`` (what was asked, its state and, once done,
its summary) and ``evals/<id>/rows.jsonl`` (one line per finished row: the prompt, the
reference, every model's answer, scores and the judge's replies).

Rows are appended as they finish, each line whole (flushed and synced), so a stopped or
killed evaluation keeps every row it finished and resumes from the next; a line cut short
by a kill is dropped when the rows are read back.
"""

from __future__ import annotations

import json
import os
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from core.errors import StudioError
from core.files import write_json_atomic

SPEC_FILE, ROWS_FILE = "spec.json", "rows.jsonl"


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
    rows_total: int
    rows_done: int = 0
    state: Literal["running", "stopped", "complete"] = "running"
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
        """The finished rows, in order; a last line cut short is left out."""
        path = self.path(eval_id) / ROWS_FILE
        if not path.is_file():
            return []
        rows = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                break
        return rows

    def append(self, eval_id: str, rows: list[dict]) -> None:
        """Add finished rows, each line whole on disk before this returns."""
        path = self.path(eval_id) / ROWS_FILE
        self._drop_partial_line(path)
        with path.open("a", encoding="utf-8") as out:
            for row in rows:
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
            out.flush()
            os.fsync(out.fileno())

    @staticmethod
    def _drop_partial_line(path: Path) -> None:
        """A kill mid-write leaves a line without its newline: cut it before appending."""
        if not path.is_file() or path.stat().st_size == 0:
            return
        data = path.read_bytes()
        if not data.endswith(b"\n"):
            with path.open("r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)
