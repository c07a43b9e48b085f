"""The trackers a run reports to (``--report-to tensorboard,mlflow,wandb``), fed from the
service side's typed events: the worker stays lean, and a tracker never reaches a run.

Each tracker writes with its own library: TensorBoard event files (tensorboardX) in the run's
``tensorboard/`` folder (published with the adapter), MLflow to ``MLFLOW_TRACKING_URI`` or the
studio's own store (``mlruns/mlflow.db``, SQLite, artifacts beside it), Weights & Biases
offline unless the user has logged in (``WANDB_API_KEY``, or ``wandb login``). What each gets:
the parameters once; every figure of every progress and validation event as
``train/<figure>`` and ``validation/<figure>`` at the run's step; the samples as text; and,
once the adapter has been evaluated on its test rows, the held-out scores (``report_scores``).

A tracker whose library is missing, or that fails, is said once (a notice in the run's
events) and dropped; the run goes on. A resumed run continues the same tracker runs (their
ids are kept in ``trackers.json``) on the same step axis; the steps it redoes after its
checkpoint are not reported again, as they are not written to its history again
(``TrainingRun``): the trackers hold exactly the figures of the run's events.jsonl.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core import protocol
from core.files import write_json_atomic
from core.params import TRACKERS

log = logging.getLogger(__name__)

STATE_FILE = "trackers.json"  # in the run (then adapter) folder
TENSORBOARD_DIR = "tensorboard"
MLRUNS = "mlruns"  # the studio's own MLflow store, in its home folder
AXIS = {"step", "total_steps", "type"}  # not figures: the step axis and the event's kind
EXPERIMENT = "lora-studio"


def figures(event: protocol.Event) -> dict[str, float]:
    """Every number an event carries, by name (a dict of numbers as ``name/key``)."""
    found: dict[str, float] = {}
    for name, value in event.model_dump(exclude_none=True).items():
        if name in AXIS or isinstance(value, bool):
            continue
        if isinstance(value, int | float):
            found[name] = float(value)
        elif isinstance(value, dict):
            found |= {f"{name}/{k}": float(v) for k, v in value.items() if _number(v)}
    return found


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class Tracker:
    """One tracker's run (a subclass per tool); ``state`` is what survives a resume."""

    name = ""

    def __init__(self, folder: Path, state: dict, run_name: str, mlruns: Path):
        self.folder = folder

    def params(self, values: dict[str, Any]) -> None: ...

    def scalars(self, step: int, values: dict[str, float]) -> None: ...

    def text(self, step: int, name: str, text: str) -> None: ...

    def close(self, finished: bool) -> None: ...


class TensorBoard(Tracker):
    name = "tensorboard"

    def __init__(self, folder: Path, state: dict, run_name: str, mlruns: Path):
        from tensorboardX import SummaryWriter

        super().__init__(folder, state, run_name, mlruns)
        self.writer = SummaryWriter(str(folder / TENSORBOARD_DIR))

    def params(self, values: dict[str, Any]) -> None:
        rows = "\n".join(f"| {k} | {v} |" for k, v in values.items())
        self.writer.add_text("parameters", "| parameter | value |\n| --- | --- |\n" + rows, 0)
        self.writer.flush()

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for name, value in values.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()  # what is said reported must be on disk (a kill may follow)

    def text(self, step: int, name: str, text: str) -> None:
        self.writer.add_text(name, text, step)
        self.writer.flush()

    def close(self, finished: bool) -> None:
        self.writer.close()


class MLflow(Tracker):
    name = "mlflow"

    def __init__(self, folder: Path, state: dict, run_name: str, mlruns: Path):
        from mlflow.tracking import MlflowClient

        super().__init__(folder, state, run_name, mlruns)
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            mlruns.mkdir(parents=True, exist_ok=True)
            uri = f"sqlite:///{mlruns / 'mlflow.db'}"
        self.client = MlflowClient(uri)
        if not state.get("mlflow"):
            experiment = self._experiment(mlruns)
            run = self.client.create_run(experiment, run_name=run_name)
            state["mlflow"] = run.info.run_id
        self.run_id = state["mlflow"]

    def _experiment(self, mlruns: Path) -> str:
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", EXPERIMENT)
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        return self.client.create_experiment(
            name, artifact_location=(mlruns / "artifacts").as_uri()
        )

    def params(self, values: dict[str, Any]) -> None:
        from mlflow.entities import Param

        params = [Param(k, str(v)[:6000]) for k, v in values.items()]
        self.client.log_batch(self.run_id, params=params)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k.replace("/", "."), v, now, step) for k, v in values.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def text(self, step: int, name: str, text: str) -> None:
        self.client.log_text(self.run_id, text, f"{name}/step-{step}.md")

    def close(self, finished: bool) -> None:
        self.client.set_terminated(self.run_id, "FINISHED" if finished else "KILLED")


