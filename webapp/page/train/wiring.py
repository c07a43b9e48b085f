"""The Train tab's events: which component triggers which action, into which outputs, and
what may run at once."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import gradio as gr

from webapp.page.concurrency import CHECK, HEAVY, QUICK, WATCH
from webapp.page.studio import Studio
from webapp.page.train import rewards_panel
from webapp.page.train.actions import STARTING, TrainActions
from webapp.page.train.form import FORM_FIELDS, preference_only
from webapp.page.train.layout import layout


@dataclass
class TrainTab:
    model: gr.Dropdown
    chat_with: gr.Button
    new_adapter: gr.State
    # for the page's one timer: the run this page shows, and ``watch(shown) -> (shown,
    # join)``, which makes the page follow a run started elsewhere
    shown: gr.State
    join: gr.State
    watch: Callable


PRIVATE = {"api_visibility": "private"}  # page wiring, not the API
# page wiring by what it costs (webapp/page/concurrency.py)
SMALL = {**PRIVATE, **QUICK}
WAITING = {**PRIVATE, **WATCH}


def _join_runs_started_elsewhere(act: TrainActions, page, buttons, progress_outputs):
    """A page follows a run started after it loaded, wherever it was started (the page's
    timer calls ``act.watch``, which sets ``join``). Returns the run it shows (which the
    page's own Start and Resume clear when they end), ``join``, and the event that follows
    a joined run."""
    hidden = {"show_progress": "hidden"}
    shown, join = gr.State(None), gr.State(None)
    page.load(act.shown_at_load, None, shown, **WAITING, **hidden)
    for button in buttons:
        button.click(lambda: STARTING, None, shown, **SMALL, **hidden)
    joined = join.change(act.show_current, None, progress_outputs, **WAITING, **hidden)
    return shown, join, joined


def build(studio: Studio, page: gr.Blocks) -> TrainTab:
    ui = layout(studio)
    act = TrainActions(studio)
    form = {name: ui.form[name] for name in FORM_FIELDS}
    dataset = [ui.model, ui.data_path, ui.data_name]
    check = {"fn": act.check_dataset, "inputs": dataset, "inputs_kwargs": form}
    check |= {"outputs": [ui.summary, ui.histogram, ui.examples, ui.why, ui.start]}
    check |= {**PRIVATE, **CHECK}
    _wire_form(ui, act, page, form, check)
    shown, join = _wire_runs(ui, act, page, form, dataset, check)
    return TrainTab(ui.model, ui.chat_with, ui.new_adapter, shown, join, act.watch)


def _wire_form(ui, act: TrainActions, page, form: dict, check: dict) -> None:
    """The form: every edit re-checks the run (``check``); picking a model fits the form."""
    rank, alpha, layers = ui.form["rank"], ui.form["alpha"], ui.form["lora_layers"]
    alpha_follows = gr.State(True)
    pick = {"fn": act.pick_model, "inputs": [ui.model, layers, alpha_follows, alpha]}
    pick |= {"outputs": [rank, alpha, layers, ui.form["keys"]], **SMALL}
    # the dataset check is also the API's /check_dataset (wired first: it keeps that name)
    arrived = [ui.data_path, ui.data_name, *ui.mapping.form, ui.upload, ui.server_path]
    ui.upload.upload(act.take_upload, ui.upload, arrived, **PRIVATE, **CHECK).success(
        **{**check, "api_visibility": "public"}, api_name="check_dataset"
    )
    ui.model.input(**pick).then(**check)
    path = [ui.server_path, ui.model]
    ui.server_path.submit(act.take_path, path, arrived, **PRIVATE, **CHECK).then(**check)
    _wire_import(ui, act, check)
    _wire_teaching(ui, act, check)
    _wire_sweep(ui, act, form)
    rank.input(
        lambda r, f, a: 2 * r if f and r else a, [rank, alpha_follows, alpha], alpha, **SMALL
    )
    alpha.input(lambda: False, None, alpha_follows, **SMALL)
    method = ui.form["method"]
    method.change(preference_only, method, ui.form["beta"], **SMALL)
    method.change(rewards_panel.shown_for, method, ui.grpo.box, **SMALL)
    for field in form.values():
        # a check still running must not swallow the latest edit
        field.input(**check, trigger_mode="always_last")
    ui.get_demo.click(
        act.get_demo,
        None,
        [ui.demo_status, ui.model, ui.data_path, ui.data_name],
        **PRIVATE,
        **HEAVY,
    ).then(**pick).then(**check)
    q = ui.quantizing
    q.button.click(
        act.quantize, [ui.model, q.bits, q.group_size], [q.status, ui.model], **PRIVATE, **HEAVY
    ).then(**pick).then(**check)
    page.load(act.preselect, None, ui.model, **WAITING).then(**pick).then(**check)
    page.load(act.demo_offer, None, ui.demo_box, **WAITING)
    rewards = [ui.form["reward"], ui.form["reward_file"]]
    page.load(act.reward_choices, None, rewards, **WAITING)
    ui.grpo.try_them.click(
        act.preview_rewards,
        [ui.model, ui.data_path],
        ui.grpo.table,
        inputs_kwargs=form,
        **PRIVATE,
        **HEAVY,  # the base model answers: the engine's work
    )


def _wire_teaching(ui, act: TrainActions, check: dict) -> None:
    """Make a dataset with a teacher: its progress, then the form checks the dataset made."""
    panel = ui.teach
    made = [panel.status, ui.data_path, ui.data_name]
    # named apart: Gradio names an event after its function, and a second function called
    # "stop" took the Chat tab's Stop from it (its replies then never streamed)
    panel.make.click(
        act.teaching.make, panel.inputs(), made, api_name="make_dataset", **PRIVATE, **HEAVY
    ).then(**check)
    panel.stop.click(act.teaching.halt, None, None, api_name="stop_making", **SMALL)


def _wire_sweep(ui, act: TrainActions, form: dict) -> None:
    """Try several settings: a sweep of the form's run; its table as it goes."""
    panel, sweeping = ui.sweep, act.sweeping
    shown = [panel.status, panel.table, panel.chart, panel.picker]
    asked = [panel.vary, panel.trials, panel.objective, panel.prune]
    asked += [ui.model, ui.data_path, ui.data_name]
    # a sweep is followed for as long as it lasts, like a run: never one at a time across
    # browsers (the runs lock refuses a second training at once)
    panel.start.click(sweeping.start, asked, shown, inputs_kwargs=form, api_name="sweep", **WATCH)
    panel.resume.click(sweeping.resume, panel.picker, shown, api_name="resume_sweep", **WATCH)
    panel.stop.click(sweeping.halt, None, None, api_name="stop_sweep", **QUICK)
    panel.picker.input(sweeping.show, panel.picker, shown[:3], **SMALL)


def _wire_import(ui, act: TrainActions, check: dict) -> None:
    """The import form: its preview follows the mapping; Save imports, then checks."""
    panel = ui.mapping
    mapped = [panel.source, *panel.fields.values()]
    for field in panel.fields.values():
        field.change(act.preview_import, mapped, panel.preview, **PRIVATE, **CHECK)
    saved = [ui.data_path, ui.data_name, panel.box, panel.note]
    panel.save.click(
        act.save_import,
        [panel.source, panel.name, panel.replace, *panel.fields.values()],
        saved,
        **PRIVATE,
        **HEAVY,
    ).then(**check)


def _wire_runs(ui, act: TrainActions, page, form: dict, dataset: list, check: dict) -> None:
    """Start, Stop, Resume, Discard, the hosts check, and following the studio's run."""
    runs_outputs = [ui.runs.table, ui.runs.picker]
    progress_outputs = [ui.bar, ui.chart, ui.status, ui.result, ui.chat_with, ui.new_adapter]
    progress_outputs += [ui.start, ui.stop, ui.why, *runs_outputs]
    # Start and Resume follow their run for as long as it lasts: never one at a time across
    # browsers (the runs lock lets one run start; another gets its refusal at once)
    training = ui.start.click(
        act.train,
        [*dataset, ui.name],
        progress_outputs,
        inputs_kwargs=form,
        api_name="train",
        **WATCH,
    )
    ui.stop.click(act.stop, None, None, api_name="stop", **QUICK)
    ui.hosts.check.click(
        act.check_hosts,
        [ui.hosts.mode, ui.hosts.processes, ui.model],
        ui.hosts.report,
        api_name="check_hosts",
        **WATCH,  # waits on ssh, a minute at most
    )
    resuming = ui.runs.resume.click(
        act.resume, ui.runs.picker, progress_outputs, api_name="resume", **WATCH
    )
    shown, join, joined = _join_runs_started_elsewhere(
        act, page, [ui.start, ui.runs.resume], progress_outputs
    )
    for started in (training, resuming):  # a refused Start must not leave the page "starting"
        started.then(lambda: None, None, shown, **SMALL)
    for following in (training, resuming, joined):  # the run ended: Start is the form's again
        following.then(**check)
    ui.runs.discard.click(
        act.discard, [ui.runs.picker, ui.runs.sure], [ui.runs.message, *runs_outputs], **SMALL
    )
    # a page opened during a run follows it to its end; then the form says what Start does
    page.load(act.show_current, None, progress_outputs, **WAITING).then(**check)
    return shown, join
