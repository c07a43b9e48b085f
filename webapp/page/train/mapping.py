"""The Train tab's data import: a dropped CSV, TSV, Parquet, Arrow or JSON file (or a Hugging
Face dataset named in the path box) becomes a dataset of the studio's. In a known shape it is
imported at once and checked as any dataset; otherwise a form shows its columns, a field per
studio field to map them to, and a live preview of the first rows as they would be trained on
(the trained part bold), and "Save as dataset" imports it (``core.data.imports``)."""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from core.data.documents import OPTIONAL_READERS, TEXT_SUFFIXES, import_documents
from core.data.imports import NAME, Options, columns_of, import_dataset, preview
from core.errors import StudioError
from core.models.inspect import tokenizer
from webapp.page.studio import Studio, explain

TARGETS = ("prompt", "completion", "text", "system")
FILE_TYPES = [".jsonl", ".csv", ".tsv", ".parquet", ".arrow", ".json"]


@dataclass
class MappingPanel:
    box: gr.Group
    source: gr.State  # the file or dataset being mapped
    note: gr.Markdown
    fields: dict[str, gr.Dropdown]
    name: gr.Textbox
    replace: gr.Checkbox
    preview: gr.HTML
    save: gr.Button

    @property
    def form(self) -> list:
        """What a new source sets: the panel, the source, the note, the fields, the name and
        the preview."""
        return [self.box, self.source, self.note, *self.fields.values(), self.name, self.preview]


def build() -> MappingPanel:
    with gr.Group(visible=False) as box:
        note = gr.Markdown(elem_id="ls-mapping-note")
        with gr.Row():
            fields = {
                target: gr.Dropdown(
                    [], value=None, label=f"{target} from", elem_id=f"ls-map-{target}"
                )
                for target in TARGETS
            }
        with gr.Row():
            name = gr.Textbox(label="Dataset name", elem_id="ls-mapping-name", scale=3)
            replace = gr.Checkbox(
                False, label="Replace the dataset of this name, if there is one", scale=2
            )
        shown = gr.HTML(elem_id="ls-mapping-preview")
        save = gr.Button("Save as dataset", variant="primary")
    return MappingPanel(box, gr.State(None), note, fields, name, replace, shown, save)


def is_documents(source: str) -> bool:
    """A folder of documents (.txt, .md, ...), not a dataset folder (no train.jsonl)."""
    folder = Path(source)
    if not folder.is_dir() or (folder / "train.jsonl").exists():
        return False
    kinds = (*TEXT_SUFFIXES, *OPTIONAL_READERS)
    return any(p.suffix.lower() in kinds for p in folder.rglob("*") if p.is_file())


def arrive_documents(studio: Studio, source: str, model_id: str | None) -> tuple:
    """A folder of documents as a dataset of text chunks for continued pretraining
    (``core.data.documents``), in chunks of the picked base's tokens; the skipped files said."""
    if not model_id:
        raise gr.Error("pick a base model first: its tokens size the documents' chunks")
    name = _free_name(studio.settings.datasets, Path(source.rstrip("/")).name)
    try:
        report = import_documents(
            Path(source),
            name,
            studio.settings.datasets,
            tokenizer(studio.registry.get(model_id).path),
            tokenizer_name=model_id,
        )
    except StudioError as exc:
        raise gr.Error(str(exc)) from None
    skipped = "; ".join(f"{s['name']} ({s['reason']})" for s in report.skipped[:5])
    gr.Info(
        f"{report.rows_written} chunks of {report.chunk_tokens} tokens from "
        f"{len(report.files)} document(s)" + (f"; skipped: {skipped}" if skipped else "")
    )
    hidden = (gr.update(visible=False), None, "", *([gr.skip()] * len(TARGETS)), gr.skip(), "")
    return report.path, f"{name}.jsonl", *hidden


