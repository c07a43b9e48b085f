"""Checkpoints of a training run: everything resume needs, each written whole or not at all.

``runs/<id>/checkpoints/step-<N>/`` holds

- ``adapters.safetensors``: the trained weights (mlx-lm's names, loadable as an adapter): the
  LoRA layers, or for full fine-tuning the trained layers' own weights,
- ``optimizer.safetensors``: ``tree_flatten(optimizer.state)`` (Adam's moments, its step count,
  which drives the learning-rate schedule, and the learning rate),
- ``trainer_state.json``: ``TrainerState`` (step, epoch, position in the epoch's batch order,
  seeds and the random key, the best validation so far, early-stopping patience, counters).

A checkpoint is written into a dot-folder, flushed to disk and renamed into place, so a crash,
a power loss or a full disk in the middle leaves the earlier checkpoints as they were. The last
``KEEP_LAST`` are kept, plus the one with the best validation loss; a full fine-tuning run's
checkpoints hold whole layers, so it keeps only the newest and the best.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten

from core.adapters.layout import WEIGHTS_FILE

OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "trainer_state.json"
KEEP_LAST = 2
_STEP_FOLDER = re.compile(r"step-(\d+)")


@dataclass
class TrainerState:
    """Where the training loop is: enough to continue it exactly, step for step."""

    seed: int
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    random_key: list[int] = field(default_factory=list)
    last_eval_step: int | None = None
    best_step: int | None = None
    best_loss: float | None = None
    evals_since_best: int = 0
    trained_tokens: int = 0
    train_seconds: float = 0.0


def step_folder(folder: Path, step: int) -> Path:
    return folder / f"step-{step}"


def step_of(path: Path) -> int | None:
    """N for a checkpoint folder named step-N, else None."""
    found = _STEP_FOLDER.fullmatch(path.name)
    return int(found.group(1)) if found else None


def steps(folder: Path) -> list[int]:
    """The steps of the complete checkpoints in ``folder``, oldest first."""
    if not folder.is_dir():
        return []
    found = (_STEP_FOLDER.fullmatch(p.name) for p in folder.iterdir() if p.is_dir())
    return sorted(int(m.group(1)) for m in found if m)


def latest(folder: Path) -> Path | None:
    """The newest complete checkpoint, or None."""
    found = steps(folder)
    return step_folder(folder, found[-1]) if found else None


def save(folder: Path, model, optimizer, state: TrainerState) -> Path:
    """Write the checkpoint of ``state.step``; raises OSError (disk full...) with nothing
    half-written left behind."""
    target = step_folder(folder, state.step)
    staging = folder / f".step-{state.step}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir(parents=True)
        _save_arrays(staging / WEIGHTS_FILE, dict(tree_flatten(model.trainable_parameters())))
        _save_arrays(staging / OPTIMIZER_FILE, dict(tree_flatten(optimizer.state)))
        (staging / STATE_FILE).write_text(json.dumps(asdict(state), indent=2))
        for path in (*staging.iterdir(), staging):
            _fsync(path)  # on disk before the rename makes it the checkpoint: power loss too
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
        _fsync(folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _save_arrays(path: Path, arrays: dict[str, mx.array]) -> None:
    """``mx.save_safetensors``, whose failed writes are RuntimeErrors without an errno: a
    write that fails for want of space becomes the OSError (ENOSPC) that it is."""
    try:
        mx.save_safetensors(str(path), arrays)
    except RuntimeError as exc:
        needed = sum(a.nbytes for a in arrays.values())
        full = shutil.disk_usage(path.parent).free < needed
        raise OSError(errno.ENOSPC if full else errno.EIO, f"{exc} ({path})") from exc


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load(path: Path) -> tuple[dict[str, mx.array], dict[str, mx.array], TrainerState]:
    """The LoRA weights, the flat optimizer state and the trainer state of a checkpoint."""
    state = TrainerState(**json.loads((path / STATE_FILE).read_text()))
    return mx.load(str(path / WEIGHTS_FILE)), mx.load(str(path / OPTIMIZER_FILE)), state


def prune(folder: Path, keep: set[int], last: int = KEEP_LAST) -> None:
    """Remove all but the ``last`` newest checkpoints and those in ``keep``."""
    found = steps(folder)
    for step in found[:-last]:
        if step not in keep:
            shutil.rmtree(step_folder(folder, step), ignore_errors=True)
