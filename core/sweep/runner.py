"""A sweep being run (or resumed): trials one after the other (or ``parallel`` side by side),
each an ordinary durable run, then its adapter measured on the held-out rows.

A trial goes: Optuna proposes its settings; its run starts (named after the sweep and the
settings); each validation loss is reported to the pruner, which may stop it (the run stays,
stopped, saying why; nothing is published); a run that completes is published as any other,
and its objective is measured by the studio's evaluation on the run's test rows (or, without
test rows, is its best validation loss); Optuna is told. Every id goes into the trial's record
as soon as it exists, so a sweep killed at any point resumes each unfinished trial where it
was (its run resumed from its checkpoint, its evaluation from its last row): no trial runs
twice and none is lost.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from core import protocol
from core.adapters.layout import TEST_FILE
from core.adapters.store import AdapterMetadata
from core.errors import StudioError
from core.eval.generation import Sampling
from core.eval.runner import prepare, resume
from core.eval.store import EvalStore
from core.params import TrainingParams, validate_params
from core.serve.engine import InferenceEngine
from core.sweep.space import Vary, settle, words
from core.sweep.store import VALIDATION_LOSS, SweepSpec, SweepStore
from core.sweep.study import open_study, pruning_value
from core.train.runs import RunRecord
from core.train.service import BusyError, TrainingService

log = logging.getLogger(__name__)
SAMPLING = Sampling()  # greedy: the same answers as `lora-studio eval` gives by default


@dataclass
class Sweep:
    """One sweep being run in this process."""

    store: SweepStore
    spec: SweepSpec
    training: TrainingService
    engine: InferenceEngine
    varied: list[Vary]
    stop: threading.Event = field(default_factory=threading.Event)
    say: Callable[[str], None] = lambda sentence: None  # what happens, for a person
    _claimed: set[int] = field(default_factory=set)
    _claim: threading.Lock = field(default_factory=threading.Lock)
    _runs: dict[int, object] = field(default_factory=dict)  # slot -> its run now

    def run(self) -> SweepSpec:
        """Run the trials not done yet; then the sweep is complete, or stopped (resumable)."""
        with self.store.running(self.spec.id):
            began = time.monotonic()
            study = open_study(self.spec, self.store.study_storage(self.spec.id), self.varied)
            self.spec.state, self.spec.error = "running", None
            self.store.save(self.spec)
            slots = [
                threading.Thread(target=self._slot, args=(study, n), name=f"sweep-{n}")
                for n in range(self.spec.parallel)
            ]
            for thread in slots:
                thread.start()
            for thread in slots:
                thread.join()
            self.spec.seconds += time.monotonic() - began
            return self._end(study)

    def halt(self) -> None:
        """Stop the sweep: the trials under way stop at a checkpoint, to resume later."""
        self.stop.set()
        for run in list(self._runs.values()):
            run.stop()

    def stopping(self) -> bool:
        return self.stop.is_set() or self.store.stop_requested(self.spec.id)

    def _end(self, study: optuna.Study) -> SweepSpec:
        unfinished = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if unfinished or _started(study) < self.spec.trials:
            self.spec.state = "failed" if self.spec.error else "stopped"
        else:
            self.spec.state = "complete"
        self.store.save(self.spec)
        return self.spec

    def _slot(self, study: optuna.Study, slot: int) -> None:
        """One slot's trials, one at a time, until none is left or the sweep stops."""
        while (claimed := self._next(study)) is not None:
            trial, frozen = claimed
            try:
                self._trial(trial, frozen, slot)
            except BusyError as exc:  # another training has the studio: resume the sweep later
                self._give_up(exc.message)
            except Exception as exc:  # noqa: BLE001 - the trial stays running, to resume
                log.exception("sweep %s: trial %s failed in the studio", self.spec.id, trial.number)
                self._give_up(f"{type(exc).__name__}: {exc}")

    def _give_up(self, why: str) -> None:
        """Stop the sweep for a reason that is not a trial's (it resumes where it was)."""
        self.spec.error = why
        self.say(f"sweep stopped: {why}")
        self.halt()

    def _next(self, study: optuna.Study) -> tuple[optuna.Trial, FrozenTrial | None] | None:
        """A trial a killed session left unfinished, else a new one while the sweep wants
        more; None when it is done or stopping."""
        with self._claim:
            if self.stopping():
                return None
            for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                if frozen.number not in self._claimed:
                    self._claimed.add(frozen.number)
                    return optuna.Trial(study, frozen._trial_id), frozen
            if _started(study) >= self.spec.trials:
                return None
            trial = study.ask({v.name: v.distribution() for v in self.varied})
            self._claimed.add(trial.number)
            return trial, None

    def _trial(self, trial: optuna.Trial, frozen: FrozenTrial | None, slot: int) -> None:
        """Train (or resume) the trial, measure its adapter, and tell Optuna how it went."""
        began = time.monotonic()
        attrs = dict(frozen.user_attrs) if frozen else {}
        reported = set(frozen.intermediate_values) if frozen else set()
        try:
            if "adapter" not in attrs:
                attrs |= self._train(trial, attrs, reported, slot)
            if "state" not in attrs:
                attrs |= self._measure(trial, attrs)
        except StudioError as exc:
            if isinstance(exc, BusyError):
                raise
            attrs |= {"state": "failed", "note": exc.message}
        finally:
            trial.set_user_attr("seconds", attrs.get("seconds", 0.0) + time.monotonic() - began)
        self._tell(trial, attrs)

    def _tell(self, trial: optuna.Trial, attrs: dict) -> None:
        """Optuna told the trial's outcome; a stopped trial stays running, to resume."""
        state, number = attrs.get("state"), trial.number
        if attrs.get("note"):
            trial.set_user_attr("note", attrs["note"])
        if state == "complete":
            trial.study.tell(trial, attrs["objective"])
            self.say(f"trial {number}: {self.spec.measured} {attrs['objective']:.4g}")
        elif state in ("pruned", "failed"):
            states = {"pruned": TrialState.PRUNED, "failed": TrialState.FAIL}
            trial.study.tell(trial, state=states[state])
            self.say(f"trial {number} {state}: {attrs['note']}")

    def _train(self, trial: optuna.Trial, attrs: dict, reported: set[int], slot: int) -> dict:
        """Train the trial's run to its end: started, resumed, or found published."""
        run_id = attrs.get("run")
        if run_id and (self.training.settings.adapters / run_id).is_dir():
            return _published(self.training.settings.adapters / run_id)  # before a kill
        params = settle(self._fixed(), trial.params)
        if run_id:
            run = self.training.resume(run_id, slot=slot)
            self.say(f"trial {trial.number}: resuming its run {run_id}")
        else:
            run = self.training.start(
                self.spec.model,
                self.spec.data,
                params,
                name=f"{self.spec.name} #{trial.number}: {words(trial.params)}",
                dataset_name=self.spec.data_name,
                test_data=self.spec.test_data,
                force=False,
                slot=slot,
            )
            trial.set_user_attr("run", run.id)
            self.say(f"trial {trial.number} ({words(trial.params)}): run {run.id}")
        self._runs[slot] = run
        try:
            return self._follow(trial, run, reported)
        finally:
            self._runs.pop(slot, None)

    def _follow(self, trial: optuna.Trial, run, reported: set[int]) -> dict:
        """Report each validation to the pruner, stop the run if it says so; how it ended."""
        pruned, validations = None, 0
        for event in run.follow():
            if self.stopping():
                run.stop()
            if not isinstance(event, protocol.Validation) or event.step == 0 or pruned:
                continue
            validations += 1  # the n-th validation (the n-th epoch by default)
            self.say(f"trial {trial.number}: step {event.step} validation loss {event.loss:.4g}")
            if validations not in reported:
                trial.report(pruning_value(event.loss, self.spec.direction), validations)
            if trial.should_prune():
                pruned = _prune_note(event, validations)
                run.stop()
        final = run.wait()
        if pruned:
            return self._pruned(trial, run, pruned)
        if isinstance(final, protocol.Complete):
            found = {"adapter": final.published_id, "steps": final.steps}
            for name, value in (found | {"best_loss": final.best_loss}).items():
                trial.set_user_attr(name, value)
            return found | {"best_loss": final.best_loss}
        if isinstance(final, protocol.Error) and final.kind == "cancelled":
            return {"state": "stopped"}  # the sweep was stopped: the trial resumes with it
        note = final.error if isinstance(final, protocol.Error) else "the run ended unexpectedly"
        return {"state": "failed", "note": note}

    def _pruned(self, trial: optuna.Trial, run, note: str) -> dict:
        """A pruned trial: its run stays (stopped, resumable by hand) and says why."""
        folder = self.training.settings.runs / run.id
        record = RunRecord.read(folder)
        record.pruned, record.hint = note, "resume it to train it to the end anyway"
        record.write(folder)
        trial.set_user_attr("steps", record.step)
        return {"state": "pruned", "note": note}

    def _measure(self, trial: optuna.Trial, attrs: dict) -> dict:
        """The objective of a trial's published adapter, on its test rows: the studio's
        evaluation (resumed where a killed sweep left it), or without test rows its best
        validation loss (when ``held_out`` is not set: no test rows, or none with references)."""
        adapter = attrs["adapter"]
        if not self.spec.held_out:
            return {"state": "complete", "objective": attrs["best_loss"]}
        self.engine.registry.reload()
        test = Path(self.engine.registry.get(adapter).path) / TEST_FILE
        metric = "loss" if self.spec.objective == VALIDATION_LOSS else self.spec.objective
        evals = EvalStore(self.training.settings.evals)
        spec = evals.get(attrs["evaluation"]) if attrs.get("evaluation") else None
        if spec is None or spec.state != "complete":
            evaluation = (
                resume(evals, self.engine, spec.id)
                if spec
                else prepare(
                    evals, self.engine, [adapter], str(test), metrics=(metric,), sampling=SAMPLING
                )
            )
            trial.set_user_attr("evaluation", evaluation.spec.id)
            evaluation.stop = self.stop
            self.say(f"trial {trial.number}: evaluating {adapter} on the held-out rows")
            spec = evaluation.run()
        if spec.state != "complete":
            return {"state": "stopped"}
        stat = spec.summary["metrics"][adapter][metric]
        trial.set_user_attr("low", stat["low"])
        trial.set_user_attr("high", stat["high"])
        return {"state": "complete", "objective": stat["mean"]}

    def _fixed(self) -> TrainingParams:
        return validate_params(self.spec.fixed)


def _started(study: optuna.Study) -> int:
    """Trials begun (an enqueued one waits to be asked for)."""
    return sum(t.state != TrialState.WAITING for t in study.get_trials(deepcopy=False))


def _published(folder: Path) -> dict:
    """A trial whose adapter was published before the sweep was killed."""
    meta = AdapterMetadata.read(folder)
    loss = meta.bestValidationLoss or meta.finalValidationLoss
    return {"adapter": f"lora/{folder.name}", "steps": meta.trainingSteps, "best_loss": loss}


def _prune_note(event: protocol.Validation, validations: int) -> str:
    return (
        f"pruned by the sweep: validation loss {event.loss:.4g} at validation {validations} "
        f"(step {event.step}) is in the worst quarter of the earlier trials' there"
    )
