"""The Train tab's "Make a dataset with a teacher model": questions from topics, documents or
example rows, answered by a model of the studio or an OpenAI-compatible endpoint, filtered by
the judge and for near-duplicates (core/teach/). Its progress shows as it goes; the dataset it
makes becomes the one the form checks. Stop leaves it resumable: Make again with the same
options continues it."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import gradio as gr

from core.errors import StudioError
from core.teach.order import Order, prepare
from webapp.page.studio import Studio, explain

SOURCES = {
    "topics": "Topics (one per line)",
    "docs": "A folder of documents",
    "examples": "A .jsonl of example rows",
}


@dataclass
class TeachPanel:
    name: gr.Textbox
    source: gr.Radio
    seeds: gr.Textbox
    rows: gr.Number
    teacher: gr.Dropdown
    teacher_url: gr.Textbox
    teacher_model: gr.Textbox
    instructions: gr.Textbox
    judge: gr.Dropdown
    min_score: gr.Number
    make: gr.Button
    stop: gr.Button
    status: gr.Markdown

    def inputs(self) -> list:
        return [
            self.name,
            self.source,
            self.seeds,
            self.rows,
            self.teacher,
            self.teacher_url,
            self.teacher_model,
            self.instructions,
            self.judge,
            self.min_score,
        ]


def build(studio: Studio) -> TeachPanel:
    models = [(label, model_id) for label, model_id in studio.chat_choices()]
    with gr.Accordion("Make a dataset with a teacher model", open=False):
        name = gr.Textbox(label="Dataset name", placeholder="made-by-teacher")
        source = gr.Radio(
            [(v, k) for k, v in SOURCES.items()], value="topics", label="Questions from"
        )
        seeds = gr.Textbox(
            label="The topics, or the folder's or file's path on the server", lines=3
        )
        rows = gr.Number(40, label="Rows", precision=0)
        teacher = gr.Dropdown(models, label="Teacher: a model of this studio", value=None)
        with gr.Row():
            teacher_url = gr.Textbox(label="...or an OpenAI-compatible URL (…/v1)")
            teacher_model = gr.Textbox(label="its model")
        instructions = gr.Textbox(label="Instructions to the teacher (a voice, a length)")
        with gr.Row():
            judge = gr.Dropdown(models, label="Judge (optional)", value=None)
            min_score = gr.Number(None, label="Keep rows rated at least (1-10)")
        with gr.Row():
            make = gr.Button("Make the dataset")
            stop = gr.Button("Stop", variant="stop")
        status = gr.Markdown(elem_id="ls-teach-status")
    return TeachPanel(
        name,
        source,
        seeds,
        rows,
        teacher,
        teacher_url,
        teacher_model,
        instructions,
        judge,
        min_score,
        make,
        stop,
        status,
    )


class Teaching:
    """The page's dataset being made (one at a time: the engine serves one base)."""

    def __init__(self, studio: Studio):
        self.studio = studio
        self.current = None

    def make(self, name, source, seeds, rows, teacher, url, model, instructions, judge, score):
        """Make it, yielding (status, dataset path, dataset name) as it goes."""
        topics = tuple(seeds.splitlines()) if source == "topics" else ()
        order = Order(
            name=name or "",
            rows=int(rows or 0),
            source=source,
            seeds_from="" if topics else seeds.strip(),
            topics=topics,
            teacher=teacher or None,
            teacher_url=url.strip() or None,
            teacher_model=model.strip() or None,
            instructions=instructions or "",
            judge=judge or None,
            min_score=score,
        )
        try:
            making = prepare(
                order, self.studio.settings.datasets, self.studio.engine, self.studio.access
            )
        except StudioError as exc:
            yield explain(exc), gr.skip(), gr.skip()
            return
        yield from self._follow(making)

    def _follow(self, making):
        outcome: dict = {}
        said = {"text": "asking the teacher..."}
        making.progress = lambda done: said.update(text=f"{done.asked} questions: {done.said()}")

        def work():
            try:
                outcome["done"] = making.run(self.studio.settings.datasets)
            except StudioError as exc:
                outcome["error"] = exc

        self.current = making
        worker = threading.Thread(target=work, name="teaching", daemon=True)
        worker.start()
        while worker.is_alive():
            yield said["text"], gr.skip(), gr.skip()
            time.sleep(1.0)
        self.current = None
        yield self._ending(making, outcome)

    def _ending(self, making, outcome: dict) -> tuple:
        if "error" in outcome:
            return explain(outcome["error"]), gr.skip(), gr.skip()
        done, name = outcome["done"], making.recipe.name
        if done.kept < making.recipe.rows:
            return f"Stopped: {done.said()}. Make it again to continue.", gr.skip(), gr.skip()
        path = self.studio.settings.datasets / f"{name}.jsonl"
        return f"Made **{name}.jsonl**: {done.said()}.", str(path), f"{name}.jsonl"

    def halt(self) -> None:
        """Stop the dataset being made after its chunk under way (Make again resumes it)."""
        if self.current is not None:
            self.current.stop.set()
