"""What the Train tab shows: a dataset check's summary (counts, tokens, the masked preview,
the memory plan, whether Start is ready) and a run's progress view, from its events."""

from __future__ import annotations

import html
from pathlib import Path

import gradio as gr

from core import protocol
from core.adapters.store import AdapterMetadata
from core.data.check import DatasetError
from core.data.leaks import said
from core.data.scan import SAMPLE_ROWS, scan_dataset
from core.data.tokens import preview, token_statistics
from core.errors import StudioError
from core.models.inspect import tokenizer as model_tokenizer
from core.models.quantize import cpu_slowdown_warning
from core.params import MethodError, TrainingParams
from core.train.eta import remaining_seconds
from core.train.plan import MemoryPlan
from webapp.page import charts, hosts_panel
from webapp.page.samples import samples_html
from webapp.page.studio import Studio, explain, in_page_words
from webapp.page.train.form import params as form_params

PREVIEW_ROWS = 3


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


def summary(studio: Studio, model_id, path, name, form: dict) -> tuple:
    """Check everything the Start button needs; returns the page's view of it.

    The dataset is checked as soon as it arrives (format, examples, every line's problems
    need no model); token statistics and the masked preview follow once a model is picked."""
    refused = gr.update(interactive=False)
    if not path:
        return "", "", "", "Pick a base model." if not model_id else "Add a dataset.", refused
    try:
        path = studio.dataset_path(path)
        params = studio.gated_params(form_params(form))
        if not model_id:
            text = f"{_counts_only(path, name, params)}  \nPick a base model for token statistics."
            return text, "", "", "Pick a base model.", refused
        entry = studio.registry.get(model_id)
        launch = hosts_panel.launch(studio, form.get("hosts"), form.get("processes"))
        info, params, data = studio.training.check(
            entry.path, path, params, dataset_name=name, launch=launch
        )
        memory = studio.training.plan(info, params, data, launch)
    except DatasetError as exc:
        return _problems(name, exc), "", "", "Fix the dataset first.", refused
    except MethodError as exc:  # the rows are fine, but not for this method
        return _counts_only(path, name, params), "", "", explain(exc), refused
    except StudioError as exc:  # a bad value: the dataset's summary stays, the line says why
        return gr.skip(), gr.skip(), gr.skip(), explain(exc), refused
    tokenizer = model_tokenizer(info.path)
    tokens = data.sample_tokens(tokenizer, params.mask_prompt)
    stats = token_statistics(tokens, max_seq_length=params.max_seq_length)
    ready = _ready(params, launch, info) + "  \n" + _memory(memory)
    if leaks := data.test_leaks():  # the test split copies training rows: it would flatter
        ready += f"  \n**Note:** {said(leaks, name, 'its training rows')}."
    run = studio.training.active()
    running = run is not None and not run.done
    return (
        _tokens_text(name, data, stats, params),
        charts.histogram(stats.lengths),
        _preview_html(tokens, tokenizer, data.format),
        f"{RUNNING}  \n{ready}" if running else ready,
        gr.update(interactive=memory.fits and not running),
    )


def _counts_only(path, name: str, params: TrainingParams) -> str:
    """The dataset's heading and counts, from a scan (before a model, or when the run is
    refused for something else than the data)."""
    data = scan_dataset(
        path,
        batch_size=params.batch_size,
        validation_split=params.validation_split,
        seed=params.seed,
    )
    return f"### {name}\n{_counts(data)}"


def _tokens_text(name: str, data, stats, params: TrainingParams) -> str:
    """The dataset's counts and token statistics, and how many examples will be truncated."""
    trained = (
        f"GRPO draws {params.group_size} answers of up to {params.max_completion_tokens} "
        "tokens to each prompt"
        if data.format == "prompts"
        else f"{stats.trained_tokens:,} trained on per epoch"
    )
    text = (
        f"### {name}\n{_counts(data)} Tokens per example: "
        f"min {stats.min_tokens}, median {stats.median_tokens:g}, max {stats.max_tokens}; "
        f"{trained}."
    )
    if data.format == "preference":
        text += " (Each preference row counts twice: its chosen and its rejected answer.)"
    if data.total > len(data.sample):
        text += f"  \n(Token statistics of the first {SAMPLE_ROWS:,} examples.)"
    if stats.over_max_length:
        text += (
            f"  \n**{stats.over_max_length}** example(s) are longer than "
            f"{params.max_seq_length} tokens and will be truncated."
        )
    return text


def _preview_html(tokens: list, tokenizer, data_format: str) -> str:
    """The first examples as the loss sees them: masked tokens grey, trained ones bold."""
    if data_format == "preference":
        return _pairs_html(tokens, tokenizer)
    samples = preview(tokens[:PREVIEW_ROWS], tokenizer)
    shown = "".join(
        f"<pre class='ls-preview'><span class='ls-masked'>{html.escape(masked)}</span>"
        f"<b class='ls-trained'>{html.escape(trained)}</b></pre>"
        for masked, trained in samples
    )
    return "<p>Grey: masked from the loss. Bold: trained on.</p>" + shown


def _pairs_html(tokens: list, tokenizer) -> str:
    """The first preference rows: the prompt once, then the two answers compared."""
    samples = preview(tokens[: 2 * PREVIEW_ROWS], tokenizer)
    shown = "".join(
        f"<pre class='ls-preview'><span class='ls-masked'>{html.escape(prompt)}</span>\n"
        f"<i>chosen:</i> <b class='ls-trained ls-chosen'>{html.escape(chosen)}</b>\n"
        f"<i>rejected:</i> <b class='ls-trained ls-rejected'>{html.escape(rejected)}</b></pre>"
        for (prompt, chosen), (_, rejected) in zip(samples[::2], samples[1::2], strict=True)
    )
    return (
        "<p>Grey: the prompt, masked. Bold: the answers compared (DPO and ORPO train on "
        "the difference between them).</p>" + shown
    )


