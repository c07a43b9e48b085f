"""The Evaluate tab: models answer a held-out file; the summary table (a row per model, a
column per metric, 95% intervals) and the rows side by side, sortable by how much one model
did worse than another. Past evaluations open again. ``core.eval`` does the work; the CLI
(``lora-studio eval``) is the same evaluation."""

from __future__ import annotations

import html
import time
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import pandas as pd

from core.adapters.layout import TEST_FILE
from core.data.uploads import store_upload
from core.errors import StudioError
from core.eval import runner
from core.eval.generation import Sampling
from core.eval.metrics import ANSWER_METRICS, METRICS, REFERENCE_METRICS, TOOL_METRICS
from core.eval.store import EvalSpec, EvalStore
from core.eval.verdicts import LOWER_IS_BETTER, sentences, verdicts
from webapp.page.background import with_progress
from webapp.page.concurrency import HEAVY, QUICK
from webapp.page.studio import Studio, explain

PRIVATE = {"api_visibility": "private"}
SORT_METRICS = (*REFERENCE_METRICS, "loss", "judge score")
# line, prompt, reference, then each of two models' answer and score, the difference
ROW_WIDTHS = ["4%", "16%", "16%", "24%", "6%", "24%", "6%", "4%"]


@dataclass
class EvaluateTab:
    models: gr.Dropdown
    judge: gr.Dropdown


def test_rows_choices(studio: Studio) -> list[tuple[str, str]]:
    """(label, id) of the adapters published with test rows."""
    return [
        (f"{a.name} ({a.id[:8]})", a.id)
        for a in studio.adapters.list()
        if (a.path / TEST_FILE).is_file()
    ]


def past_choices(store: EvalStore) -> list[tuple[str, str]]:
    """Every evaluation, newest first, with its state: a running one (this page's, another
    page's or the CLI's) can be picked and stopped."""
    return [
        (
            f"{spec.created_at[:16].replace('T', ' ')} · {spec.data_name} · "
            f"{len(spec.models)} model(s) · {store.state(spec)} "
            f"({spec.rows_done}/{spec.rows_total})",
            spec.id,
        )
        for spec in store.list()
    ]


def model_names(studio: Studio, models: list[str]) -> dict[str, str]:
    """A model id's name for people: an adapter's own name (and its id's start), a base's
    id; an id no longer known stays as it is."""
    names = {}
    for model in models:
        try:
            entry = studio.registry.get(model)
        except StudioError:
            names[model] = model
            continue
        short = f" ({model.removeprefix('lora/')[:8]})" if entry.kind == "adapter" else ""
        names[model] = f"{entry.display_name}{short}"
    return names


def summary_html(spec: EvalSpec, names: dict[str, str] | None = None) -> str:
    """The result in words first (which model did better on which metric, or that they are
    not distinguishable), then the table: a row per model, a column per metric (mean and 95%
    interval), then the judge's verdicts. Models by ``names``."""
    names = names or {}
    summary = spec.summary or {}
    scores = summary.get("metrics") or {}
    metrics = list(dict.fromkeys(m for found in scores.values() for m in found))
    if not metrics:
        return f"<p>{spec.rows_done} of {spec.rows_total} rows done ({spec.state}).</p>"
    said = sentences(verdicts(spec.models, scores), names)
    head = "".join(f"<th>{html.escape(n)}</th>" for n in metrics)
    body = "".join(
        f"<tr><td>{html.escape(names.get(model, model))}</td>"
        + "".join(f"<td>{_cell(found.get(n))}</td>" for n in metrics)
        + "</tr>"
        for model, found in scores.items()
    )
    table = f"<table class='ls-eval'><tr><th>model</th>{head}</tr>{body}</table>"
    notes = [
        f"{summary['rows']} rows, {summary['rows_with_reference']} with a reference "
        "(reference metrics skip the others). Mean [95% bootstrap interval]."
    ]
    notes += _judge_notes(summary.get("judge"), names)
    verdict = "".join(f"<p class='ls-verdict'><b>{html.escape(s)}</b></p>" for s in said)
    return verdict + table + "".join(f"<p>{note}</p>" for note in notes)


