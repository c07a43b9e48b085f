"""The Train tab's "Unfinished runs" panel: stopped, interrupted and failed runs, to resume or
discard. (Resuming streams into the Train tab's progress view, so the tab wires it.)"""

from __future__ import annotations

import html
from dataclasses import dataclass

import gradio as gr

from core.train.runs import RunRecord
from webapp.page.studio import Studio

STATE_HELP = {
    "running": "training now",
    "stopped": "stopped by you; resumable",
    "interrupted": "the process or the studio died; resumable",
    "failed": "resuming would fail the same way",
}


@dataclass
class RunsPanel:
    table: gr.HTML
    picker: gr.Dropdown
    resume: gr.Button
    sure: gr.Checkbox
    discard: gr.Button
    message: gr.Markdown


def build() -> RunsPanel:
    with gr.Accordion("Unfinished runs", open=True):
        table = gr.HTML(elem_id="ls-runs")
        with gr.Row():
            # any run id is accepted (scripts resume by id); the service checks it
            picker = gr.Dropdown(
                [],
                label="Run",
                value=None,
                scale=3,
                elem_id="ls-run-picker",
                allow_custom_value=True,
            )
            resume = gr.Button("Resume", scale=1)
        with gr.Row():
            sure = gr.Checkbox(False, label="Yes, discard this run and its checkpoints")
            discard = gr.Button("Discard", variant="stop")
        message = gr.Markdown(elem_id="ls-runs-message")
    return RunsPanel(table, picker, resume, sure, discard, message)


def _row(record: RunRecord) -> str:
    cells = [
        record.name,
        record.model_id,
        f"{record.state} ({record.pruned or STATE_HELP[record.state]})",
        f"{record.step}/{record.total_steps or '?'}",
        "-" if record.checkpoint_step is None else f"step {record.checkpoint_step}",
        "-" if record.best_validation_loss is None else f"{record.best_validation_loss:.3f}",
        "" if record.state == "stopped" else record.error or "",  # a Stop is no error
    ]
    tds = "".join(f"<td>{html.escape(str(cell))}</td>" for cell in cells)
    return f"<tr data-run='{record.id}' data-state='{record.state}'>{tds}</tr>"


def view(studio: Studio) -> tuple[str, dict]:
    """The runs table and the picker's choices, from the runs folder as it is now."""
    records = studio.training.list_runs()
    if not records:
        return "<p>No unfinished runs.</p>", gr.update(choices=[], value=None)
    head = "".join(
        f"<th>{h}</th>"
        for h in ("name", "base", "state", "step", "checkpoint", "best val loss", "last error")
    )
    table = f"<table class='ls-runs'><tr>{head}</tr>{''.join(map(_row, records))}</table>"
    choices = [(f"{r.name} · {r.state} · step {r.step} ({r.id[:8]})", r.id) for r in records]
    # the newest run is picked: after a Stop, Resume is one click
    return table, gr.update(choices=choices, value=records[0].id)