def arrive(studio: Studio, source: str) -> tuple:
    """(dataset path, dataset name, *the form) for a source that is no studio .jsonl: in a
    known shape, imported at once; else the form, filled with its columns."""
    name = _free_name(studio.settings.datasets, Path(source.rstrip("/")).stem)
    try:
        preview(source, Options())
    except StudioError:
        try:
            columns, _ = columns_of(source, Options())
        except StudioError as exc:
            raise gr.Error(str(exc)) from None  # unreadable: the page shows it
        note = (
            f"**{Path(source).name}** is in no shape the studio knows. Its columns: "
            f"{', '.join(f'`{c}`' for c in columns)}. Map prompt and completion (or text)."
        )
        choices = [("(none)", "")] + [(c, c) for c in columns]
        fields = [gr.update(choices=choices, value="") for _ in TARGETS]
        return "", "", gr.update(visible=True), source, note, *fields, name, ""
    try:
        report = import_dataset(source, name, studio.settings.datasets, Options())
    except StudioError as exc:
        raise gr.Error(str(exc)) from None
    hidden = (gr.update(visible=False), None, "", *([gr.skip()] * len(TARGETS)), gr.skip(), "")
    return report.path, f"{name}.jsonl", *hidden


def show(source: str | None, *mapped: str) -> str:
    """The first rows as the mapping makes them (the trained part bold), or what is missing."""
    if not source:
        return ""
    try:
        _, rows = preview(source, Options(pairs=_pairs(mapped)))
    except StudioError as exc:  # the preview is HTML: the message as HTML, not Markdown
        hint = f"<br><i>Hint:</i> {html.escape(exc.hint)}" if exc.hint else ""
        return f"<p class='ls-error'><b>Error:</b> {html.escape(exc.message)}{hint}</p>"
    return "".join(_row_html(row) for row in rows) or "No row could be made from these columns."


def save(studio: Studio, source: str | None, name: str, replace: bool, *mapped: str) -> tuple:
    """Import with the form's mapping: (dataset path, its name, the panel, the note). A
    dataset of the same name is replaced only when the box says so."""
    try:
        if not source:
            raise StudioError("drop a file first")
        options = Options(pairs=_pairs(mapped), replace=bool(replace))
        report = import_dataset(source, name, studio.settings.datasets, options)
    except StudioError as exc:
        return gr.skip(), gr.skip(), gr.skip(), explain(exc)
    done = f"Saved **{report.name}**: {report.rows_written} rows ({report.skipped} skipped)."
    return report.path, f"{report.name}.jsonl", gr.update(visible=False), done


def is_studio_dataset(path: str) -> bool:
    """A .jsonl file or a folder with train.jsonl: the studio's own, checked as it is."""
    found = Path(path).expanduser()
    return found.suffix.lower() == ".jsonl" or (found / "train.jsonl").is_file()


def _pairs(mapped: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(f"{t}={c}" for t, c in zip(TARGETS, mapped, strict=True) if c)


def _free_name(folder: Path, stem: str) -> str:
    base = "".join(c if c.isalnum() or c in "._-" else "-" for c in stem).strip(".-") or "data"
    base = base[:80] if NAME.fullmatch(base[:80]) else "data"
    name, number = base, 1
    while (folder / f"{name}.jsonl").exists():
        number += 1
        name = f"{base}-{number}"
    return name


def _row_html(row: dict) -> str:
    if "messages" in row:
        parts = [
            (m.get("content") or "", m.get("role") == "assistant")
            for m in row["messages"]
            if isinstance(m, dict)
        ]
    elif "text" in row:
        parts = [(row["text"], True)]
    else:
        parts = [(row.get("prompt", ""), False), (row.get("completion", ""), True)]
    shown = "".join(
        f"<b class='ls-trained'>{html.escape(t)}</b>"
        if trained
        else f"<span class='ls-masked'>{html.escape(t)} </span>"
        for t, trained in parts
    )
    return f"<pre class='ls-preview'>{shown}</pre>"
