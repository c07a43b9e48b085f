"""The Adapters tab's export: a format picker, progress while it fuses and writes, and the
file to download (or, for an Ollama folder, where it is and the line to run)."""

from __future__ import annotations

import shutil
from functools import partial
from pathlib import Path

import gradio as gr

from core.adapters.export import export_adapter, export_folder
from core.adapters.gguf_export import GGUF_TYPES, gguf_limit
from core.errors import StudioError
from webapp.page.background import with_progress
from webapp.page.concurrency import HEAVY, QUICK
from webapp.page.studio import Studio, explain

FORMATS = [
    ("Studio .zip (LoRA Studio, mlx-lm)", "zip"),
    ("PEFT (transformers, vLLM)", "peft"),
    ("GGUF, fused with its base (llama.cpp, LM Studio)", "gguf"),
    ("Ollama (GGUF + Modelfile)", "ollama"),
    ("GGUF LoRA adapter (llama.cpp --lora, Ollama ADAPTER)", "gguf-adapter"),
]


def build(studio: Studio, picker: gr.Dropdown) -> None:
    with gr.Accordion("Export", open=True):
        with gr.Row():
            fmt = gr.Radio(FORMATS, value="zip", label="Format", scale=3)
            with gr.Column(scale=1):
                kind = gr.Dropdown(list(GGUF_TYPES), value="f16", label="GGUF weights")
                system = gr.Textbox(label="System prompt (Ollama)", lines=1)
        export = gr.Button("Export")
        status = gr.Markdown(elem_id="ls-export-status")
        download = gr.File(label="Exported", interactive=False, height=80)
    for changed in (fmt.change, picker.change):
        changed(partial(format_limit, studio), [picker, fmt], status, **QUICK)
    export.click(
        partial(run_export, studio),  # a generator function still: it streams
        [picker, fmt, kind, system],
        [status, download],
        api_visibility="private",
        **HEAVY,
    )


def format_limit(studio: Studio, adapter_id: str | None, fmt: str) -> str:
    """Say before Export when the picked adapter's base cannot go to GGUF, and why."""
    if not adapter_id or fmt not in ("gguf", "ollama", "gguf-adapter"):
        return ""
    try:
        base = studio.registry.adapter_base(adapter_id)
    except StudioError as error:  # the base is gone: Export will say so too
        return explain(error)
    limit = gguf_limit(base)
    return f"This adapter's base cannot go to GGUF: {limit}. PEFT export works." if limit else ""


def run_export(studio: Studio, adapter_id: str | None, fmt: str, kind: str, system: str):
    """Stream the export's steps; end with the file to download. Each export gets a folder
    of its own in the studio's exports folder (two browsers never clobber each other); a
    folder (PEFT, Ollama) is zipped for the download."""
    if not adapter_id:
        yield "Pick an adapter first.", None
        return

    def work(progress) -> Path:
        base = studio.registry.adapter_base(adapter_id)
        folder = export_folder(studio.settings.exports, fmt)
        try:
            return export_adapter(
                studio.adapters,
                adapter_id,
                base,
                fmt,
                folder / _file_name(studio, adapter_id, fmt),
                kind=kind,
                system=system,
                progress=progress,
            )
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)  # a failed export leaves no folder
            raise

    for steps, result, error in with_progress(work):
        text = "  \n".join(steps)
        if error is not None:
            yield explain(error), None
            return
        if result is None:
            yield (text or "exporting...") + "  \n*working...*", None
            continue
        yield _done(result, fmt, text)


SUFFIXES = {"zip": ".zip", "peft": "-peft", "gguf": ".gguf", "ollama": "-ollama"}
SUFFIXES["gguf-adapter"] = "-lora.gguf"


def _file_name(studio: Studio, adapter_id: str, fmt: str) -> str:
    """The adapter's name, made safe, and the format: two formats never share a name."""
    name = studio.adapters.read(adapter_id).name
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in name)[:60] or "adapter"
    return safe + SUFFIXES[fmt]


def _done(result: Path, fmt: str, steps: str):
    """The message and the file to download (a folder zipped beside itself)."""
    folder = result
    if result.is_dir():
        result = Path(shutil.make_archive(str(result), "zip", result))
    # MB as the download box counts them (2^20 bytes), so the two figures agree
    text = f"{steps}  \nDone: `{result.name}` ({result.stat().st_size / 2**20:.1f} MB)."
    if fmt == "ollama":
        text += (
            f"  \nThe folder is also on the server, at `{folder}`. Unzipped anywhere, or "
            f"there:\n\n```\nollama create NAME -f {folder / 'Modelfile'}\n```"
        )
    return text, str(result)
