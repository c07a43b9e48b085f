"""The Train tab's progress line (webapp/page/train/view.py) at the ends of a run: what it says
once the run is done, and while a validation goes on."""

from __future__ import annotations

from types import SimpleNamespace

from core import protocol
from core.params import TrainingParams
from webapp.page.train.view import _progress_line


def events(finished: bool) -> list[protocol.Event]:
    found = [
        protocol.Start(
            total_steps=14,
            epochs=1,
            steps_per_epoch=14,
            num_train=56,
            num_val=56,
            trainable_params=1,
            total_params=2,
        ),
        protocol.Progress(
            step=14,
            total_steps=14,
            epoch=1,
            loss=2.0,
            learning_rate=1e-4,
            tokens_per_second=300,
            peak_memory_gb=1.0,
            progress=100,
            train_seconds=14.0,
        ),
        protocol.Activity(phase="validate", step=14, total_steps=14, batch=14, batches=14),
    ]
    if finished:
        found.append(protocol.Complete(adapter_path="/x", steps=14, final_loss=2.0))
    return found


def test_done_shows_no_validation_still_going():
    run = SimpleNamespace(done=True, params=TrainingParams())
    _, text = _progress_line(run, events(finished=True))
    assert "validating" not in text and "step 14/14" in text and "ETA" not in text


def test_a_validation_under_way_is_said():
    run = SimpleNamespace(done=False, params=TrainingParams())
    _, text = _progress_line(run, events(finished=False))
    assert "validating: batch 14 of 14" in text and "ETA" in text
