"""The Adapters tab's Merge: two or more adapters of one base, a method and its settings, a
name; the merged adapter appears in the pickers like any other, and the Evaluate tab can be
opened with the merge and its parts picked (core/adapters/merge.py does the merging)."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from core.adapters.merge import METHODS, merge_adapters, parse_weights
from core.errors import StudioError
from webapp.page.concurrency import HEAVY
from webapp.page.studio import Studio, explain


@dataclass
class MergePanel:
    picked: gr.Dropdown  # the adapters to merge: the page refreshes its choices
    evaluate: gr.Button  # opens the Evaluate tab with the merge and its parts
    models: gr.State  # ["lora/<merged>", "lora/<part>", ...] of the last merge


def build(studio: Studio, choices: list[tuple[str, str]]) -> MergePanel:
    with gr.Accordion("Merge adapters", open=False):
        picked = gr.Dropdown(
            choices,
            multiselect=True,
            label="Adapters to merge (two or more, of one base)",
            allow_custom_value=True,
            elem_id="ls-merge-picker",
        )
        with gr.Row():
            method = gr.Radio(
                list(METHODS), value="linear", label="Method", elem_id="ls-merge-method"
            )
            weights = gr.Textbox(label="Weights, one per adapter (0.6,0.4; empty: 1 each)")
        with gr.Row():
            density = gr.Number(1.0, label="Density (ties, dare: the share kept)")
            rank = gr.Number(None, label="Rank (svd; empty: the largest)", precision=0)
            seed = gr.Number(0, label="Seed (dare)", precision=0)
        name = gr.Textbox(label="Name of the merged adapter", elem_id="ls-merge-name")
        merge = gr.Button("Merge")
        status = gr.Markdown(elem_id="ls-merge-status")
        evaluate = gr.Button("Evaluate the merge against its parts", visible=False)
    models = gr.State([])
    merge.click(
        lambda *values: run_merge(studio, *values),
        [picked, method, weights, density, rank, seed, name],
        [status, models, evaluate],
        api_visibility="private",
        **HEAVY,
    )
    return MergePanel(picked=picked, evaluate=evaluate, models=models)


def run_merge(studio: Studio, ids, method, weights, density, rank, seed, name):
    """(message, the merge and its parts as model ids, the Evaluate button)."""
    try:
        ids = list(ids or [])
        if not ids:
            raise StudioError("pick two or more adapters to merge")
        base = studio.registry.adapter_base(ids[0])
        new_id = merge_adapters(
            studio.adapters,
            ids,
            base,
            method=method,
            name=name or "",
            weights=parse_weights(weights),
            density=float(density if density is not None else 1.0),
            rank=int(rank) if rank else None,
            seed=int(seed or 0),
        )
    except StudioError as error:
        return explain(error), gr.skip(), gr.update(visible=False)
    studio.registry.reload()
    models = [f"lora/{i}" for i in (new_id, *ids)]
    message = f"Merged {len(ids)} adapters ({method}) into **{name.strip()}** (`lora/{new_id}`)."
    return message, models, gr.update(visible=True)
