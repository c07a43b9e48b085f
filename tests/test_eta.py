"""The ETA a run shows (core/train/eta.py), on an event stream shaped like the walk's run:
a slow start (imports, the step-0 validation and samples) must not be charged to the steps,
and the validations still to come must be."""

from __future__ import annotations

import pytest

from core import protocol
from core.params import TrainingParams
from core.train.eta import remaining_seconds

STEP, VALIDATION, SAMPLES = 1.2, 11.0, 5.0  # seconds, as measured on the Intel walk


def run_until(step: int, total: int = 168, per_epoch: int = 56) -> list[protocol.Event]:
    """A run's events up to ``step``: reports every 5 steps, a validation (and samples)
    at step 0 and at each epoch's end."""
    events: list[protocol.Event] = [
        protocol.Start(
            total_steps=total,
            epochs=3,
            steps_per_epoch=per_epoch,
            num_train=224,
            num_val=56,
            trainable_params=1,
            total_params=2,
        ),
        protocol.Validation(step=0, epoch=0, loss=4.6, seconds=VALIDATION),
        protocol.Samples(step=0, samples=[], seconds=SAMPLES),
    ]
    for s in range(1, step + 1):
        if s % 5 == 0:
            events.append(
                protocol.Progress(
                    step=s,
                    total_steps=total,
                    epoch=1,
                    loss=3.0,
                    learning_rate=1e-4,
                    tokens_per_second=300,
                    peak_memory_gb=1.0,
                    progress=100 * s / total,
                    train_seconds=s * STEP,
                )
            )
        if s % per_epoch == 0:
            events.append(
                protocol.Validation(step=s, epoch=s // per_epoch, loss=3.0, seconds=VALIDATION)
            )
            events.append(protocol.Samples(step=s, samples=[], seconds=SAMPLES))
    return events


def test_the_eta_counts_the_steps_and_the_validations_to_come_not_the_start():
    params = TrainingParams(epochs=3)
    early = remaining_seconds(run_until(20), params)
    # 148 steps, and the validations at steps 56, 112 and 168, each with its samples
    assert early == pytest.approx(148 * STEP + 3 * (VALIDATION + SAMPLES))
    later = remaining_seconds(run_until(120), params)
    assert later == pytest.approx(48 * STEP + 1 * (VALIDATION + SAMPLES))


def test_the_pace_is_the_recent_reports_and_unknown_before_the_first():
    params = TrainingParams(epochs=3)
    assert remaining_seconds(run_until(4), params) is None  # no report yet: "measuring"
    events = run_until(40)
    for e in events:  # the first reports were slow (a cold cache): the recent pace counts
        if isinstance(e, protocol.Progress) and e.step <= 10:
            e.train_seconds = e.step * 10.0
        elif isinstance(e, protocol.Progress):
            e.train_seconds = 100.0 + (e.step - 10) * STEP
    assert remaining_seconds(events, params) == pytest.approx(
        128 * STEP + 3 * (VALIDATION + SAMPLES)
    )


def test_before_any_timed_validation_a_validation_batch_counts_half_a_step():
    events = [e for e in run_until(20) if not isinstance(e, protocol.Validation | protocol.Samples)]
    params = TrainingParams(epochs=3, batch_size=4)
    assert remaining_seconds(events, params) == pytest.approx(148 * STEP + 3 * 14 * 0.5 * STEP)
