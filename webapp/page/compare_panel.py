"""Runs side by side (in the Adapters tab): two or more adapters' validation curves on one
chart, their parameters in one table with the ones that differ marked, and their latest
evaluation's scores when they have one."""

from __future__ import annotations

import html

import gradio as gr

from core.adapters.store import loss_history
from core.errors import StudioError
from core.eval.store import EvalStore
from webapp.page import charts
from webapp.page.concurrency import QUICK
from webapp.page.studio import Studio, explain

# metadata.json's fields a comparison shows, in this order
FIELDS = (
    "baseModelId",
    "trainingDataset",
    "method",
    "beta",
    "fineTuneType",
    "rank",
    "alpha",
    "learningRate",
    "epochs",
    "batchSize",
    "loraLayers",
    "targetModules",
    "maxSeqLength",
    "trainingSteps",
    "keptStep",
    "bestValidationLoss",
    "finalValidationLoss",
    "rewardAccuracy",
    "durationSeconds",
)
SHOWN_SCORES = ("exact_match", "token_f1", "rouge_l", "chrf", "loss")


def compare(studio: Studio, adapter_ids: list[str] | None) -> tuple[str, str]:
    """(the chart, the tables) for the adapters picked; a hint below two."""
    if not adapter_ids or len(adapter_ids) < 2:
        return "", "Pick two adapters or more to compare them."
    try:
        adapters = [studio.adapters.read(adapter_id) for adapter_id in adapter_ids]
    except StudioError as exc:
        return "", explain(exc)
    labels = {a.id: f"{a.name} ({a.id[:8]})" for a in adapters}
    rows = [
        {**row, "series": labels[a.id]}
        for a in adapters
        for row in loss_history(a.path)
        if row["series"] == "validation"
    ]
    chart = charts.compare_chart(rows, list(labels.values()))
    metadata = {a.id: (a.metadata.model_dump() if a.metadata else {}) for a in adapters}
    scores = latest_scores(EvalStore(studio.settings.evals), list(labels))
    return chart, parameters_table(labels, metadata) + scores_table(labels, scores)


def parameters_table(labels: dict[str, str], metadata: dict[str, dict]) -> str:
    """A row per field, a column per adapter; a field whose values differ is marked."""
    head = "".join(f"<th>{html.escape(label)}</th>" for label in labels.values())
    body = []
    for name in FIELDS:
        values = [metadata[adapter_id].get(name) for adapter_id in labels]
        if all(v is None for v in values):
            continue
        differs = len({repr(v) for v in values}) > 1
        cells = "".join(f"<td>{html.escape(_shown(v))}</td>" for v in values)
        mark = " class='ls-differs' style='font-weight:bold;background:#fef3c7'" if differs else ""
        body.append(f"<tr{mark}><td>{name}{' (differs)' if differs else ''}</td>{cells}</tr>")
    return (
        f"<table class='ls-compare' id='ls-compare-params'><tr><th>parameter</th>{head}</tr>"
        + "".join(body)
        + "</table>"
    )


def latest_scores(store: EvalStore, adapter_ids: list[str]) -> dict[str, tuple[str, dict]]:
    """For each adapter, the newest complete evaluation that includes it: (what it was
    evaluated on, its metrics there)."""
    found: dict[str, tuple[str, dict]] = {}
    for spec in store.list():  # newest first
        if spec.state != "complete" or not spec.summary:
            continue
        for adapter_id in adapter_ids:
            model = f"lora/{adapter_id}"
            if adapter_id not in found and model in spec.models:
                found[adapter_id] = (spec.data_name, spec.summary["metrics"].get(model, {}))
    return found


def scores_table(labels: dict[str, str], scores: dict[str, tuple[str, dict]]) -> str:
    if not scores:
        return "<p>No evaluation of these adapters yet (the Evaluate tab makes one).</p>"
    head = "".join(f"<th>{name}</th>" for name in SHOWN_SCORES)
    body = []
    for adapter_id, label in labels.items():
        data, found = scores.get(adapter_id, ("-", {}))
        cells = "".join(
            f"<td>{found[name]['mean']:.3g}</td>" if name in found else "<td>-</td>"
            for name in SHOWN_SCORES
        )
        body.append(f"<tr><td>{html.escape(label)}</td><td>{html.escape(data)}</td>{cells}</tr>")
    return (
        "<p>Latest evaluation of each:</p><table class='ls-compare' id='ls-compare-scores'>"
        f"<tr><th>adapter</th><th>test file</th>{head}</tr>{''.join(body)}</table>"
    )


def _shown(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return str(value)


def build(studio: Studio, choices: list[tuple[str, str]]) -> gr.Dropdown:
    """The panel; returns its picker (the page refreshes its choices with the adapters')."""
    with gr.Accordion("Compare adapters (runs side by side)", open=False):
        picked = gr.Dropdown(
            choices,
            multiselect=True,
            label="Adapters to compare",
            allow_custom_value=True,
            elem_id="ls-compare-picker",
        )
        chart = gr.HTML(elem_id="ls-compare-chart")
        tables = gr.HTML(elem_id="ls-compare-tables")
    picked.change(
        lambda ids: compare(studio, ids),
        picked,
        [chart, tables],
        api_visibility="private",
        **QUICK,
    )
    return picked