def _memory(memory: MemoryPlan) -> str:
    """The memory plan's line; when the run would not fit, what would make it fit."""
    if memory.fits:
        return f"Memory: {memory.summary()}."
    options = "".join(f"\n- {in_page_words(line, mark='')}" for line in memory.advice())
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
    """(percent, text) of the progress bar: the newest report's figures, moved on by the
    activity lines between reports (so it changes every few seconds), with an ETA while the
    run goes on."""
    start = _newest(events, protocol.Start)
    now = _newest(events, protocol.Progress | protocol.Activity)
    if start is None and isinstance(now, protocol.Activity) and now.phase == "reference":
        return 0.0, f"DPO's reference: the base's answers, batch {now.batch} of {now.batches}"
    if start is None:
        return 0.0, "starting the training process..."
    if now is None:
        return 0.0, f"{start.total_steps} steps ahead, BLAS {start.blas}: validating..."
    parts = [f"step {now.step}/{now.total_steps}"]
    if isinstance(now, protocol.Activity) and now.phase == "validate" and not run.done:
        parts.append(f"validating: batch {now.batch} of {now.batches}")
    report = _newest(events, protocol.Progress)
    if report is not None:
        parts += [f"epoch {report.epoch}/{start.epochs}", f"loss {report.loss:.3f}"]
        if report.reward_accuracy is not None:
            parts.append(f"reward accuracy {report.reward_accuracy:.2f}")
        if report.reward is not None:
            parts.append(f"reward {report.reward:.3f} · KL {report.kl:.4f}")
        parts += _speed_and_memory(report, start.ranks)
    if not run.done:
        parts.append(_eta(events, run.params))
    return 100.0 * now.step / max(now.total_steps, 1), " · ".join(parts)


def _newest(events: list, kind):
    return next((e for e in reversed(events) if isinstance(e, kind)), None)


def _speed_and_memory(report: protocol.Progress, ranks: int) -> list[str]:
    speed, memory = (
        f"{report.tokens_per_second:.0f} trained tok/s",
        f"{report.peak_memory_gb:.2f} GB",
    )
    if ranks > 1:
        return [f"{ranks} ranks · {speed} (sum)", f"{memory} (largest rank)"]
    return [speed, memory]


def _eta(events: list, params) -> str:
    """Time left: the steps at their recent pace, and the validations and samples to come
    (``core.train.eta``); unknown until the first training report."""
    seconds = remaining_seconds(events, params)
    if seconds is None:
        return "ETA: measuring"
    minutes, rest = divmod(round(seconds), 60)
    return f"ETA {minutes} min {rest:02d} s" if minutes else f"ETA {rest} s"


def _status(run, last) -> tuple[str, str, bool, str | None]:
    """(status, result, show "Chat with it", new adapter id) for the run's last event."""
    if isinstance(last, protocol.Complete):
        kept = f" Published the {last.kept} step ({last.kept_step})." if last.kept_step else ""
        early = f" Stopped early at step {last.steps}." if last.stopped_early else ""
        name = _adapter_name(Path(last.adapter_path), run.name)
        status = f"Done: **{name}** trained in {run.elapsed:.0f} s.{early}{kept}"
        what = "Model" if last.model_id else "Adapter"
        result = f"{what} `{last.published_id}` saved in `{last.adapter_path}`."
        return status, result, True, last.published_id
    if isinstance(last, protocol.Error) and last.kind == "cancelled":
        return f"Stopped: {last.error}. Resume it from **Unfinished runs**.", "", False, None
    if isinstance(last, protocol.Error):
        return explain(StudioError(last.error, last.hint)), "", False, None
    return f"Training **{run.name}** on {run.model.id}...", "", False, None


def _adapter_name(folder: Path, fallback: str) -> str:
    """The adapter's name as it is now (it may have been renamed since the run)."""
    try:
        return AdapterMetadata.read(folder).adapterName
    except (OSError, ValueError):
        return fallback


NOTES_SHOWN = 3  # the newest notices (a tracker that failed, a reward that raised)
RUNNING = "**A training is running:** Start is disabled until it ends (the Stop button ends it)."


def render(run, first: bool = True) -> tuple:
    """The progress view of a run, from its events so far: the bar, the chart, the status,
    the result, "Chat with it", the new adapter, Start, Stop, and why Start is disabled
    (said in the ``first`` view only: an edit of the form meanwhile shows its own message
    there, a bad value included, and the next event must not cover it)."""
    events = list(run.events)
    percent, detail = _progress_line(run, events)
    last = events[-1] if events else None
    kept = last.kept_step if isinstance(last, protocol.Complete) else None
    rows = protocol.curve(events)
    chart = charts.loss_chart(rows, kept_step=kept) + charts.method_charts(rows, kept)
    chart += samples_html(events)
    bar = (
        f"<div class='ls-bar'><div style='width:{percent:.1f}%'></div></div>"
        f"<p id='ls-progress-text'>{percent:.0f}% · {html.escape(detail)}</p>"
    )
    status, result, chat_visible, new_adapter = _status(run, last)
    notes = [e.message for e in events if isinstance(e, protocol.Notice)][-NOTES_SHOWN:]
    status += "".join(f"  \n*Note:* {html.escape(note)}" for note in notes)
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
        RUNNING if running and first else gr.skip(),
    )
