"""How long a run has left, from its events: the steps to go at the recent pace of a step,
plus the validations (and the samples after them) still to come at the pace they took.

Dividing the time since Start by the steps done counts the start-up, the step-0 validation
and its samples as if every step cost a share of them: early in a run that made the ETA
several times too long (1,233 s at step 21 of a run that ended 280 s later). Here a step's
cost comes from the training reports' own ``train_seconds`` (averaged over the last few
reports, so one slow report does not swing it), and a validation's from the validations'
``seconds``.
"""

from __future__ import annotations

import math

from core import protocol
from core.params import TrainingParams
from core.train.schedule import Schedule

RECENT_REPORTS = 5  # reports the pace of a step is averaged over
VALIDATION_BATCH_SHARE = 0.5  # a validation batch's cost in steps, before one is measured


def remaining_seconds(events: list[protocol.Event], params: TrainingParams) -> float | None:
    """Seconds left for the run whose ``events`` these are (None until a step's pace is
    known: the first training report)."""
    starts = [i for i, e in enumerate(events) if isinstance(e, protocol.Start)]
    if not starts:
        return None
    start = events[starts[-1]]
    session = events[starts[-1] :]
    reports = [e for e in session if isinstance(e, protocol.Progress)]
    step_seconds = _step_seconds(reports)
    if step_seconds is None:
        return None
    step = max(e.step for e in session if isinstance(e, protocol.Progress | protocol.Activity))
    schedule = Schedule.for_run(params, start.steps_per_epoch)
    steps_left = max(start.total_steps - step, 0)
    validations_left = sum(schedule.evaluates_at(s) for s in range(step + 1, start.total_steps + 1))
    return steps_left * step_seconds + validations_left * _validation_seconds(
        events, start, params, step_seconds
    )


def _step_seconds(reports: list[protocol.Progress]) -> float | None:
    """The pace of a step over the last RECENT_REPORTS reports of this session."""
    if not reports:
        return None
    last = reports[-1]
    first = reports[max(len(reports) - 1 - RECENT_REPORTS, 0)]
    if first is not last and last.step > first.step:
        return (last.train_seconds - first.train_seconds) / (last.step - first.step)
    return last.train_seconds / last.step if last.step else None


def _validation_seconds(
    events: list[protocol.Event], start: protocol.Start, params, step_seconds: float
) -> float:
    """A validation and the samples after it, as the run's own took (or, before any was
    timed, its batches at a share of a step each)."""
    timed = [e.seconds for e in events if isinstance(e, protocol.Validation) and e.seconds]
    if timed:
        validation = sum(timed) / len(timed)
    else:
        batches = math.ceil(start.num_val / max(params.batch_size, 1))
        validation = batches * VALIDATION_BATCH_SHARE * step_seconds
    samples = [e.seconds for e in events if isinstance(e, protocol.Samples)]
    return validation + (sum(samples) / len(samples) if samples else 0.0)
