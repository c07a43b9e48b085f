"""Learning-rate schedules (mlx-lm's build_schedule), gradient accumulation and gradient
checkpointing in the studio's training loop, on the toy llama with real worker processes."""

from __future__ import annotations

import json

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm.tuner.utils import build_schedule

from core import protocol
from core.errors import StudioError
from core.params import TrainingParams
from core.train import checkpoints
from core.train.service import TrainingService

BASE = dict(learning_rate=1e-2, epochs=2, lora_layers=-1, batch_size=4, seed=5)


def run_to_end(service, data, **params):
    run = service.start(service.settings.models.parent / "toy", data, TrainingParams(**params))
    events = list(run.follow(timeout=180))
    assert isinstance(events[-1], protocol.Complete), events[-1]
    return run, events


@pytest.fixture
def service(studio, toy_model):
    import shutil

    shutil.copytree(toy_model, studio.home / "toy")
    return TrainingService(studio)


def weights(folder) -> dict[str, np.ndarray]:
    return {k: np.array(v) for k, v in mx.load(str(folder / "adapters.safetensors")).items()}


@pytest.mark.parametrize("accumulation", [1, 3])
def test_cosine_with_warmup_gives_mlx_lms_learning_rates(service, colour_dataset, accumulation):
    run, events = run_to_end(
        service,
        colour_dataset,
        **BASE,
        lr_schedule="cosine",
        warmup_steps=0.25,
        grad_accumulation_steps=accumulation,
    )
    config = json.loads((run.adapter_path / "adapter_config.json").read_text())
    updates = 24 // accumulation
    warmup = round(0.25 * updates)
    assert config["lr_schedule"] == {
        "name": "cosine_decay",
        "arguments": [1e-2, updates - warmup, 0.0],
        "warmup": warmup,
        "warmup_init": 0.0,
    }
    schedule = build_schedule(config["lr_schedule"])
    progress = [e for e in events if isinstance(e, protocol.Progress)]
    assert len(progress) == 4  # steps 6, 12, 18, 24
    for event in progress:
        done = event.step // accumulation  # optimizer updates so far
        expected = schedule(mx.array(done - 1)).item()  # the rate of the latest update
        assert event.learning_rate == pytest.approx(expected, rel=1e-6), event.step


def test_a_stop_between_accumulated_batches_resumes_exactly(service, colour_dataset):
    params = {**BASE, "epochs": 6, "grad_accumulation_steps": 4, "save_every": 1000}
    straight, _ = run_to_end(service, colour_dataset, **params)

    run = service.start(
        service.settings.models.parent / "toy", colour_dataset, TrainingParams(**params)
    )
    for event in run.follow(timeout=180):
        if isinstance(event, protocol.Progress) and event.step >= 30:
            break
    run.stop()
    assert run.wait(timeout=60).kind == "cancelled"
    step = service.runs.get(run.id).checkpoint_step
    assert step % 4 == 0  # on an optimizer update, whatever batch the stop met
    saved = checkpoints.step_folder(service.settings.runs / run.id / "checkpoints", step)
    optimizer = mx.load(str(saved / checkpoints.OPTIMIZER_FILE))
    assert optimizer["step"].item() == step // 4  # optimizer steps, not batches
    resumed = service.resume(run.id)
    assert isinstance(resumed.wait(timeout=180), protocol.Complete)
    reference, again = weights(straight.adapter_path), weights(resumed.adapter_path)
    for name in reference:
        np.testing.assert_allclose(again[name], reference[name], atol=1e-4, err_msg=name)


def test_gradient_checkpointing_trains_the_same_weights(service, colour_dataset):
    plain, _ = run_to_end(service, colour_dataset, **BASE, keep="last")
    checkpointed, _ = run_to_end(service, colour_dataset, **BASE, keep="last", grad_checkpoint=True)
    reference, again = weights(plain.adapter_path), weights(checkpointed.adapter_path)
    for name in reference:
        np.testing.assert_allclose(again[name], reference[name], atol=1e-5, err_msg=name)
    config = json.loads((checkpointed.adapter_path / "adapter_config.json").read_text())
    assert config["grad_checkpoint"] is True


def test_schedules_that_do_not_fit_the_run_are_refused_before_it_starts(service, colour_dataset):
    toy = service.settings.models.parent / "toy"
    with pytest.raises(StudioError, match="warmup_steps = 30: the run has 24 optimizer steps"):
        service.start(toy, colour_dataset, TrainingParams(**BASE, warmup_steps=30))
    with pytest.raises(StudioError, match="grad_accumulation_steps = 100: the run has only 24"):
        service.start(toy, colour_dataset, TrainingParams(**BASE, grad_accumulation_steps=100))
    assert service.list_runs() == []
