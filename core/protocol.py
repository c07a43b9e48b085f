"""The JSON-lines messages between the training process and the service.

The worker prints exactly one of these per stdout line; the service parses each line back
with ``parse_line``. Both sides import this module, so the format cannot drift.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

log = logging.getLogger(__name__)


class _Message(BaseModel):
    # Newer workers may add fields; an older service must still read the line.
    model_config = ConfigDict(extra="ignore")

    def to_line(self) -> str:
        return self.model_dump_json() + "\n"


class Start(_Message):
    type: Literal["start"] = "start"
    total_steps: int
    epochs: int
    steps_per_epoch: int
    num_train: int
    num_val: int
    trainable_params: int
    total_params: int
    lora_modules: int = 0
    blas: str = "unknown"
    resumed_from: int | None = None  # the checkpoint's step when the run continues one
    # processes sharing each batch (mlx.launch): tokens/s are then sums over them, and the
    # peak memory the largest of them
    ranks: int = 1
    # "completion_only" (vocabulary projection at the counted positions only) or "default"
    loss: str = "default"
    # layers before the first adapted one whose output is computed once per batch and kept
    # (core.train.frozen): each step runs the others only; 0 when every step runs them all
    frozen_layers: int = 0
    # seconds from the process's start to this line, and its parts: imports (the
    # interpreter, MLX, mlx-lm), data (reading and checking every row), model (loading it,
    # the LoRA layers, tokenizing the rows), loss (choosing the loss function)
    ready_seconds: float | None = None
    phases: dict[str, float] = {}
    # sft, or a preference method (dpo, orpo) and its beta
    method: str = "sft"
    beta: float | None = None


class _Figures(_Message):
    """What a preference method reports beside its loss, as means over the pairs (none for
    SFT). ``*_reward``: beta times the answer's log-probability ratio to the base (DPO) or
    its per-token mean log-probability (ORPO); ``reward_accuracy``: the share of pairs whose
    chosen reward beats the rejected one; ``reward_margin``: chosen minus rejected reward;
    ORPO's ``log_odds_ratio`` and ``nll`` (the chosen answer's per-token negative
    log-likelihood) are the two parts of its loss."""

    reward_accuracy: float | None = None
    reward_margin: float | None = None
    chosen_reward: float | None = None
    rejected_reward: float | None = None
    log_odds_ratio: float | None = None
    nll: float | None = None
    # GRPO: the mean reward of the answers (weighted sum of the rewards) and each reward's
    # own mean; the KL to the base per answer token; the answers' length in tokens; the share
    # of answers whose group had no signal (every answer rewarded the same: nothing learnt)
    reward: float | None = None
    rewards: dict[str, float] | None = None
    kl: float | None = None
    completion_length: float | None = None
    no_signal: float | None = None


class Progress(_Figures):
    type: Literal["progress"] = "progress"
    step: int
    total_steps: int
    epoch: int
    loss: float
    learning_rate: float
    tokens_per_second: float
    peak_memory_gb: float
    progress: float
    # since the run's first step (resumed runs included): what the loss was trained on, and
    # the seconds spent in training steps (validation, checkpoints and start-up excluded)
    trained_tokens: int = 0
    train_seconds: float = 0.0


class Validation(_Figures):
    type: Literal["validation"] = "validation"
    step: int
    epoch: int
    loss: float
    seconds: float | None = None  # what the validation took (samples after it not counted)


class Sample(BaseModel):
    prompt: str
    answer: str
    reward: float | None = None  # GRPO: what the run's rewards give the answer


class Samples(_Message):
    """Greedy answers of the model at ``step`` to a few fixed validation prompts (the same
    prompts all run long), and the seconds they took (not counted as training time)."""

    type: Literal["samples"] = "samples"
    step: int
    samples: list[Sample]
    seconds: float


class Activity(_Message):
    """A sign of life between reports, at most every few seconds: where the run is now
    (``phase`` "train" at ``step``, "validate" at batch ``batch`` of ``batches``, or
    "reference": DPO's pass over the rows with the base, before the start line). Not kept in
    the run's history: it says nothing the reports do not."""

    type: Literal["activity"] = "activity"
    phase: Literal["train", "validate", "reference"]
    step: int
    total_steps: int
    batch: int | None = None
    batches: int | None = None


class Checkpoint(_Message):
    type: Literal["checkpoint"] = "checkpoint"
    step: int
    path: str


class Complete(_Message):
    type: Literal["complete"] = "complete"
    adapter_path: str
    steps: int
    final_loss: float
    adapter_id: str | None = None
    model_id: str | None = None  # a full fine-tuning run's: the new base model's id
    kept: Literal["best", "last"] = "last"  # which weights became the adapter
    kept_step: int | None = None
    best_step: int | None = None
    best_loss: float | None = None
    stopped_early: bool = False

    @property
    def published_id(self) -> str | None:
        """The model id to chat with: ``lora/<id>``, or a full fine-tuning run's model."""
        return f"lora/{self.adapter_id}" if self.adapter_id else self.model_id


OOM_HINT = "lower the batch size, the rank, the max sequence length or the number of LoRA layers"

ErrorKind = Literal[
    "params", "dataset", "model", "out_of_memory", "disk_full", "cancelled", "internal"
]


class Error(_Message):
    type: Literal["error"] = "error"
    error: str
    kind: ErrorKind = "internal"
    hint: str | None = None
    file: str | None = None
    line: int | None = None


class Notice(_Message):
    """Something the person should know once, that does not stop the run: a GRPO reward
    that failed on an answer (scored 0 there), with its first message and the count so far."""

    type: Literal["notice"] = "notice"
    message: str


Event = Annotated[
    Start | Progress | Activity | Validation | Samples | Notice | Checkpoint | Complete | Error,
    Field(discriminator="type"),
]
_event = TypeAdapter(Event)


def parse_line(line: str) -> Event | None:
    """One stdout line as an Event, or None for anything that is not a known message (stray
    output, an unknown type, a malformed object): the stream must survive all of them."""
    line = line.strip()
    if not line:
        return None
    try:
        return _event.validate_python(json.loads(line))
    except (ValueError, ValidationError):
        log.warning("ignoring a line from the training process: %.200s", line)
        return None


def read_events(path: Path) -> list[Event]:
    """A saved event stream (a run's events.jsonl); a missing file is an empty history, and
    lines that do not parse are skipped as they are on the live stream."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    return [event for event in map(parse_line, lines) if event is not None]


def curve(events: list[Event]) -> list[dict]:
    """The run's curves from its events: one row per training report (series "train") and
    validation ("validation"), with its step, loss and the figures a preference method
    reports (None for SFT)."""
    return [
        {
            "step": event.step,
            "series": "train" if isinstance(event, Progress) else "validation",
            "loss": event.loss,
            **{name: getattr(event, name) for name in _Figures.model_fields},
        }
        for event in events
        if isinstance(event, Progress | Validation)
    ]
