"""Durable runs: checkpoints, resume after a real SIGKILL, keep-best, early stopping, run states.

Real worker processes on the toy llama; the kills are real signals.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm import load
from mlx_lm.tuner import trainer
from mlx_lm.tuner.datasets import CacheDataset, create_dataset

from core import protocol
from core.adapters.store import AdapterMetadata
from core.data.scan import load_dataset
from core.errors import StudioError
from core.params import ATTENTION_KEYS, MLP_KEYS, TrainingParams
from core.settings import Settings
from core.train import checkpoints
from core.train.runs import RunRecord
from core.train.service import TrainingService
from tests.helpers import (
    colour_rows,
    grow_filesystem,
    processes_mentioning,
    sigkill_at,
    small_filesystem,
    write_jsonl,
)

# save every 5 steps of 12-step epochs: checkpoints fall mid-epoch too
DURABLE = dict(learning_rate=5e-3, epochs=4, lora_layers=-1, batch_size=4, save_every=5, seed=3)
# half the toy's layers adapted: its steps start from the frozen layers' kept outputs
RESUMED = DURABLE | dict(lora_layers=2)
# trained to answer "red" and validated on "blue", the toy model's validation loss first falls
# (it learns the sentence) and then rises (it learns the colour): the last step is not the best
OVERFIT = dict(
    learning_rate=3e-2,
    epochs=8,
    lora_layers=-1,
    rank=16,
    keys=[*ATTENTION_KEYS, *MLP_KEYS],
    eval_every=6,
)


def run_events(run) -> list[protocol.Event]:
    return list(run.follow(timeout=180))


def validations(events) -> list[tuple[int, float]]:
    return [(e.step, round(e.loss, 3)) for e in events if isinstance(e, protocol.Validation)]


def published_events(settings, adapter_id) -> list[protocol.Event]:
    return protocol.read_events(settings.adapters / adapter_id / "events.jsonl")


def weights(settings, adapter_id) -> dict[str, np.ndarray]:
    loaded = mx.load(str(settings.adapters / adapter_id / "adapters.safetensors"))
    return {k: np.array(v) for k, v in loaded.items()}


def sky_rows(colour: str, n: int) -> list[dict]:
    return [
        {
            "messages": [
                {"role": "user", "content": f"What colour is the sky number {i}?"},
                {"role": "assistant", "content": f"The sky is {colour}."},
            ]
        }
        for i in range(n)
    ]


@pytest.fixture
def data(colour_dataset) -> Path:
    return colour_dataset


@pytest.fixture
def conflicting(tmp_path) -> Path:
    """train.jsonl says red, valid.jsonl says blue."""
    folder = tmp_path / "conflicting"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", sky_rows("red", 48))
    write_jsonl(folder / "valid.jsonl", sky_rows("blue", 8))
    return folder


@pytest.fixture(scope="module")
def straight(tmp_path_factory, toy_model):
    """The reference: the RESUMED run, never interrupted."""
    home = tmp_path_factory.mktemp("straight")
    settings = Settings.from_env(home).ensure()
    data = write_jsonl(home / "colours.jsonl", colour_rows())
    run = TrainingService(settings).start(toy_model, data, TrainingParams(**RESUMED))
    assert isinstance(run.wait(timeout=180), protocol.Complete)
    return settings, run.id, data


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_resumed_after_sigkill_equals_the_uninterrupted_run(studio, toy_model, straight, seed):
    """SIGKILL the worker at a (seeded) random step, resume: same weights, same validations."""
    reference_studio, reference_id, data = straight
    service = TrainingService(studio)
    killed = service.start(toy_model, data, TrainingParams(**RESUMED), name="killed")
    kill_at = random.Random(seed).randint(6, 40)
    sigkill_at(killed, kill_at)
    final = killed.last_event
    assert isinstance(final, protocol.Error) and "SIGKILL" in final.error
    record = service.runs.get(killed.id)
    assert record.state == "interrupted" and record.checkpoint_step >= 5
    assert not (studio.adapters / killed.id).exists()

    resumed = service.resume(killed.id)
    events = run_events(resumed)
    assert isinstance(events[-1], protocol.Complete), events[-1]
    restart = next(e for e in events if isinstance(e, protocol.Start) and e.resumed_from)
    assert restart.resumed_from == record.checkpoint_step

    reference, again = weights(reference_studio, reference_id), weights(studio, killed.id)
    assert reference.keys() == again.keys()
    for name in reference:
        np.testing.assert_allclose(again[name], reference[name], atol=1e-4, err_msg=name)
    expected = validations(published_events(reference_studio, reference_id))
    assert validations(published_events(studio, killed.id)) == expected
    steps = [e.step for e in published_events(studio, killed.id) if e.type == "progress"]
    assert steps == sorted(set(steps)) and steps[-1] == 48  # the history continues, no repeats


def test_keep_best_publishes_the_best_step(studio, toy_model, conflicting):
    service = TrainingService(studio)
    run = service.start(toy_model, conflicting, TrainingParams(**OVERFIT))
    complete = run.wait(timeout=180)
    assert isinstance(complete, protocol.Complete), complete
    history = published_events(studio, run.id)
    trained = [(e.step, e.loss) for e in history if e.type == "validation" and e.step > 0]
    best_step, best_loss = min(trained, key=lambda pair: pair[1])
    assert trained[-1][1] > best_loss, "the setup must make the loss rise at the end"
    meta = AdapterMetadata.read(studio.adapters / run.id)
    all_validations = [e.loss for e in history if e.type == "validation"]
    assert meta.bestValidationLoss == min(all_validations) == best_loss
    assert (meta.bestStep, meta.keptCheckpoint, meta.keptStep) == (best_step, "best", best_step)
    assert meta.trainingSteps == 96
    # the published weights are the best step's: they score the best loss, not the last
    published = evaluate(toy_model, studio.adapters / run.id, conflicting)
    assert published == pytest.approx(best_loss, abs=1e-4)


def evaluate(toy_model, adapter: Path, data: Path) -> float:
    """The validation loss of an adapter on the run's validation split, by mlx-lm."""
    model, tokenizer = load(str(toy_model), adapter_path=str(adapter))
    split = load_dataset(data, batch_size=4)
    config = SimpleNamespace(mask_prompt=True)
    valid = CacheDataset(create_dataset(split.valid, tokenizer, config))
    return trainer.evaluate(model, valid, batch_size=4, num_batches=-1)


