"""--report-to: TensorBoard's own reader and MLflow's own client read back exactly the figures
of the run's events.jsonl, a run killed with SIGKILL and resumed included (same tracker run,
same step axis, no point twice); W&B writes its offline run; a tracker that fails is said once
and the run completes."""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from core import protocol
from core.eval.runner import evaluate_published
from core.eval.store import EvalStore
from core.params import TrainingParams
from core.serve.engine import InferenceEngine
from core.serve.registry import ModelRegistry
from core.train.reporters import STATE_FILE, TENSORBOARD_DIR, figures
from core.train.service import TrainingService
from tests.helpers import colour_rows, sigkill_at, studio_with_toy, write_jsonl

PARAMS = dict(epochs=3, lora_layers=-1, learning_rate=1e-2, batch_size=2, test_split=0.2)


def _expected(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every figure of the run's events, by tracker name: [(step, value)] in step order."""
    series = defaultdict(list)
    for event in protocol.read_events(folder / "events.jsonl"):
        kind = {"progress": "train", "validation": "validation"}.get(event.type)
        if kind:
            for name, value in figures(event).items():
                series[f"{kind}/{name}"].append((event.step, value))
    return dict(series)


def _tensorboard(folder: Path) -> dict[str, list[tuple[int, float]]]:
    reader = EventAccumulator(str(folder / TENSORBOARD_DIR), size_guidance={"scalars": 0})
    reader.Reload()
    return {
        tag: [(s.step, s.value) for s in reader.Scalars(tag)] for tag in reader.Tags()["scalars"]
    }


def _mlflow(home: Path, run_id: str, names) -> dict[str, list[tuple[int, float]]]:
    client = MlflowClient(f"sqlite:///{home / 'mlruns' / 'mlflow.db'}")
    found = {}
    for name in names:
        history = client.get_metric_history(run_id, name.replace("/", "."))
        found[name] = sorted((m.step, m.value) for m in history)
    return found


@pytest.mark.slow
def test_the_trackers_read_back_exactly_the_runs_figures_across_a_kill_and_resume(
    tmp_path, toy_model, monkeypatch
):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    settings = studio_with_toy(tmp_path / "studio", toy_model)
    data = write_jsonl(tmp_path / "colours.jsonl", colour_rows())
    service = TrainingService(settings)
    params = TrainingParams(**PARAMS, report_to=["tensorboard", "mlflow", "wandb"])
    run = service.start(settings.models / "toy", data, params, name="tracked")
    sigkill_at(run, 40)
    said = protocol.read_events(settings.runs / run.id / "events.jsonl")
    reported = max(e.step for e in said if e.type == "progress")
    assert reported >= 40  # reported up to the kill, beyond the checkpoint it resumes at
    assert service.runs.get(run.id).checkpoint_step < reported
    resumed = service.resume(run.id)
    final = resumed.wait(timeout=300)
    assert isinstance(final, protocol.Complete), final
    folder = settings.adapters / run.id
    assert not [e for e in protocol.read_events(folder / "events.jsonl") if e.type == "notice"]

    expected = _expected(folder)
    assert len(expected["train/loss"]) > 10 and "validation/loss" in expected
    steps = [step for step, _ in expected["train/loss"]]
    assert steps == sorted(set(steps))  # the events themselves: one point per step
    board = _tensorboard(folder)
    assert set(board) == set(expected)
    for name, points in expected.items():
        assert [s for s, _ in board[name]] == [s for s, _ in points], name  # no point twice
        assert [v for _, v in board[name]] == pytest.approx([v for _, v in points], rel=1e-6)
    state = json.loads((folder / STATE_FILE).read_text())
    assert _mlflow(settings.home, state["mlflow"], expected) == expected  # float64: exact
    client = MlflowClient(f"sqlite:///{settings.home / 'mlruns' / 'mlflow.db'}")
    tracked = client.get_run(state["mlflow"])
    assert tracked.data.params["learning_rate"] == "0.01"
    assert tracked.data.params["base_model"] == "toy" and tracked.info.status == "FINISHED"
    wandb_runs = list((folder / "wandb").glob(f"offline-run-*-{run.id}/run-{run.id}.wandb"))
    assert wandb_runs, "W&B wrote no offline run"

    # the held-out scores, once the adapter is evaluated on its test rows
    engine = InferenceEngine(ModelRegistry(settings))
    try:
        spec = evaluate_published(EvalStore(settings.evals), engine, f"lora/{run.id}")
    finally:
        engine.close()
    loss = spec.summary["metrics"][f"lora/{run.id}"]["loss"]["mean"]
    history = client.get_metric_history(state["mlflow"], "test.loss")
    assert [(m.step, m.value) for m in history] == [(final.steps, pytest.approx(loss, rel=1e-3))]
    assert "test/loss" in _tensorboard(folder)


def test_a_missing_or_failing_tracker_is_said_once_and_the_run_completes(
    tmp_path, toy_model, monkeypatch
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "nonsense-scheme://nowhere")  # fails
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # as if not installed
    settings = studio_with_toy(tmp_path / "studio", toy_model)
    data = write_jsonl(tmp_path / "colours.jsonl", colour_rows())
    params = TrainingParams(epochs=2, lora_layers=-1, report_to=["mlflow", "tensorboard"])
    run = TrainingService(settings).start(settings.models / "toy", data, params)
    final = run.wait(timeout=300)
    assert isinstance(final, protocol.Complete), final
    notices = [e.message for e in run.events if isinstance(e, protocol.Notice)]
    assert len(notices) == 2, notices  # each once, not once per event
    assert notices[0].startswith("mlflow failed") and "goes on without it" in notices[0]
    assert notices[1].startswith("tensorboard is not installed (tensorboardX)")
    assert "pip install 'mlx-lora-studio[tracking]'" in notices[1]
    published = protocol.read_events(settings.adapters / run.id / "events.jsonl")
    assert [e.message for e in published if e.type == "notice"] == notices


def test_an_unknown_tracker_is_refused_before_the_run():
    with pytest.raises(ValueError, match="unknown tracker comet"):
        TrainingParams(report_to=["tensorboard", "comet"])
