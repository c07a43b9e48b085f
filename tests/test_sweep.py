"""Sweeps: the real ``lora-studio sweep`` on the toy model, killed with SIGKILL in its third
trial and resumed to one ranking; Optuna's pruner stopping a worse trial; the ranking against
``lora-studio eval``'s own figures; every bad --vary and objective refused before a trial."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from core.errors import StudioError
from core.params import TrainingParams
from core.serve.engine import InferenceEngine
from core.serve.registry import ModelRegistry
from core.sweep import prepare
from core.sweep.space import parse_vary
from core.sweep.store import SweepStore
from core.sweep.study import open_study
from core.train.runs import RunRecord
from core.train.service import TrainingService
from tests.helpers import colour_rows, lora_studio, write_jsonl
from webapp.cli import sweep_command
from webapp.cli.main import build_parser

FIXED = ["--epochs", "2", "--lora-layers", "-1", "--test-split", "0.2"]


def _sweep_command(toy_model: Path, data: Path, *more: str) -> list[str]:
    return [
        "sweep",
        "--model",
        str(toy_model),
        "--data",
        str(data),
        "--vary",
        "rank=4,8",
        "--vary",
        "learning_rate=1e-3:1e-2:log",
        *FIXED,
        *more,
    ]


def _kill_in_third_trial(home: Path, command: list[str]) -> str:
    """Start the sweep, SIGKILL it once its third trial (number 2) has trained a while; the
    id of that trial's run."""
    env = {**os.environ, "LORA_STUDIO_HOME": str(home)}
    process = subprocess.Popen(
        [sys.executable, "-m", "webapp", *command],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    run_id = None
    for line in process.stderr:
        if line.startswith("trial 2 ("):
            run_id = line.rsplit("run ", 1)[1].strip()
        if run_id and line.startswith("trial 2: step"):
            process.send_signal(signal.SIGKILL)
            break
    process.wait(timeout=60)
    assert run_id, "the sweep never reached its third trial"
    return run_id


@pytest.mark.slow
def test_a_sweep_killed_in_its_third_trial_resumes_to_six_trials_and_one_ranking(
    tmp_path, toy_model
):
    home = tmp_path / "studio"
    data = write_jsonl(tmp_path / "colours.jsonl", colour_rows())
    killed_run = _kill_in_third_trial(
        home, _sweep_command(toy_model, data, "--trials", "6", "--no-prune")
    )
    (sweep_id,) = [p.name for p in (home / "sweeps").iterdir()]
    listed = json.loads(lora_studio("sweeps", "--json", home=home).stdout)
    assert listed[0]["id"] == sweep_id and listed[0]["state"] == "interrupted"

    done = lora_studio("sweep", "--resume", sweep_id, "--json", home=home, timeout=600)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["id"] == sweep_id and result["state"] == "complete"
    trials = result["trials"]
    assert sorted(t["number"] for t in trials) == list(range(6))
    assert all(t["state"] == "complete" for t in trials), trials
    # no trial run twice, none lost: six runs in all, each published once
    runs = [t["run"] for t in trials]
    assert len(set(runs)) == 6 and killed_run in runs
    assert sorted(p.name for p in (home / "adapters").iterdir()) == sorted(runs)
    assert not list((home / "runs").glob("*/state.json"))
    # the killed trial's run went on from its checkpoint: its events say it resumed
    events = (home / "adapters" / killed_run / "events.jsonl").read_text().splitlines()
    assert any(json.loads(e).get("resumed_from") for e in events)
    # the ranking is the one each adapter's own evaluation gives
    assert [t["rank"] for t in trials] == [1, 2, 3, 4, 5, 6]
    adapters, losses = [t["adapter"] for t in trials], {}
    for t in trials:
        test = home / "adapters" / t["run"] / "test.jsonl"  # the same rows in every run
        own = ["eval", t["adapter"], "--data", str(test), "--metrics", "loss", "--json"]
        evaluated = lora_studio(*own, home=home)
        assert evaluated.returncode == 0, evaluated.stderr
        losses[t["adapter"]] = json.loads(evaluated.stdout)["metrics"][t["adapter"]]["loss"]
    assert sorted(adapters, key=lambda a: losses[a]["mean"]) == adapters
    for t in trials:
        assert t["objective"] == pytest.approx(losses[t["adapter"]]["mean"], rel=1e-6)
        assert (t["low"], t["high"]) == pytest.approx(
            (losses[t["adapter"]]["low"], losses[t["adapter"]]["high"])
        )
    # the table says which trials the rows cannot tell apart from the best
    table = lora_studio("sweeps", home=home)
    assert sweep_id in table.stdout and "complete" in table.stdout


def _services(home: Path):
    from core.settings import Settings

    settings = Settings.from_env(home).ensure()
    training = TrainingService(settings)
    return settings, training, InferenceEngine(ModelRegistry(settings))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("objective", "split"), [("validation_loss", 0.0), ("token_f1", 0.2)], ids=["loss", "metric"]
)
def test_the_pruner_stops_a_trial_whose_validation_loss_is_worse(
    tmp_path, toy_model, objective, split
):
    """Whichever way the objective goes (a loss down, a metric up), the pruner reads the
    validation losses as losses."""
    settings, training, engine = _services(tmp_path / "studio")
    data = write_jsonl(tmp_path / "colours.jsonl", colour_rows())
    store = SweepStore(settings.sweeps)
    try:
        sweep = prepare.prepare(
            store,
            training,
            engine,
            model=str(toy_model),
            data=data,
            vary=["learning_rate=1e-2,2e-2,1e-7"],
            fixed=TrainingParams(epochs=3, lora_layers=-1, test_split=split),
            objective=objective,
        )
        # the two good settings first, so that the pruner has trials to compare the third with
        study = open_study(sweep.spec, store.study_storage(sweep.spec.id), sweep.varied)
        for rate in (1e-2, 2e-2, 1e-7):
            study.enqueue_trial({"learning_rate": rate})
        spec = sweep.run()
    finally:
        engine.close()
    assert spec.state == "complete", spec.error
    from core.sweep.results import summary

    found = summary(store, spec)
    states = {t["settings"]["learning_rate"]: t for t in found["trials"]}
    assert states[1e-2]["state"] == states[2e-2]["state"] == "complete"
    pruned = states[1e-7]
    assert pruned["state"] == "pruned" and "worst quarter" in pruned["note"]
    assert pruned["steps"] < states[1e-2]["steps"]  # stopped before its end
    # its run stays, stopped, saying why; nothing of it is published
    record = RunRecord.read(settings.runs / pruned["run"])
    assert record.state == "stopped" and "pruned by the sweep" in record.pruned
    listed = json.loads(lora_studio("runs", "--json", home=settings.home).stdout)
    assert [r["pruned"] for r in listed] == [record.pruned]
    assert not (settings.adapters / pruned["run"]).exists()
    assert found["held_out"] is bool(split)  # without test rows: the best validation loss
    assert [t["rank"] for t in found["trials"][:2]] == [1, 2]


