"""The Adapters tab: every adapter with its figures and state; manage one at a time."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import pandas as pd

from core import protocol
from core.adapters.export import import_any
from core.adapters.layout import EVENTS_FILE
from core.adapters.store import loss_history
from core.errors import StudioError
from webapp.page import charts, compare_panel, export_panel, merge_panel
from webapp.page.concurrency import HEAVY, QUICK
from webapp.page.samples import samples_html
from webapp.page.studio import Studio, explain

COLUMNS = ["name", "base", "dataset", "created", "steps", "final loss", "best val loss", "state"]
COLUMNS.append("id")  # the start of the adapter's id: a clicked row names its adapter
WIDTHS = ["16%", "12%", "14%", "11%", "6%", "7%", "8%", "18%", "8%"]


@dataclass
class AdaptersTab:
    table: gr.Dataframe
    picker: gr.Dropdown
    import_base: gr.Dropdown
    compared: gr.Dropdown
    merge: merge_panel.MergePanel


def table_update(studio: Studio) -> dict:
    """The table as it is now, its label saying what to do when it is empty."""
    rows = table(studio)
    label = LABEL if len(rows) else EMPTY_LABEL
    return gr.update(value=rows, label=label)


LABEL = "Adapters (click a row to pick it)"
EMPTY_LABEL = (
    "No adapters yet: train one in the Train tab (it appears here when it is done), or import "
    "one below"
)


def table(studio: Studio) -> pd.DataFrame:
    rows = []
    entries = {e.id: e for e in studio.registry.entries()}
    for adapter in studio.adapters.list():
        meta = adapter.metadata
        entry = entries.get(f"lora/{adapter.id}")
        state = (
            "available"
            if entry and entry.available
            else (f"unavailable: {entry.reason if entry else adapter.problem}")
        )
        rows.append(
            [
                adapter.name,
                meta.baseModelId if meta else "?",
                meta.trainingDataset if meta else "",
                (meta.createdAt[:16] if meta else ""),
                meta.trainingSteps if meta else None,
                round(meta.finalLoss, 4) if meta and meta.finalLoss is not None else None,
                round(meta.bestValidationLoss, 4) if meta and meta.bestValidationLoss else None,
                state,
                adapter.id[:8],
            ]
        )
    return pd.DataFrame(rows, columns=COLUMNS)


def picker_choices(studio: Studio) -> list[tuple[str, str]]:
    """(label, id) of every adapter, newest first."""
    return [(f"{a.name} ({a.id[:8]})", a.id) for a in studio.adapters.list()]


def newest(studio: Studio) -> dict:
    """The picker a page opens with: every adapter as it is now (the page may be older than
    them), the newest picked."""
    choices = picker_choices(studio)
    return gr.update(choices=choices, value=choices[0][1] if choices else None)


class AdapterActions:
    """What the tab's events do; each change reports its outcome (or the error, as a message)
    and refreshes the table and the picker."""

    def __init__(self, studio: Studio):
        self.studio = studio

    def select_row(self, event: gr.SelectData):
        """A click on a row of the table picks that row's adapter."""
        short = str(event.row_value[COLUMNS.index("id")])
        found = [a.id for a in self.studio.adapters.list() if a.id.startswith(short)]
        return found[0] if found else gr.skip()

    def show(self, adapter_id):
        if not adapter_id:
            return None, None
        adapter = self.studio.adapters.read(adapter_id)
        meta = adapter.metadata.model_dump() if adapter.metadata else {"problem": adapter.problem}
        kept = adapter.metadata.keptStep if adapter.metadata else None
        rows = loss_history(adapter.path)
        chart = charts.loss_chart(rows, kept) + charts.method_charts(rows, kept)
        return meta, chart + samples_html(protocol.read_events(adapter.path / EVENTS_FILE))

    def changing(self, action):
        studio = self.studio

        def handler(*args):
            try:
                done = action(*args)
            except StudioError as exc:
                return explain(exc), gr.skip(), gr.skip()
            studio.registry.reload()
            return done, table_update(studio), gr.update(choices=picker_choices(studio))

        return handler

    def rename(self, adapter_id, name):
        self.studio.adapters.rename(adapter_id or "", name)
        return f"Renamed to **{name.strip()}**."

    def delete(self, adapter_id, confirmed):
        if not confirmed:
            raise StudioError("tick the box to confirm the deletion")
        self.studio.adapters.delete(adapter_id or "")
        return "Deleted."

    def fuse(self, adapter_id, name):
        studio = self.studio
        base = studio.registry.adapter_base(adapter_id or "")
        path = studio.adapters.fuse(adapter_id, base, studio.settings.models, name)
        return f"Fused into the base model **{path.name}**."

    def import_(self, path, base_id, name):
        if not path:
            raise StudioError("choose a .zip to import")
        base = self.studio.registry.base_info(base_id) if base_id else None
        new_id = import_any(Path(path), self.studio.adapters, base, name or None)
        return f"Imported as `lora/{new_id}`."