def test_keep_last_publishes_the_last_step(studio, toy_model, conflicting):
    params = TrainingParams(**OVERFIT, keep="last")
    run = TrainingService(studio).start(toy_model, conflicting, params)
    assert isinstance(run.wait(timeout=180), protocol.Complete)
    meta = AdapterMetadata.read(studio.adapters / run.id)
    assert (meta.keptCheckpoint, meta.keptStep) == ("last", 96)
    last = [e.loss for e in published_events(studio, run.id) if e.type == "validation"][-1]
    published = evaluate(toy_model, studio.adapters / run.id, conflicting)
    assert published == pytest.approx(last, abs=1e-4)


def test_early_stopping_ends_the_run_and_says_so(studio, toy_model, conflicting):
    params = TrainingParams(**OVERFIT, early_stop=2)
    run = TrainingService(studio).start(toy_model, conflicting, params)
    complete = run.wait(timeout=180)
    assert isinstance(complete, protocol.Complete) and complete.stopped_early
    meta = AdapterMetadata.read(studio.adapters / run.id)
    assert meta.stoppedEarly is True and meta.trainingSteps < 96
    history = published_events(studio, run.id)
    assert max(e.step for e in history if e.type == "progress") == meta.trainingSteps
    trained = [(e.step, e.loss) for e in history if e.type == "validation" and e.step > 0]
    best_step = min(trained, key=lambda pair: pair[1])[0]
    assert [step for step, _ in trained if step > best_step] == [
        best_step + 6,
        best_step + 12,
    ]  # two validations without improvement, then the stop
    assert meta.keptStep == best_step