@pytest.mark.parametrize(
    ("vary", "said"),
    [
        ("colour=1,2", "--vary colour: unknown field"),
        ("keys=q_proj", "--vary keys: not a number or a choice"),
        ("learning_rate=1e-3:1e-4", "the range is empty"),
        ("rank=0,8", "allowed 1 <= rank <= 256"),
        ("rank=4:512", "allowed 1 <= rank <= 256"),
        ("learning_rate=0:1e-3:log", "out of range"),
        ("method=sft,ppo", "allowed: sft, dpo, orpo, grpo"),
        ("rank", "give NAME=V1,V2"),
    ],
)
def test_a_bad_vary_is_refused_naming_the_field_and_its_range(vary, said):
    with pytest.raises(StudioError) as refused:
        parse_vary(vary)
    assert said in f"{refused.value.message} {refused.value.hint}"


def test_bad_sweeps_are_refused_before_any_trial(tmp_path, toy_model):
    home = tmp_path / "studio"
    data = write_jsonl(tmp_path / "colours.jsonl", colour_rows())
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "Sky?"}] * 8)
    base = ["sweep", "--model", str(toy_model), "--data", str(data), "--lora-layers", "-1"]
    cases = [
        (["--vary", "rank=4:512"], "allowed 1 <= rank <= 256"),
        (["--vary", "rank=4,8", "--rank", "8"], "both fixed"),
        (["--vary", "rank=4,8", "--vary", "rank=16"], "varied twice"),
        (["--vary", "seed=1,2", "--test-split", "0.2"], "--test-data"),
        (["--vary", "rank=4,8", "--objective", "token_f1"], "has none"),
        (["--vary", "rank=4,8", "--objective", "accuracy"], "unknown"),
        (["--vary", "method=sft,dpo"], "preference rows"),
        (["--vary", "rank=4,8", "--objective", "chrf", "--test-data", str(prompts)], "have none"),
        (["--vary", "rank=4,8", "--parallel", "9999"], "GB available"),
    ]
    settings, training, engine = _services(home)
    try:  # the command's own parsing and checks, in this process (a CLI start costs seconds)
        for extra, said in cases:
            args = build_parser().parse_args([*base, *extra])
            with pytest.raises(StudioError) as refused:
                sweep_command._sweep(args, SweepStore(settings.sweeps), training, engine, settings)
            assert said in str(refused.value), (extra, str(refused.value))
    finally:
        engine.close()
    refused = lora_studio(*base, *cases[0][0], home=home)  # and as a person sees it
    assert refused.returncode == 2 and cases[0][1] in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr
    assert not list((home / "sweeps").iterdir()), "a refused sweep left a folder"
    assert not list((home / "runs").iterdir()), "a refused sweep started a run"


