"""The Train tab's "Quantize this base" panel: a 4- or 8-bit copy of the picked base model
(QLoRA), made with mlx-lm's conversion, picked as soon as it exists."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from core.errors import StudioError
from core.models.quantize import quantize
from webapp.page.studio import Studio, explain


@dataclass
class QuantizePanel:
    bits: gr.Radio
    group_size: gr.Radio
    button: gr.Button
    status: gr.Markdown


def build() -> QuantizePanel:
    with gr.Accordion("Quantize this base (QLoRA: less memory)", open=False):
        gr.Markdown(
            "A 4- or 8-bit copy of the picked model, trained with LoRA as it is. On Apple "
            "silicon it is fast; on a Linux CPU about 30x slower per step than float32."
        )
        with gr.Row():
            bits = gr.Radio([4, 8], value=4, label="Bits")
            group_size = gr.Radio([32, 64, 128], value=64, label="Group size")
        button = gr.Button("Quantize", size="sm")
        status = gr.Markdown(elem_id="ls-quantize-status")
    return QuantizePanel(bits, group_size, button, status)


def make(studio: Studio, model_id: str | None, bits: int, group_size: int):
    """Quantize the picked base; (status, the base picker with the copy picked)."""
    try:
        if not model_id:
            raise StudioError("pick a base model first")
        source = studio.registry.get(model_id).path
        made = quantize(source, studio.settings.models, int(bits), int(group_size))
    except StudioError as exc:
        return explain(exc), gr.skip()
    studio.registry.reload()
    picker = gr.update(choices=studio.base_choices(), value=made.name)
    return f"Made **{made.name}** ({bits}-bit) and picked it.", picker
