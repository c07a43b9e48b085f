"""A sweep's Optuna study, and what its trials say: the ranking, which adapters cannot be told
apart, and which setting mattered.

The search: a grid when every varied field is a list (each combination once), else TPE (a
list becomes a choice among its values). The pruner stops a trial whose validation loss is
in the worst quarter of the earlier trials' at the same validation (Optuna's
``PercentilePruner``; trials are compared at their n-th validation, which is the n-th epoch by
default whatever their batch size), once two trials have got that far. Each trial's ids (run,
adapter, evaluation) and measured objective live in its user attributes, in the study's
SQLite file: the study is the sweep's record.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from core.sweep.space import Vary, grid_size
from core.sweep.store import SweepSpec

log = logging.getLogger(__name__)
optuna.logging.set_verbosity(optuna.logging.WARNING)  # the studio says what happens itself
MIN_TRIALS_FOR_IMPORTANCE = 4  # completed trials before "which setting mattered" means much
PRUNE_AFTER_TRIALS = 2  # trials that reach each validation before any is pruned there


class GridSampler(optuna.samplers.GridSampler):
    """Optuna's grid, told its trials one by one: its ``after_trial`` stops
    ``study.optimize`` once the last point is told, which raises outside ``optimize`` (a
    sweep asks and tells, and counts its trials itself), so that stop is left out."""

    def after_trial(self, study, trial, state, values) -> None:
        return None


def open_study(spec: SweepSpec, storage: BaseStorage, varied: list[Vary]) -> optuna.Study:
    """The sweep's study, created on first use and loaded (with every trial) after."""
    if grid_size(varied) is not None:
        sampler = GridSampler({v.name: list(v.values) for v in varied}, seed=spec.seed)
    else:
        startup = max(2, min(10, spec.trials // 2))  # random trials before TPE models them
        sampler = optuna.samplers.TPESampler(
            seed=spec.seed, n_startup_trials=startup, constant_liar=spec.parallel > 1
        )
    pruner = (
        optuna.pruners.PercentilePruner(
            75.0, n_startup_trials=PRUNE_AFTER_TRIALS, n_min_trials=PRUNE_AFTER_TRIALS
        )
        if spec.prune
        else optuna.pruners.NopPruner()
    )
    return optuna.create_study(
        storage=storage,
        study_name="sweep",
        direction=spec.direction,
        sampler=sampler,
        pruner=pruner,
        load_if_exists=True,
    )


def pruning_value(loss: float, direction: str) -> float:
    """What a validation loss is reported to the pruner as: the pruner reads intermediate
    values in the study's direction, and a loss is better lower, so a study that maximizes
    its objective (a metric) is told minus the loss."""
    return loss if direction == "minimize" else -loss


@dataclass
class TrialResult:
    """One row of the sweep's table."""

    number: int
    settings: dict[str, Any]
    state: str  # complete, pruned, failed, running, waiting
    run: str | None = None
    adapter: str | None = None
    evaluation: str | None = None
    objective: float | None = None
    low: float | None = None  # the objective's 95% interval, when the held-out rows gave one
    high: float | None = None
    steps: int | None = None
    seconds: float | None = None
    note: str | None = None  # why it was pruned or failed
    rank: int | None = None  # 1 = best; only complete trials are ranked
    tied_with_best: bool = False  # its interval overlaps the best one's
    validation: list[list[float]] = field(default_factory=list)  # [validation n, loss]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


STATES = {
    TrialState.COMPLETE: "complete",
    TrialState.PRUNED: "pruned",
    TrialState.FAIL: "failed",
    TrialState.RUNNING: "running",
    TrialState.WAITING: "waiting",
}


def results(study: optuna.Study) -> list[TrialResult]:
    """Every trial, ranked best first (complete ones by objective, then the rest)."""
    lower = study.direction == optuna.study.StudyDirection.MINIMIZE
    direction = "minimize" if lower else "maximize"
    found = [_result(t, direction) for t in study.get_trials(deepcopy=False)]
    done = [r for r in found if r.state == "complete" and r.objective is not None]
    done.sort(key=lambda r: (r.objective if lower else -r.objective, r.number))
    for place, result in enumerate(done, start=1):
        result.rank = place
    if done:
        best = done[0]
        for result in done[1:]:
            result.tied_with_best = _overlap(result, best)
    rest = sorted((r for r in found if r not in done), key=lambda r: r.number)
    return done + rest


def _result(trial: FrozenTrial, direction: str) -> TrialResult:
    attrs = trial.user_attrs
    return TrialResult(
        number=trial.number,
        settings=dict(trial.params),
        state=STATES.get(trial.state, trial.state.name.lower()),
        run=attrs.get("run"),
        adapter=attrs.get("adapter"),
        evaluation=attrs.get("evaluation"),
        objective=trial.value if trial.state == TrialState.COMPLETE else None,
        low=attrs.get("low"),
        high=attrs.get("high"),
        steps=attrs.get("steps"),
        seconds=attrs.get("seconds"),
        note=attrs.get("note"),
        validation=[
            [n, pruning_value(value, direction)]  # its own inverse: the loss again
            for n, value in sorted(trial.intermediate_values.items())
        ],
    )


def _overlap(one: TrialResult, other: TrialResult) -> bool:
    """Whether two 95% intervals overlap (then the rows cannot tell the two apart); without
    intervals (validation losses alone) nothing is said."""
    bounds = (one.low, one.high, other.low, other.high)
    if any(b is None or math.isnan(b) for b in bounds):
        return False
    return one.low <= other.high and other.low <= one.high


def importances(study: optuna.Study) -> dict[str, float] | None:
    """Which setting mattered: Optuna's parameter importances (fANOVA), when enough trials
    completed and more than one field varied (one field would get all of it by definition)."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    names = {name for t in complete for name in t.params}
    if len(complete) < MIN_TRIALS_FOR_IMPORTANCE or len(names) < 2:
        return None
    try:
        found = optuna.importance.get_param_importances(study)
    except (ValueError, RuntimeError) as exc:  # e.g. every trial gave the same value
        log.info("no parameter importances: %s", exc)
        return None
    return {name: round(value, 4) for name, value in found.items()}