@pytest.mark.slow
def test_two_trials_train_side_by_side_when_the_memory_plan_allows(tmp_path, toy_model):
    from datetime import datetime, timedelta

    from core.adapters.store import AdapterMetadata

    home = tmp_path / "studio"
    data = write_jsonl(tmp_path / "colours.jsonl", colour_rows())
    command = _sweep_command(toy_model, data, "--trials", "2", "--parallel", "2", "--json")
    done = lora_studio(*command, home=home, timeout=600)
    assert done.returncode == 0, done.stderr
    trials = json.loads(done.stdout)["trials"]
    assert [t["state"] for t in trials] == ["complete", "complete"]
    spans = []
    for trial in trials:
        meta = AdapterMetadata.read(home / "adapters" / trial["run"])
        end = datetime.fromisoformat(meta.createdAt)
        spans.append((end - timedelta(seconds=meta.durationSeconds), end))
    (first_start, first_end), (second_start, second_end) = sorted(spans)
    assert second_start < first_end, "the two trials did not train at the same time"


def test_the_ranking_the_ties_and_which_setting_mattered(tmp_path):
    """From a study's trials (made directly, no training): complete trials ranked by their
    objective, the ones whose interval overlaps the best's marked, pruned ones last, and
    Optuna's importances once four trials completed with two fields varied."""
    import optuna

    from core.sweep.results import said
    from core.sweep.study import importances, results

    store = SweepStore(tmp_path / "sweeps")
    spec = store.create(
        name="ties",
        model="m",
        data="d",
        data_name="d",
        fixed={},
        vary=[],
        trials=7,
        objective="token_f1",
        direction="maximize",
        held_out=True,
    )
    varied = [parse_vary("rank=4,8,16"), parse_vary("learning_rate=1e-4:1e-2:log")]
    study = open_study(spec, store.study_storage(spec.id), varied)
    spaces = {v.name: v.distribution() for v in varied}
    made = [(4, 1e-4, 0.20), (8, 1e-3, 0.62), (16, 1e-3, 0.60), (8, 1e-2, 0.41), (4, 3e-3, 0.58)]
    for rank, rate, value in made:
        attrs = {"low": value - 0.03, "high": value + 0.03, "adapter": f"lora/{rank}-{rate}"}
        study.add_trial(
            optuna.trial.create_trial(
                params={"rank": rank, "learning_rate": rate},
                distributions=spaces,
                value=value,
                user_attrs=attrs,
            )
        )
    study.add_trial(
        optuna.trial.create_trial(
            params={"rank": 4, "learning_rate": 1e-4},
            distributions=spaces,
            state=optuna.trial.TrialState.PRUNED,
            user_attrs={"note": "pruned by the sweep"},
        )
    )
    found = results(study)
    assert [r.objective for r in found[:5]] == [0.62, 0.60, 0.58, 0.41, 0.20]
    assert [r.rank for r in found] == [1, 2, 3, 4, 5, None]
    assert [r.tied_with_best for r in found[:5]] == [False, True, True, False, False]
    assert found[-1].state == "pruned"
    weights = importances(study)
    assert set(weights) == {"rank", "learning_rate"} and sum(weights.values()) == pytest.approx(1)
    sentences = said(spec, found, weights)
    assert sentences[0].startswith("best: trial 1 (rank=8, learning_rate=0.001)")
    assert "trial(s) 2, 4 cannot be told apart from it" in sentences[1]
    assert "pruned: trial(s) 5" in sentences
    assert sentences[-1].startswith("which setting mattered")