def test_stop_keeps_a_resumable_run_with_its_checkpoint(studio, toy_model, data):
    service = TrainingService(studio)
    run = service.start(toy_model, data, TrainingParams(**{**DURABLE, "epochs": 1000}))
    for event in run.follow(timeout=120):
        if isinstance(event, protocol.Progress) and event.step >= 7:
            break
    run.stop()
    final = run.wait(timeout=60)
    assert isinstance(final, protocol.Error) and final.kind == "cancelled"
    record = service.runs.get(run.id)
    assert record.state == "stopped" and record.checkpoint_step >= 7
    # the stop itself checkpointed the last finished step, even off the save schedule
    saved = checkpoints.latest(studio.runs / run.id / "checkpoints")
    assert saved.name == f"step-{record.checkpoint_step}"
    state = json.loads((saved / "trainer_state.json").read_text())
    assert state["step"] == record.checkpoint_step
    assert (state["epoch"], state["batch_in_epoch"]) == divmod(record.checkpoint_step, 12)
    assert [r.id for r in service.list_runs()] == [run.id]
    assert list(studio.adapters.iterdir()) == []
    service.runs.discard(run.id)
    assert not (studio.runs / run.id).exists()


def test_a_run_left_running_by_a_dead_studio_is_marked_interrupted(studio):
    folder = studio.runs / "0b7ed40e-d82d-49de-819e-5e6f04bc94bc"
    folder.mkdir()
    record = RunRecord(
        id=folder.name,
        name="x",
        state="running",
        model_id="toy",
        model_path="/nowhere",
        dataset_name="x.jsonl",
        params={},
    )
    record.write(folder)
    (folder / "checkpoints" / "step-12").mkdir(parents=True)
    (folder / "checkpoints" / ".step-15.partial").mkdir()
    TrainingService(studio)
    again = RunRecord.read(folder)
    assert again.state == "interrupted" and again.checkpoint_step == 12


def test_ids_from_outside_never_name_a_path(studio):
    service = TrainingService(studio)
    for bad in ("..", "../adapters", "/etc", "0b7ed40e", "x" * 500):
        with pytest.raises(Exception, match="not a run id"):
            service.resume(bad)
        with pytest.raises(Exception, match="not a run id"):
            service.runs.discard(bad)


