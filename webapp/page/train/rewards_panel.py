"""The Train tab's GRPO panel: the rewards, the sampling, and a preview of what the rewards give
the base model's own answers to the dataset's first rows before Start (a pattern that never
matches, a field the rows lack: a reward that always gives 0 is seen before a run wastes an
hour). Shown when the method is GRPO.

The reward files offered are the owner's, in the studio's rewards/ folder; a shared studio
runs no other (``Studio.gated_params``)."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from core.data.prompts import question_and_answer
from core.data.scan import scan_dataset
from core.errors import StudioError
from core.eval.cases import Case
from core.eval.generation import Sampling, answer, prompt_tokens
from core.train import rewards
from webapp.page.studio import Studio, explain
from webapp.page.train import form as fields

PREVIEW_ROWS = 3


@dataclass
class RewardsPanel:
    box: gr.Accordion
    fields: dict[str, gr.components.Component]
    try_them: gr.Button
    table: gr.Markdown


def build() -> RewardsPanel:
    """The panel, hidden until GRPO is the method."""
    with gr.Accordion("GRPO: rewards and sampling", open=True, visible=False) as box:
        found = {name: fields.field(name) for name in fields.GRPO_FIELDS}
        try_them = gr.Button("Try the rewards on the base model's answers")
        table = gr.Markdown(elem_id="ls-reward-preview")
    return RewardsPanel(box, found, try_them, table)


def shown_for(method: str) -> dict:
    return gr.update(visible=method == "grpo")


def choices(studio: Studio) -> tuple[dict, dict]:
    """The rewards to pick: the built-ins and the functions of the owner's files; the files."""
    files = studio.reward_file_names()
    functions = []
    for name in files:
        try:
            functions += rewards.check_file(studio.settings.rewards / name)
        except StudioError:
            continue  # said when the file is picked and checked
    return gr.update(choices=fields.REWARD_CHOICES + functions), gr.update(choices=files)


def preview(studio: Studio, model_id: str | None, data_path: str | None, form: dict) -> str:
    """A table: the first rows' prompts, the base model's answers (the run's sampling), and
    each reward's score, with the failures' first messages."""
    try:
        params = studio.gated_params(fields.params(form))
        if not model_id or not data_path:
            raise StudioError("pick a base model and add a dataset first")
        scorer = rewards.scorer_for(params)
        rows = scan_dataset(studio.dataset_path(data_path), batch_size=1).sample[:PREVIEW_ROWS]
        cases = [Case(n, question_and_answer(row)[0], None) for n, row in enumerate(rows, 1)]
        sampling = Sampling(
            max_tokens=params.max_completion_tokens,
            temperature=params.temperature,
            seed=params.seed,
        )
        answers = answer(studio.engine, model_id, cases, sampling, with_loss=False)
        prompts = studio.engine.with_model(
            model_id, lambda _, tok: [tok.decode(prompt_tokens(tok, c)) for c in cases]
        )
    except (StudioError, ValueError) as exc:
        return explain(exc if isinstance(exc, StudioError) else StudioError(str(exc)))
    names = [r.name for r in scorer.rewards]
    lines = ["| prompt | the base's answer | " + " | ".join(names) + " | reward |"]
    lines.append("|" + " --- |" * (len(names) + 3))
    for row, case, prompt, made in zip(rows, cases, prompts, answers, strict=True):
        total, values = scorer.score(prompt, made.text, row)
        cells = [_cell(case.prompt), _cell(made.text), *(f"{v:g}" for v in values)]
        lines.append("| " + " | ".join([*cells, f"{total:g}"]) + " |")
    for message in scorer.first_failure.values():
        lines.append(f"\n**Failed:** {message} (scored 0 there)")
    return "\n".join(lines)


def _cell(text: str, width: int = 80) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= width else text[: width - 3] + "..."
