"""The training service end to end: real worker process, real mlx-lm, the toy llama."""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from mlx_lm import generate, load

from core import protocol
from core.adapters.store import AdapterMetadata
from core.data.check import DatasetError
from core.errors import StudioError
from core.params import TrainingParams
from core.train.service import TrainingService
from tests.helpers import colour_rows, write_jsonl

FAST = dict(learning_rate=5e-3, epochs=2, lora_layers=-1, batch_size=4)
PROMPT = [{"role": "user", "content": "What colour is the sky number 7?"}]


def greedy(model, tokenizer, max_tokens=8) -> str:
    prompt = tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True)
    return generate(model, tokenizer, prompt=prompt, max_tokens=max_tokens)


def first(events, kind):
    return next(e for e in events if isinstance(e, kind))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, toy_model):
    """One real two-epoch run, shared by the checks on what it produced."""
    home = tmp_path_factory.mktemp("studio")
    from core.settings import Settings

    service = TrainingService(Settings.from_env(home))
    data = write_jsonl(home / "colours.jsonl", colour_rows())
    run = service.start(toy_model, data, TrainingParams(**FAST), name="Colours")
    events = list(run.follow(timeout=120))
    return service, run, events


def test_events_arrive_in_protocol_order(trained):
    _, _, events = trained
    kinds = [e.type for e in events]
    assert kinds[0] == "start" and kinds[-1] == "complete"
    start = first(events, protocol.Start)
    assert start.total_steps == 2 * start.steps_per_epoch == 24
    assert (start.num_train, start.num_val) == (51, 13)
    progress = [e for e in events if isinstance(e, protocol.Progress)]
    assert [p.step for p in progress] == sorted(p.step for p in progress)
    assert progress[-1].progress == 100.0 and progress[-1].tokens_per_second > 0
    # one validation before training and one at the end of each epoch
    assert [(v.step, v.epoch) for v in events if isinstance(v, protocol.Validation)] == [
        (0, 0),
        (12, 1),
        (24, 2),
    ]


def test_validation_loss_falls(trained):
    _, _, events = trained
    losses = [e.loss for e in events if isinstance(e, protocol.Validation)]
    assert min(losses[1:]) < losses[0] - 0.5


def test_published_adapter_is_complete_and_loads_in_mlx_lm(trained, toy_model):
    service, run, events = trained
    complete = events[-1]
    assert complete.adapter_id == run.id
    folder = service.settings.adapters / run.id
    assert complete.adapter_path == str(folder)
    assert {"adapters.safetensors", "adapter_config.json", "metadata.json", "events.jsonl"} <= {
        p.name for p in folder.iterdir()
    }
    assert [p for p in service.settings.runs.iterdir() if p.is_dir()] == []
    base_model, tokenizer = load(str(toy_model))
    tuned_model, _ = load(str(toy_model), adapter_path=str(folder))
    assert greedy(tuned_model, tokenizer) != greedy(base_model, tokenizer)
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["fine_tune_type"] == "lora"
    assert config["lora_parameters"]["scale"] == 2.0  # alpha 16 / rank 8


def test_mlx_lm_generate_command_accepts_the_adapter(trained, toy_model):
    service, run, _ = trained
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mlx_lm",
            "generate",
            "--model",
            str(toy_model),
            "--adapter-path",
            str(service.settings.adapters / run.id),
            "--prompt",
            "hello",
            "--max-tokens",
            "4",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


