"""The Train tab's "Try several settings": a sweep of the form's training, with the fields
varied given one per line as a list or a range (core/sweep/). Its trials run one after the
other as ordinary runs (the progress view above follows each); the table ranks their adapters
by held-out evaluation as they finish, with the validation curves overlaid. Stop leaves it
resumable: pick it and Resume."""

from __future__ import annotations

import html
import threading
import time
from dataclasses import dataclass

import gradio as gr

from core.adapters.store import loss_history
from core.errors import StudioError
from core.sweep import prepare
from core.sweep.prepare import OBJECTIVES
from core.sweep.results import summary
from core.sweep.space import varyable, words
from core.sweep.store import VALIDATION_LOSS, SweepStore
from webapp.page import charts
from webapp.page.studio import Studio, explain
from webapp.page.train.form import params as form_params

EXAMPLE = "rank = 4, 8, 16\nlearning_rate = 1e-4 : 1e-3 : log"
SAID_LINES = 8  # the newest sentences the status shows


@dataclass
class SweepPanel:
    vary: gr.Textbox
    trials: gr.Number
    objective: gr.Dropdown
    prune: gr.Checkbox
    start: gr.Button
    stop: gr.Button
    picker: gr.Dropdown
    resume: gr.Button
    status: gr.Markdown
    table: gr.HTML
    chart: gr.HTML


def build(studio: Studio) -> SweepPanel:
    with gr.Accordion("Try several settings (a sweep)", open=False):
        gr.Markdown(
            "The form's settings, with the fields below varied: one per line, a list "
            "(`rank = 4, 8, 16`) or a range (`learning_rate = 1e-4 : 1e-3 : log`). Optuna "
            "picks each trial's values (every combination once when all are lists), stops "
            "the clearly worse trials early, and the adapters are ranked on the held-out rows "
            "(the form's test split, in Advanced) with 95% intervals.  \n"
            f"Fields: {', '.join(varyable())}."
        )
        vary = gr.Textbox(label="Settings to vary", lines=3, placeholder=EXAMPLE)
        with gr.Row():
            trials = gr.Number(None, label="Trials (0: each combination, or 8)", precision=0)
            objective = gr.Dropdown(
                list(OBJECTIVES), value=VALIDATION_LOSS, label="Rank the adapters by"
            )
            prune = gr.Checkbox(True, label="Stop the clearly worse trials early")
        with gr.Row():
            start = gr.Button("Start the sweep")
            stop = gr.Button("Stop the sweep", variant="stop")
        with gr.Row():
            picker = gr.Dropdown(sweep_choices(studio), label="Sweeps", value=None)
            resume = gr.Button("Resume the sweep")
        status = gr.Markdown(elem_id="ls-sweep-status")
        table = gr.HTML(elem_id="ls-sweep-table")
        chart = gr.HTML(elem_id="ls-sweep-chart")
    return SweepPanel(
        vary, trials, objective, prune, start, stop, picker, resume, status, table, chart
    )


def sweep_choices(studio: Studio) -> list[tuple[str, str]]:
    store = SweepStore(studio.settings.sweeps)
    return [(f"{s.name} ({s.state}, {s.created_at[:16]})", s.id) for s in store.list()]