def test_a_killed_studio_leaves_an_interrupted_run_that_resumes(tmp_path, toy_model, data):
    """SIGKILL the `lora-studio train` process itself: its worker stops after a checkpoint
    (it notices that its studio is gone), the run shows as interrupted, and it resumes."""
    home = tmp_path / "home"
    env = {**os.environ, "LORA_STUDIO_HOME": str(home)}
    command = [sys.executable, "-m", "webapp", "train", "--model", str(toy_model)]
    command += ["--data", str(data), "--lora-layers", "-1", "--epochs", "20", "--save-every", "5"]
    studio_process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    for line in studio_process.stderr:
        if line.startswith("checkpoint at step"):
            break
    studio_process.kill()
    studio_process.wait()
    (run_id,) = [p.name for p in (home / "runs").iterdir() if p.is_dir()]
    deadline = time.monotonic() + 60
    while processes_mentioning(run_id):
        assert time.monotonic() < deadline, "the worker outlived its studio"
        time.sleep(0.1)

    listed = subprocess.run(
        [sys.executable, "-m", "webapp", "runs", "--json"], env=env, capture_output=True, text=True
    )
    (run,) = json.loads(listed.stdout)
    assert (run["id"], run["state"]) == (run_id, "interrupted")
    assert run["checkpoint_step"] >= 5 and run["total_steps"] == 240

    resumed = subprocess.run(
        [sys.executable, "-m", "webapp", "train", "--resume", run_id],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming at step {run['checkpoint_step']}/240" in resumed.stderr
    assert (home / "adapters" / run_id / "adapters.safetensors").is_file()
    assert not (home / "runs" / run_id).exists()


def test_a_full_disk_during_a_checkpoint_keeps_the_previous_one(studio, toy_model, data):
    runs = small_filesystem(studio.home / "small-runs", "300k")
    with runs as folder:
        settings = dataclasses.replace(studio, runs=folder)
        service = TrainingService(settings)
        run = service.start(toy_model, data, TrainingParams(**DURABLE))
        final = run.wait(timeout=180)
        assert isinstance(final, protocol.Error) and final.kind == "disk_full", final
        assert "resume" in final.hint
        record = service.runs.get(run.id)
        assert record.state == "interrupted" and record.checkpoint_step == 5
        saved = folder / run.id / "checkpoints"
        assert [p.name for p in saved.iterdir()] == ["step-5"]  # no partial checkpoint left
        checkpoints.load(saved / "step-5")  # and the previous one loads

        grow_filesystem(folder, "50m")
        resumed = service.resume(run.id)
        complete = resumed.wait(timeout=180)
        assert isinstance(complete, protocol.Complete), complete
        assert (studio.adapters / run.id / "adapters.safetensors").is_file()  # across devices
        assert not (folder / run.id).exists()


def test_a_full_disk_while_publishing_keeps_the_run(studio, toy_model, data):
    with small_filesystem(studio.home / "small-adapters", "32k") as folder:
        settings = dataclasses.replace(studio, adapters=folder)
        service = TrainingService(settings)
        run = service.start(toy_model, data, TrainingParams(**{**DURABLE, "epochs": 1}))
        final = run.wait(timeout=180)
        assert isinstance(final, protocol.Error) and "could not be published" in final.error
        assert f"runs publish {run.id}" in final.hint
        record = service.runs.get(run.id)
        assert record.state == "failed" and record.publishable
        assert list(folder.iterdir()) == []  # no partial adapter
        assert (studio.runs / run.id / "adapters.safetensors").is_file()  # the weights are safe
        with pytest.raises(StudioError, match="only publishing failed"):
            service.resume(run.id)

        grow_filesystem(folder, "10m")
        published = service.publish_again(run.id)
        assert published.adapter_path == str(folder / run.id)
        meta = AdapterMetadata.read(folder / run.id)
        assert meta.trainingSteps == 12 and meta.keptCheckpoint == "best"
        assert not (studio.runs / run.id).exists() and service.list_runs() == []


def test_every_rank_resumes_from_the_step_the_studio_chose_or_says_why(studio, toy_model, data):
    """The worker is given the exact checkpoint (step-N), not a folder to pick the newest
    from: a host where it is missing, or where an older copy sits at that path (a run resumed
    twice, copied once), stops the run with the reason instead of training other weights."""
    import shutil

    from core.machine.hosts import digest

    service = TrainingService(studio)
    run = service.start(toy_model, data, TrainingParams(**{**DURABLE, "epochs": 1000}))
    for event in run.follow(timeout=120):
        if isinstance(event, protocol.Progress) and event.step >= 12:
            break
    run.stop()
    run.wait(timeout=60)
    folder = studio.runs / run.id
    step = service.runs.get(run.id).checkpoint_step
    chosen = checkpoints.step_folder(folder / "checkpoints", step)
    command = [sys.executable, "-m", "core.train.worker", "--model", str(toy_model)]
    command += ["--data", str(folder / "data"), "--output", str(folder / "probe")]
    command += [*TrainingParams(**{**DURABLE, "epochs": 1000}).to_argv()]

    def resumed_from(path: Path) -> protocol.Event:
        done = subprocess.run([*command, "--resume", str(path)], capture_output=True, timeout=120)
        return protocol.parse_line(done.stdout.decode().splitlines()[0])

    missing = resumed_from(checkpoints.step_folder(folder / "checkpoints", 999))
    assert missing.kind == "params" and "step-999, is not here" in missing.error, missing
    older = checkpoints.steps(folder / "checkpoints")[0]
    assert older < step
    stale = folder / "stale" / f"step-{step}"  # an older checkpoint at the chosen step's name
    shutil.copytree(checkpoints.step_folder(folder / "checkpoints", older), stale)
    refused = resumed_from(stale)
    assert refused.kind == "params" and f"holds step {older}, not {step}" in refused.error
    # what a host is asked before a copy: the same content gives the same digest
    assert digest(chosen) != digest(stale) and digest(folder / "nothing") == "missing"
    shutil.rmtree(stale)
    shutil.copytree(chosen, stale)
    asked = [sys.executable, "-m", "core.machine.hosts", "--digest", str(stale)]
    there = subprocess.run(asked, capture_output=True, text=True, timeout=60).stdout.strip()
    assert there == digest(chosen)
    service.runs.discard(run.id)