def test_metadata_holds_the_real_values(trained):
    service, run, events = trained
    meta = AdapterMetadata.read(service.settings.adapters / run.id)
    start = first(events, protocol.Start)
    validations = [e.loss for e in events if isinstance(e, protocol.Validation)]
    progress = [e for e in events if isinstance(e, protocol.Progress)]
    assert meta.adapterName == "Colours" and meta.baseModelId == "toy"
    assert meta.trainingDataset == "colours.jsonl"
    assert (meta.epochs, meta.rank, meta.alpha, meta.batchSize) == (2, 8, 16.0, 4)
    assert meta.learningRate == 5e-3 and meta.loraLayers == 4
    assert meta.trainingSteps == 24
    assert meta.finalLoss == progress[-1].loss
    assert meta.finalValidationLoss == validations[-1]
    assert meta.bestValidationLoss == min(validations[1:])
    assert (
        meta.parameterCount == start.trainable_params == 4 * 8 * (2 * 128 + 2 * 96)
    )  # 4 layers, r8
    assert meta.layerCount == 16
    assert meta.durationSeconds > 0 and meta.tokensPerSecond > 0
    recorded = [
        json.loads(line)
        for line in (service.settings.adapters / run.id / "events.jsonl").read_text().splitlines()
    ]
    assert [r["type"] for r in recorded] == [e.type for e in events]
    assert recorded[-1]["adapter_path"] == str(service.settings.adapters / run.id)


def long_run(service, toy_model, tmp_path):
    data = write_jsonl(tmp_path / "colours.jsonl", colour_rows())
    params = TrainingParams(**{**FAST, "epochs": 1000})
    run = service.start(toy_model, data, params)
    for event in run.follow(timeout=120):
        if isinstance(event, protocol.Progress):
            return run
    pytest.fail("the run never reported progress")


def leftovers(studio):
    return [p for p in (*studio.runs.iterdir(), *studio.adapters.iterdir()) if p.is_dir()]


def no_adapters(studio) -> bool:
    return not any(p.is_dir() for p in studio.adapters.iterdir())


def test_stop_ends_the_process_and_publishes_nothing(studio, toy_model, tmp_path):
    service = TrainingService(studio)
    run = long_run(service, toy_model, tmp_path)
    run.stop()
    final = run.wait(timeout=60)
    assert isinstance(final, protocol.Error) and final.kind == "cancelled"
    assert process_gone(run.pid)
    assert no_adapters(studio) and service.runs.get(run.id).state == "stopped"


def process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_a_killed_worker_gives_an_error_and_no_adapter(studio, toy_model, tmp_path):
    service = TrainingService(studio)
    run = long_run(service, toy_model, tmp_path)
    os.kill(run.pid, signal.SIGKILL)
    final = run.wait(timeout=60)
    assert isinstance(final, protocol.Error)
    assert "SIGKILL" in final.error and final.kind == "out_of_memory"
    # the advice comes with the memory plan's numbers
    assert "The plan for this run: needs about" in final.hint and "--grad-checkpoint" in final.hint
    assert no_adapters(studio) and service.runs.get(run.id).state == "interrupted"


def test_one_training_at_a_time(studio, toy_model, tmp_path):
    service = TrainingService(studio)
    run = long_run(service, toy_model, tmp_path)
    try:
        with pytest.raises(StudioError, match="already running"):
            service.start(toy_model, tmp_path / "colours.jsonl", TrainingParams(**FAST))
        # another service on the same studio (a second process, say) is refused too
        with pytest.raises(StudioError, match="already running"):
            TrainingService(studio).start(
                toy_model, tmp_path / "colours.jsonl", TrainingParams(**FAST)
            )
    finally:
        run.stop()
        run.wait(timeout=60)
    again = service.start(toy_model, tmp_path / "colours.jsonl", TrainingParams(**FAST))
    assert isinstance(again.wait(timeout=120), protocol.Complete)


