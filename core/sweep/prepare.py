"""A new sweep, checked before its first trial, or one to resume.

Everything a trial could refuse is refused here instead: every ``--vary`` (its field, its
values, its range), every combination of the varied values and the ranges' ends as a training
of this model on these rows (the method against the rows, the steps, the layers), the
objective (a metric needs held-out rows with references), and ``parallel`` against the memory
plan of the heaviest trial.
"""

from __future__ import annotations

from pathlib import Path

from core.data.scan import DatasetScan
from core.errors import StudioError
from core.eval.cases import read_cases
from core.eval.metrics import METRICS, TOOL_METRICS
from core.eval.verdicts import LOWER_IS_BETTER
from core.machine.memory import available_memory_gb
from core.params import TrainingParams, validate_params
from core.serve.engine import InferenceEngine
from core.sweep.runner import Sweep
from core.sweep.space import MAX_CORNERS, check_space, corners, grid_size, parse_vary, settle
from core.sweep.store import VALIDATION_LOSS, SweepStore
from core.train.service import TrainingService, check_test_data

OBJECTIVES = (VALIDATION_LOSS, *METRICS, *TOOL_METRICS)
DEFAULT_TRIALS = 8  # with a range (a grid tries each combination once)


def prepare(
    store: SweepStore,
    training: TrainingService,
    engine: InferenceEngine,
    *,
    model: str,
    data: str | Path,
    vary: list[str],
    fixed: TrainingParams,
    trials: int | None = None,
    objective: str = VALIDATION_LOSS,
    test_data: str | None = None,
    name: str | None = None,
    dataset_name: str | None = None,
    parallel: int = 1,
    prune: bool = True,
) -> Sweep:
    """A new sweep, every trial's settings checked; nothing runs yet (``Sweep.run``)."""
    varied = [parse_vary(text) for text in vary]
    check_space(varied, fixed, split_test=bool(fixed.test_split))
    every = [settle(fixed, settings) for settings in corners(varied)[:MAX_CORNERS]]
    info, first, dataset = training.check(model, data, every[0], dataset_name=dataset_name)
    fitted = [first, *(training.fit(info, dataset, params) for params in every[1:])]
    if test_data:
        check_test_data(test_data, fixed)
    held_out = _check_objective(objective, test_data, dataset)
    trials = _trials(trials, grid_size(varied))
    _check_parallel(training, info, dataset, fitted, parallel)
    spec = store.create(
        name=(name or "").strip() or f"Sweep on {dataset.name}",
        model=str(info.path),
        data=str(Path(data).expanduser()),
        data_name=dataset.name,
        test_data=str(Path(test_data).expanduser().resolve()) if test_data else None,
        fixed=fixed.model_dump(mode="json", exclude_unset=True),
        vary=list(vary),
        trials=trials,
        objective=objective,
        direction=_direction(objective),
        held_out=held_out,
        parallel=parallel,
        prune=prune,
        seed=fixed.seed,
    )
    return Sweep(store, spec, training, engine, varied)


def resume(
    store: SweepStore, training: TrainingService, engine: InferenceEngine, sweep_id: str
) -> Sweep:
    """A stopped, failed or killed sweep, to go on where it was."""
    spec = store.get(sweep_id)
    if spec.state == "complete":
        raise StudioError(f"sweep {sweep_id} is complete", hint="start a new one")
    if store.is_running(sweep_id):
        raise StudioError(
            f"sweep {sweep_id} is running in another process",
            hint="wait for it, or stop it there (or: lora-studio sweep --stop ID)",
        )
    validate_params(spec.fixed)
    return Sweep(store, spec, training, engine, [parse_vary(text) for text in spec.vary])


def _direction(objective: str) -> str:
    lower = objective == VALIDATION_LOSS or objective in LOWER_IS_BETTER
    return "minimize" if lower else "maximize"


def _trials(asked: int | None, grid: int | None) -> int:
    if asked is not None and asked < 1:
        raise StudioError(f"--trials {asked}: a sweep needs at least 1 trial")
    if grid is not None and (asked is None or asked > grid):
        return grid  # each combination once
    return asked or DEFAULT_TRIALS


def _check_objective(objective: str, test_data: str | None, dataset: DatasetScan) -> bool:
    """Whether the objective is measured on held-out rows by evaluation (else: the run's
    best validation loss); refused when it needs references the rows do not have."""
    if objective not in OBJECTIVES:
        raise StudioError(
            f"--objective {objective}: unknown", hint=f"choose among {', '.join(OBJECTIVES)}"
        )
    rows = test_data or dataset.files.test or (dataset.files.train if dataset.test_count else None)
    if rows is None:
        if objective != VALIDATION_LOSS:
            raise StudioError(
                f"--objective {objective} is measured on held-out rows, and the sweep has none",
                hint="give --test-data FILE or --test-split 0.2, or --objective validation_loss",
            )
        return False
    try:
        references = any(case.reference for case in read_cases(rows))
    except StudioError:
        references = False
    if not references and objective != VALIDATION_LOSS:
        raise StudioError(
            f"--objective {objective} compares answers with references, and the held-out rows "
            "have none (prompts only)",
            hint="--objective validation_loss (for GRPO: the held-out reward)",
        )
    return references


def _check_parallel(training, info, dataset, fitted: list[TrainingParams], parallel: int) -> None:
    """``parallel`` trials at once only when the heaviest trial's memory plan (of the
    settings that bound it, ``fitted``), that many times, fits what the machine has."""
    if parallel == 1:
        return
    if parallel < 1:
        raise StudioError(f"--parallel {parallel}: give 1 or more")
    heaviest = max(training.plan(info, params, dataset).peak_gb for params in fitted)
    available = available_memory_gb()
    if available is not None and heaviest * parallel > available:
        fit = max(1, int(available // heaviest))
        raise StudioError(
            f"--parallel {parallel}: the heaviest trial needs about {heaviest:.1f} GB, "
            f"{parallel} at once {heaviest * parallel:.1f} GB of {available:.1f} GB available",
            hint=f"--parallel {fit} fits" if fit > 1 else "run the trials one at a time",
        )