def _judge_notes(judge: dict | None, names: dict[str, str]) -> list[str]:
    if not judge:
        return []
    notes = []
    for model, counts in judge["pairwise"].items():
        against = names.get(counts["against"], counts["against"])
        notes.append(
            f"Judge ({html.escape(str(judge.get('model')))}), "
            f"{html.escape(names.get(model, model))} vs {html.escape(against)}: "
            f"{counts['win']} win, {counts['tie']} tie, {counts['loss']} loss, "
            f"{counts['unparseable']} unparseable."
        )
    for model, score in judge["scores"].items():
        notes.append(
            f"Judge's score of {html.escape(names.get(model, model))}: {_cell(score)} "
            f"({score['unparseable']} unparseable)."
        )
    return notes


def _cell(stat: dict | None) -> str:
    if not stat or not stat.get("n"):
        return "-"
    return f"{stat['mean']:.3g} [{stat['low']:.3g}, {stat['high']:.3g}]"


def rows_table(
    spec: EvalSpec, rows: list[dict], sort_by: str, names: dict[str, str] | None = None
) -> pd.DataFrame:
    """The rows side by side: the first two models' answers and their ``sort_by`` scores
    (3 decimals); with two models, the difference (how much better the second did), its
    worst first. Columns by the models' ``names``."""
    names = names or {}
    shown = spec.models[:2]
    lower_is_better = sort_by in LOWER_IS_BETTER
    records = []
    for row in rows:
        record = {"line": row["line"], "prompt": row["prompt"], "reference": row["reference"]}
        scores = [_rounded(_score(row, model, sort_by)) for model in shown]
        for model, score in zip(shown, scores, strict=True):
            record[f"{names.get(model, model)}: answer"] = row["answers"][model]
            record[f"{names.get(model, model)}: {sort_by}"] = score
        if len(shown) == 2:
            record["difference"] = _rounded(_difference(*scores, lower_is_better))
        records.append(record)
    table = pd.DataFrame(records)
    if "difference" in table:
        table = table.sort_values("difference", na_position="last", kind="stable")
    return table


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _difference(first, second, lower_is_better: bool) -> float | None:
    if first is None or second is None:
        return None
    return first - second if lower_is_better else second - first


def _score(row: dict, model: str, metric: str) -> float | None:
    if metric == "judge score":
        found = (row.get("judge") or {}).get("scores", {}).get(model) or {}
        return found.get("score")
    return row["scores"].get(model, {}).get(metric)