def test_nothing_starts_when_the_input_is_bad(studio, toy_model, tmp_path):
    service = TrainingService(studio)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{broken\n')
    with pytest.raises(DatasetError) as caught:
        service.start(toy_model, bad, TrainingParams(**FAST))
    assert caught.value.problems[0].line == 2
    with pytest.raises(StudioError, match="has 4 layers"):
        service.start(toy_model, bad, TrainingParams(lora_layers=8))
    assert leftovers(studio) == [] and service.current is None


class ScriptedService(TrainingService):
    """The real service, launching a stand-in process that misbehaves on purpose."""

    def __init__(self, settings, script: str):
        super().__init__(settings)
        self.script = textwrap.dedent(script)

    def worker_command(self):
        return [sys.executable, "-c", self.script]


def test_the_stream_survives_garbage_and_a_silent_death(studio, toy_model, colour_dataset):
    service = ScriptedService(
        studio,
        """
        import sys
        print("loading... \\x1b[32mdone\\x1b[0m")
        print('{"type": "start", "total_steps": 4, "epochs": 1, "steps_per_epoch": 4,'
              ' "num_train": 4, "num_val": 1, "trainable_params": 1, "total_params": 2}')
        print('{"type": "telemetry", "gpu": "none"}')
        print('{"type": "progress", "step": "NaN"}')
        print("[1, 2")
        sys.stdout.flush()
        print("Segmentation fault (pretend)", file=sys.stderr)
        sys.exit(3)
        """,
    )
    run = service.start(toy_model, colour_dataset, TrainingParams(**FAST))
    events = list(run.follow(timeout=60))
    assert [e.type for e in events] == ["start", "error"]
    assert "exited with code 3" in events[-1].error
    assert "Segmentation fault (pretend)" in events[-1].error
    assert no_adapters(studio) and service.runs.get(run.id).state == "interrupted"


def test_complete_without_weights_is_not_published(studio, toy_model, colour_dataset):
    service = ScriptedService(
        studio,
        """print('{"type": "complete", "adapter_path": "x", "steps": 1, "final_loss": 1.0}')""",
    )
    final = service.start(toy_model, colour_dataset, TrainingParams(**FAST)).wait(timeout=60)
    assert isinstance(final, protocol.Error) and "no adapter weights" in final.error
    assert no_adapters(studio)


def test_a_stop_that_meets_the_end_of_the_run_keeps_the_adapter(studio, toy_model, colour_dataset):
    """A stop arriving while the worker finishes must not throw the finished adapter away."""
    service = ScriptedService(
        studio,
        """
        import pathlib, sys
        print('{"type": "start", "total_steps": 1, "epochs": 1, "steps_per_epoch": 1,'
              ' "num_train": 4, "num_val": 1, "trainable_params": 1, "total_params": 2}',
              flush=True)
        assert sys.stdin.readline() == "stop\\n"  # the service's stop
        output = pathlib.Path(sys.argv[sys.argv.index("--output") + 1])
        (output / "adapters.safetensors").write_bytes(b"weights")
        print('{"type": "complete", "adapter_path": "x", "steps": 1, "final_loss": 1.0}')
        """,
    )
    run = service.start(toy_model, colour_dataset, TrainingParams(**FAST))
    next(e for e in run.follow(timeout=60) if isinstance(e, protocol.Start))
    run.stop()
    assert isinstance(run.wait(timeout=60), protocol.Complete)
    assert (studio.adapters / run.id / "adapters.safetensors").read_bytes() == b"weights"
    assert service.list_runs() == []


class MissingWorkerService(TrainingService):
    def worker_command(self):
        return ["/nonexistent/python-for-the-worker"]


def test_a_worker_that_cannot_start_is_explained_and_leaks_nothing(studio, toy_model, tmp_path):
    data = write_jsonl(tmp_path / "colours.jsonl", colour_rows())
    service = MissingWorkerService(studio)
    gc.collect()  # what earlier tests left to the collector (a database pool) closes now
    open_files = len(os.listdir("/proc/self/fd"))
    with pytest.raises(StudioError, match="the training process did not start"):
        service.start(toy_model, data, TrainingParams(**FAST))
    assert len(os.listdir("/proc/self/fd")) == open_files  # the log file and lock closed
    (record,) = service.list_runs()
    assert record.state == "interrupted" and "did not start" in record.error
    run = TrainingService(studio).start(toy_model, data, TrainingParams(**FAST))  # lock freed
    run.stop()
    run.wait(timeout=60)


def test_listing_runs_never_refuses_a_start(studio, toy_model, tmp_path):
    """A page load (or `lora-studio runs`) lists runs while another browser starts one: the
    listing holds no lock the start needs. The listing is held inside its marking phase
    (another thread) while the start happens."""
    import threading

    service = TrainingService(studio)
    data = write_jsonl(tmp_path / "colours.jsonl", colour_rows())
    inside, release = threading.Event(), threading.Event()
    mark = service.runs.mark_interrupted

    def slow_mark():
        inside.set()
        release.wait(30)
        return mark()

    service.runs.mark_interrupted = slow_mark
    lister = threading.Thread(target=service.list_runs)
    lister.start()
    assert inside.wait(10)
    try:
        service.runs.mark_interrupted = mark
        run = service.start(toy_model, data, TrainingParams(**FAST))
    finally:
        release.set()
        lister.join(30)
    assert isinstance(run.wait(timeout=120), protocol.Complete)


def test_a_run_being_trained_elsewhere_is_never_marked_interrupted(studio, toy_model, tmp_path):
    """Another studio process on the same folders lists the runs while one trains."""
    service = TrainingService(studio)
    run = long_run(service, toy_model, tmp_path)
    try:
        other = TrainingService(studio)
        assert [r.state for r in other.list_runs()] == ["running"]
    finally:
        run.stop()
        run.wait(timeout=60)
    assert [r.state for r in TrainingService(studio).list_runs()] == ["stopped"]


def test_a_reader_failure_stops_the_worker_before_the_lock_goes(
    studio, toy_model, tmp_path, monkeypatch
):
    """Handling an event fails (a full disk while recording the run, say): the worker is
    stopped and gone before the runs lock is released, so no resume can double it."""
    import errno

    from core.train.process import TrainingRun
    from tests.helpers import processes_mentioning

    add = TrainingRun._add

    def failing_add(self, event):
        if isinstance(event, protocol.Progress):
            raise OSError(errno.ENOSPC, "No space left on device")
        add(self, event)

    monkeypatch.setattr(TrainingRun, "_add", failing_add)
    service = TrainingService(studio)
    data = write_jsonl(tmp_path / "colours.jsonl", colour_rows())
    run = service.start(toy_model, data, TrainingParams(**{**FAST, "epochs": 1000}))
    final = run.wait(timeout=120)
    assert isinstance(final, protocol.Error) and "No space left" in final.error
    assert processes_mentioning(str(run.folder)) == []  # the worker is gone already
    record = service.runs.get(run.id)
    assert record.state == "interrupted"
    monkeypatch.setattr(TrainingRun, "_add", add)
    resumed = service.resume(run.id)  # the lock is free, and one worker runs the run
    resumed.stop()
    resumed.wait(timeout=60)


def test_the_published_folder_never_holds_run_only_files(studio, toy_model, tmp_path, monkeypatch):
    """The adapter folder appears in adapters/ whole: what only a run needs (checkpoints,
    data, state) is gone from it before the rename, not after."""
    import os

    from core.train import publish

    seen = {}
    rename = os.rename

    def watching_rename(source, target):
        if Path(target).parent == studio.adapters:
            seen[Path(target).name] = sorted(p.name for p in Path(source).iterdir())
        rename(source, target)

    monkeypatch.setattr(publish.os, "rename", watching_rename)
    data = write_jsonl(tmp_path / "colours.jsonl", colour_rows())
    run = TrainingService(studio).start(toy_model, data, TrainingParams(**FAST))
    assert isinstance(run.wait(timeout=120), protocol.Complete)
    assert seen[run.id] and not set(seen[run.id]) & set(publish.RUN_ONLY), seen
    assert "adapters.safetensors" in seen[run.id]
    assert not [p for p in studio.runs.iterdir() if p.name.startswith(f".{run.id}")]