def _import_form(studio: Studio):
    """The "Import an adapter" accordion: (file, base, name, button)."""
    with gr.Accordion("Import an adapter", open=False):
        archive = gr.File(
            label=".zip exported here, a zipped PEFT adapter, or a zipped mlx-lm adapter folder",
            file_types=[".zip"],
            type="filepath",
        )
        import_base = gr.Dropdown(
            studio.base_choices(), label="Base model (for PEFT and mlx-lm adapters)"
        )
        import_name = gr.Textbox(label="Name (for PEFT and mlx-lm adapters)")
        return archive, import_base, import_name, gr.Button("Import")


def build(studio: Studio, page: gr.Blocks) -> AdaptersTab:
    grid = gr.Dataframe(
        table(studio),
        interactive=False,
        label=LABEL if studio.adapters.list() else EMPTY_LABEL,
        elem_id="ls-adapters",
        wrap=True,
        column_widths=WIDTHS,
    )
    with gr.Row():
        with gr.Column():
            # adapters come and go while a page is open: the handlers check the id
            picker = gr.Dropdown(
                picker_choices(studio), label="Adapter", value=None, allow_custom_value=True
            )
            details = gr.JSON(label="metadata.json")
        with gr.Column():
            curve = gr.HTML(elem_id="ls-adapter-curve")
    message = gr.Markdown(elem_id="ls-adapters-message")
    with gr.Row():
        new_name = gr.Textbox(label="New name", scale=3)
        rename = gr.Button("Rename", scale=1)
    with gr.Row():
        sure = gr.Checkbox(False, label="Yes, delete this adapter for good")
        delete = gr.Button("Delete", variant="stop")
    with gr.Row():
        fused_name = gr.Textbox(label="Fused model name", scale=3)
        fuse = gr.Button("Fuse into a base model", scale=1)
    export_panel.build(studio, picker)
    compared = compare_panel.build(studio, picker_choices(studio))
    merge = merge_panel.build(studio, picker_choices(studio))
    archive, import_base, import_name, do_import = _import_form(studio)

    act = AdapterActions(studio)
    outputs = [message, grid, picker]
    # page actions, not API: `lora-studio adapters` is the scriptable way
    private = {"api_visibility": "private"}
    picker.change(act.show, picker, [details, curve], **private, **QUICK)
    grid.select(act.select_row, None, picker, **private, **QUICK)
    page.load(lambda: newest(studio), None, picker, **private, **QUICK)
    rename.click(act.changing(act.rename), [picker, new_name], outputs, **private, **QUICK)
    delete.click(act.changing(act.delete), [picker, sure], outputs, **private, **QUICK)
    fuse.click(act.changing(act.fuse), [picker, fused_name], outputs, **private, **HEAVY)
    do_import.click(
        act.changing(act.import_),
        [archive, import_base, import_name],
        outputs,
        **private,
        **HEAVY,
    )
    return AdaptersTab(
        table=grid, picker=picker, import_base=import_base, compared=compared, merge=merge
    )