class EvaluateActions:
    """What the tab's buttons do."""

    def __init__(self, studio: Studio):
        self.studio = studio
        self.store = EvalStore(studio.settings.evals)

    def start(self, models, data, data_path, tested, *rest):
        """Prepare, then run in the background: progress every half second, the result
        at the end (or why it stopped, with the rows kept). ``rest``: metrics, the judge
        (a studio model, or a URL and its model), max tokens, rows together."""
        try:
            path, name = self._test_file(data, data_path, tested)
            evaluation = self._prepare(models, path, name, *rest)
        except StudioError as exc:
            yield explain(exc), gr.skip(), gr.skip(), gr.skip(), gr.skip()
            return
        yield from self._follow(evaluation)

    def resume(self, eval_id):
        try:
            evaluation = runner.resume(self.store, self.studio.engine, eval_id or "")
        except StudioError as exc:
            yield explain(exc), gr.skip(), gr.skip(), gr.skip(), gr.skip()
            return
        yield from self._follow(evaluation)

    def _test_file(self, data, data_path, tested) -> tuple[str, str]:
        """(path, name) of the test rows: an upload (stored in the datasets folder as the
        Train tab stores one, so a shared studio reads it there), a file on the server (held
        to the dataset roots on a shared studio), or the rows an adapter was published with."""
        if data:
            stored = store_upload(Path(data), self.studio.settings.datasets)
            return str(self.studio.dataset_path(stored)), Path(data).name
        if (data_path or "").strip():
            path = self.studio.dataset_path(data_path)
            return str(path), path.name
        if tested:
            path = self.studio.adapters.path(tested) / TEST_FILE
            if path.is_file():
                return str(path), f"{TEST_FILE} of {tested[:8]}"
        raise StudioError("add a test file (.jsonl), or pick an adapter's test rows")

    def pick_tested(self, adapter_id):
        """An adapter's test rows are for it against its base: pick both."""
        try:
            entry = self.studio.registry.get(f"lora/{adapter_id}")
        except StudioError:
            return gr.skip()
        return [entry.base_id, entry.id]

    def refreshed(self):
        """The lists a page opens with, as they are now."""
        return self.past_update(), gr.update(choices=test_rows_choices(self.studio))

    def _prepare(
        self, models, path, name, metrics, judge, judge_url, judge_model, max_tokens, batch
    ):
        if not metrics:
            raise StudioError("pick one metric at least")
        config = None
        if judge_url:
            if not judge_model:
                raise StudioError("a judge URL needs the name of the model it serves")
            url = self.studio.access.url(judge_url, "judge")
            config = {"kind": "url", "url": url, "model": judge_model}
        elif judge:
            config = {"kind": "studio", "model": judge}
        sampling = Sampling(max_tokens=int(max_tokens or 256), batch_size=int(batch or 8))
        if sampling.max_tokens < 1 or sampling.batch_size < 1:
            raise StudioError("max tokens and batch size must be at least 1")
        return runner.prepare(
            self.store,
            self.studio.engine,
            list(models or []),
            path,
            metrics=tuple(metrics),
            sampling=sampling,
            judge=config,
            data_name=name,
        )

    def _follow(self, evaluation: runner.Evaluation):
        """Progress every half second; the evaluation goes on if the page closes (Past
        evaluations lists it as running, with Stop)."""
        spec = evaluation.spec
        started, first = time.monotonic(), spec.rows_done
        listed = False
        for _, result, error in with_progress(lambda progress: evaluation.run()):
            if result is None and error is None:
                past = gr.skip() if listed else self.past_update(spec.id)
                listed = True
                yield _progress(spec, started, first), gr.skip(), gr.skip(), spec.id, past
                continue
            final = result or spec
            line = explain(error) if error else _ending(final)
            names = model_names(self.studio, final.models)
            summary = summary_html(final, names)
            yield line, summary, gr.skip(), final.id, self.past_update(final.id)

    def stop(self, shown, picked):
        """Stop this page's evaluation, else the one picked in Past evaluations (whichever
        process runs it: another page, a closed tab's, the CLI's)."""
        for eval_id in (shown, picked):
            try:
                if eval_id and self.store.request_stop(eval_id):
                    return "Stopping after the rows under way (the rows done are kept)."
            except StudioError:
                continue
        return "No evaluation is running: pick a running one in **Past evaluations** to stop it."

    def open(self, eval_id, sort_by):
        if not eval_id:
            return gr.skip(), gr.skip()
        try:
            spec = self.store.get(eval_id)
        except StudioError as exc:
            return explain(exc), gr.skip()
        rows = self.store.rows(eval_id)
        names = model_names(self.studio, spec.models)
        return summary_html(spec, names), rows_table(spec, rows, sort_by or "rouge_l", names)

    def past_update(self, selected: str | None = None):
        return gr.update(choices=past_choices(self.store), value=selected)


def _progress(spec: EvalSpec, started: float, first: int) -> str:
    done, total = spec.rows_done, spec.rows_total
    rate = (done - first) / max(time.monotonic() - started, 1e-9)
    eta = f" · ETA {(total - done) / rate:.0f} s" if rate > 0 else " · ETA: measuring"
    return f"Evaluating {', '.join(spec.models)}: rows {done}/{total}{eta}"


def _ending(spec: EvalSpec) -> str:
    if spec.state == "complete":
        return f"Done: {spec.rows_done} rows, saved in evaluation `{spec.id}`."
    why = f": {spec.error}" if spec.error else ""
    ended = "Failed" if spec.state == "failed" else "Stopped"
    return (
        f"**{ended}** after {spec.rows_done} of {spec.rows_total} rows{why}. "
        "Resume it from **Past evaluations**."
    )