class Wandb(Tracker):
    name = "wandb"

    def __init__(self, folder: Path, state: dict, run_name: str, mlruns: Path):
        import wandb

        super().__init__(folder, state, run_name, mlruns)
        state.setdefault("wandb", folder.name)  # the run's id: the same when it resumes
        logged_in = bool(os.environ.get("WANDB_API_KEY")) or _netrc_has("api.wandb.ai")
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", EXPERIMENT),
            id=state["wandb"],
            name=run_name,
            resume="allow",
            dir=str(folder),
            mode=os.environ.get("WANDB_MODE") or ("online" if logged_in else "offline"),
            settings=wandb.Settings(silent=True, console="off"),
        )

    def params(self, values: dict[str, Any]) -> None:
        self.run.config.update(values, allow_val_change=True)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def text(self, step: int, name: str, text: str) -> None:
        import wandb

        self.run.log({name: wandb.Html(f"<pre>{_escape(text)}</pre>")}, step=step)

    def close(self, finished: bool) -> None:
        self.run.finish(exit_code=0 if finished else 1)


CLASSES: dict[str, type[Tracker]] = dict(zip(TRACKERS, (TensorBoard, MLflow, Wandb), strict=True))
KINDS = {protocol.Progress: "train", protocol.Validation: "validation"}


class Reporters:
    """The run's trackers, fed event by event; each failure said once through ``notice``.
    ``params``: what the run was asked (its parameters, base and dataset), reported once."""

    def __init__(
        self,
        names: list[str],
        folder: Path,
        *,
        run_name: str,
        mlruns: Path,
        notice: Callable[[str], None],
        params: dict[str, Any] | None = None,
    ):
        self.folder, self.notice, self.given = folder, notice, params or {}
        self.state = _read_state(folder) | {"trackers": list(names)}
        self.trackers: list[Tracker] = []
        for name in names:
            opened = self._guard(
                name, lambda n=name: CLASSES[n](folder, self.state, run_name, mlruns)
            )
            if opened is not None:
                self.trackers.append(opened)
        if names:
            self._save()

    def report(self, event: protocol.Event) -> None:
        """One event to every tracker."""
        if not self.trackers:
            return
        if isinstance(event, protocol.Start) and not self.state.get("params"):
            values = self.given | {k: v for k, v in figures(event).items() if "/" not in k}
            self._each(lambda t: t.params(values))
            self.state["params"] = True
            self._save()
        if isinstance(event, protocol.Samples):
            text = "\n\n".join(f"**{s.prompt}**\n\n{s.answer}" for s in event.samples)
            self._each(lambda t: t.text(event.step, "samples", text))
        elif kind := KINDS.get(type(event)):
            self.scores(event.step, {f"{kind}/{k}": v for k, v in figures(event).items()})

    def scores(self, step: int, values: dict[str, float]) -> None:
        self._each(lambda t: t.scalars(step, values))

    def close(self, finished: bool) -> None:
        self._each(lambda t: t.close(finished))
        self.trackers = []

    def _each(self, call: Callable[[Tracker], None]) -> None:
        for tracker in list(self.trackers):
            if self._guard(tracker.name, lambda t=tracker: call(t) or True) is None:
                self.trackers.remove(tracker)

    def _guard(self, name: str, call: Callable[[], Any]) -> Any:
        """``call()``, or None once the failure is said."""
        try:
            return call()
        except ImportError as exc:
            self._say(
                name, f"is not installed ({exc.name}): pip install 'mlx-lora-studio[tracking]'"
            )
        except Exception as exc:  # noqa: BLE001 - a tracker must never stop a run
            log.exception("tracker %s failed", name)
            self._say(name, f"failed ({type(exc).__name__}: {exc})")
        return None

    def _say(self, name: str, what: str) -> None:
        self.notice(f"{name} {what}; the run goes on without it")

    def _save(self) -> None:
        try:
            write_json_atomic(self.folder / STATE_FILE, self.state)
        except OSError:  # a full disk fails the run where it matters, not here
            log.exception("could not save the trackers' state in %s", self.folder)


def report_scores(
    folder: Path, step: int, scores: dict[str, float], mlruns: Path, notice: Callable[[str], None]
) -> None:
    """A published adapter's held-out scores (``test/<metric>``) to the trackers its run
    reported to (its ``trackers.json``), at its last step."""
    state = _read_state(folder)
    if not state.get("trackers"):
        return
    reporters = Reporters(
        state["trackers"], folder, run_name=folder.name, mlruns=mlruns, notice=notice
    )
    reporters.scores(step, {f"test/{k}": v for k, v in scores.items()})
    reporters.close(finished=True)


def _read_state(folder: Path) -> dict:
    try:
        return json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _netrc_has(host: str) -> bool:
    import netrc

    try:
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