class Sweeping:
    """The page's sweep under way (one at a time: the studio trains one run at a time)."""

    def __init__(self, studio: Studio):
        self.studio = studio
        self.store = SweepStore(studio.settings.sweeps)
        self.current = None

    def start(self, vary: str, trials, objective: str, prune: bool, base, data, name, **form):
        """Check and start a sweep of the form's training; yield (status, table, chart,
        picker) as it goes."""
        try:
            self._refuse_a_second()
            lines = [line.strip() for line in (vary or "").splitlines() if line.strip()]
            varied = {line.partition("=")[0].strip().replace("-", "_") for line in lines}
            if not base or not data:
                raise StudioError("pick a base model and add a dataset first")
            fixed = form_params({k: v for k, v in form.items() if k not in varied})
            sweep = prepare.prepare(
                self.store,
                self.studio.training,
                self.studio.engine,
                model=str(self.studio.registry.get(base).path),
                data=self.studio.dataset_path(data),
                vary=[line.replace(" ", "") for line in lines],
                fixed=self.studio.gated_params(fixed),
                trials=int(trials) if trials else None,
                objective=objective or VALIDATION_LOSS,
                dataset_name=name or None,
                prune=bool(prune),
            )
        except StudioError as exc:
            yield explain(exc), gr.skip(), gr.skip(), gr.skip()
            return
        yield from self._follow(sweep)

    def resume(self, sweep_id: str | None):
        """Go on with a stopped or killed sweep."""
        try:
            self._refuse_a_second()
            if not sweep_id:
                raise StudioError("pick a sweep to resume")
            sweep = prepare.resume(self.store, self.studio.training, self.studio.engine, sweep_id)
        except StudioError as exc:
            yield explain(exc), gr.skip(), gr.skip(), gr.skip()
            return
        yield from self._follow(sweep)

    def halt(self) -> None:
        """Stop the sweep: its trial under way stops at a checkpoint (Resume continues it)."""
        if self.current is not None:
            self.current.halt()

    def show(self, sweep_id: str | None) -> tuple:
        """A sweep's table and curves (any state)."""
        if not sweep_id:
            return "", "", ""
        try:
            spec = self.store.get(sweep_id)
        except StudioError as exc:
            return explain(exc), "", ""
        found = summary(self.store, spec)
        return _said(found), table(found), self._chart(found)

    def _refuse_a_second(self) -> None:
        if self.current is not None:
            raise StudioError(
                f"the sweep {self.current.spec.name} is running in this studio",
                hint="stop it first (Stop the sweep), or wait for it",
            )

    def _follow(self, sweep):
        said: list[str] = []
        sweep.say = said.append
        outcome: dict = {}

        def work():
            try:
                outcome["spec"] = sweep.run()
            except StudioError as exc:
                outcome["error"] = exc

        self.current = sweep
        worker = threading.Thread(target=work, name="sweep", daemon=True)
        worker.start()
        try:
            while worker.is_alive():
                yield self._view(sweep, said, picker=gr.skip())
                time.sleep(1.0)
        finally:
            self.current = None
        if "error" in outcome:
            yield explain(outcome["error"]), gr.skip(), gr.skip(), gr.skip()
            return
        picker = gr.update(choices=sweep_choices(self.studio), value=sweep.spec.id)
        yield self._view(sweep, said, picker)

    def _view(self, sweep, said: list[str], picker) -> tuple:
        found = summary(self.store, sweep.spec)
        head = f"**{sweep.spec.name}**: {found['done']} of {found['trials_asked']} trials"
        head += f" done ({sweep.spec.state})."
        lines = [head, *said[-SAID_LINES:], *(found["said"] if found["done"] else [])]
        return (
            "  \n".join(html.escape(line) for line in lines),
            table(found),
            self._chart(found),
            picker,
        )

    def _chart(self, found: dict) -> str:
        """The trials' validation curves on one chart."""
        rows, names = [], []
        for trial in found["trials"]:
            folder = self._folder(trial["run"])
            if folder is None:
                continue
            name = f"trial {trial['number']}: {words(trial['settings'])}"
            names.append(name)
            rows += [
                {**row, "series": name}
                for row in loss_history(folder)
                if row["series"] == "validation"
            ]
        return charts.compare_chart(rows, names) if rows else ""

    def _folder(self, run_id: str | None):
        for parent in (self.studio.settings.adapters, self.studio.settings.runs):
            if run_id and (parent / run_id).is_dir():
                return parent / run_id
        return None


def _said(found: dict) -> str:
    return "  \n".join(html.escape(line) for line in found["said"])


def table(found: dict) -> str:
    """The trials ranked: settings, the objective with its interval, steps, time, state."""
    rows = []
    for t in found["trials"]:
        interval = f"[{t['low']:.4g}, {t['high']:.4g}]" if t["low"] is not None else "-"
        value = "-" if t["objective"] is None else f"{t['objective']:.4g}"
        state = t["state"] + (" (not distinguishable from the best)" if t["tied_with_best"] else "")
        note = f"<br><small>{html.escape(t['note'])}</small>" if t["note"] else ""
        seconds = "-" if t["seconds"] is None else f"{t['seconds']:.0f} s"
        cells = (t["rank"] or "-", t["number"], words(t["settings"]), value, interval)
        cells += (t["steps"] or "-", seconds)
        row = "".join(f"<td>{html.escape(str(c))}</td>" for c in cells)
        rows.append(f"<tr data-state='{t['state']}'>{row}<td>{html.escape(state)}{note}</td></tr>")
    head = "".join(
        f"<th>{html.escape(h)}</th>"
        for h in (
            "rank",
            "trial",
            "settings",
            found["measured"],
            "95% interval",
            "steps",
            "time",
            "state",
        )
    )
    return f"<table class='ls-compare' id='ls-sweep-trials'><tr>{head}</tr>{''.join(rows)}</table>"