@dataclass
class _Form:
    """The left column: what Evaluate takes, in the order ``EvaluateActions.start`` does."""

    models: gr.Dropdown
    data: gr.File
    data_path: gr.Textbox
    tested: gr.Dropdown
    metrics: gr.CheckboxGroup
    judge: gr.Dropdown
    judge_url: gr.Textbox
    judge_model: gr.Textbox
    max_tokens: gr.Number
    batch: gr.Number

    def inputs(self) -> list:
        return list(vars(self).values())


def _form(studio: Studio) -> _Form:
    models = gr.Dropdown(
        studio.chat_choices(),
        multiselect=True,
        label="Models (the first is the baseline the others are compared with)",
        allow_custom_value=True,
    )
    data = gr.File(
        label="Test file (.jsonl)", file_types=[".jsonl"], type="filepath", elem_id="ls-eval-data"
    )
    data_path = gr.Textbox(
        label="...or a test file on the server (its path)", elem_id="ls-eval-data-path"
    )
    tested = gr.Dropdown(
        test_rows_choices(studio),
        value=None,
        label="...or an adapter's test rows (picks the adapter and its base)",
        allow_custom_value=True,
    )
    shown = [*METRICS, *TOOL_METRICS]
    metrics = gr.CheckboxGroup([*shown, *ANSWER_METRICS], value=shown, label="Metrics")
    with gr.Accordion("Judge (an LLM comparing the answers)", open=False):
        judge = gr.Dropdown(
            [("no judge", "")] + studio.chat_choices(),
            value="",
            label="A model of this studio",
            allow_custom_value=True,
        )
        judge_url = gr.Textbox(label="...or an OpenAI-compatible URL (…/v1)")
        judge_model = gr.Textbox(label="The judge's model name at that URL")
    with gr.Row():
        max_tokens = gr.Number(256, label="Max tokens per answer", precision=0)
        batch = gr.Number(8, label="Rows generated together", precision=0)
    return _Form(
        models, data, data_path, tested, metrics, judge, judge_url, judge_model, max_tokens, batch
    )


def build(studio: Studio, page: gr.Blocks) -> EvaluateTab:
    act = EvaluateActions(studio)
    with gr.Row():
        with gr.Column(scale=1):
            form = _form(studio)
            with gr.Row():
                start = gr.Button("Evaluate", variant="primary")
                stop = gr.Button("Stop", variant="stop")
        with gr.Column(scale=2):
            status = gr.Markdown(elem_id="ls-eval-status")
            summary = gr.HTML(elem_id="ls-eval-summary")
            sort_by = gr.Dropdown(
                list(SORT_METRICS),
                value="rouge_l",
                label="Rows, the second model's worst first, by the difference in",
            )
            with gr.Row():
                past = gr.Dropdown(
                    past_choices(act.store),
                    label="Past evaluations",
                    allow_custom_value=True,
                    scale=3,
                )
                resume = gr.Button("Resume", scale=1)
    # the rows side by side across the whole page: the answers need the width
    rows = gr.Dataframe(
        interactive=False, wrap=True, elem_id="ls-eval-rows", column_widths=ROW_WIDTHS
    )
    shown = gr.State(None)
    outputs = [status, summary, rows, shown, past]
    show = {"fn": act.open, "inputs": [shown, sort_by], "outputs": [summary, rows]}
    show |= {**PRIVATE, **QUICK}
    start.click(act.start, form.inputs(), outputs, **PRIVATE, **HEAVY).then(**show)
    resume.click(act.resume, past, outputs, **PRIVATE, **HEAVY).then(**show)
    stop.click(act.stop, [shown, past], status, **PRIVATE, **QUICK)
    past.input(lambda eval_id: eval_id, past, shown, **PRIVATE, **QUICK).then(**show)
    sort_by.input(**show)
    form.tested.input(act.pick_tested, form.tested, form.models, **PRIVATE, **QUICK)
    refreshed = [past, form.tested]
    page.load(act.refreshed, None, refreshed, **PRIVATE, **QUICK)
    return EvaluateTab(models=form.models, judge=form.judge)
