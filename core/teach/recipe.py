"""What a dataset is made from, and how each of its questions is asked of the teacher.

A recipe has seeds: topics (one per line of a file), passages of documents (a folder's text
files cut at blank lines into passages of up to ``PASSAGE_CHARS``), or example rows (a
.jsonl of the user's own, their questions shown as the style to follow). Question ``n`` uses
seed ``n`` (cycling) and says which variation it is, so that the same recipe asks the same
questions, and a resumed run asks again exactly the questions whose answers were lost.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from core.data.documents import TEXT_SUFFIXES, NotText, read_document
from core.data.prompts import question_and_answer
from core.errors import StudioError

PASSAGE_CHARS = 1500
EXAMPLES_SHOWN = 5
Source = Literal["topics", "docs", "examples"]
ASKS = {
    "topics": "Write question number {variation} that a user could ask about: {seed}",
    "docs": "Here is a passage:\n\n{seed}\n\nWrite question number {variation} that it answers",
    "examples": "Here are questions users asked:\n{seed}\n\nWrite a new one (number "
    "{variation}) in their style, on another subject",
}


@dataclass(frozen=True)
class Recipe:
    name: str
    rows: int
    source: Source
    seeds: list[str]
    instructions: str = ""
    shape: Literal["sft", "preference"] = "sft"
    min_score: float | None = None
    seed: int = 0
    origin: str = ""  # the file or folder the seeds came from
    extra: dict = field(default_factory=dict)  # teacher, judge, student: as described

    def fingerprint(self) -> str:
        """What must not change for a stopped run to resume."""
        fixed = {k: v for k, v in asdict(self).items() if k != "rows"}
        return hashlib.sha256(json.dumps(fixed, sort_keys=True).encode()).hexdigest()[:16]

    def question_prompt(self, number: int) -> list[dict]:
        """The conversation that asks the teacher for question ``number`` (from 0)."""
        seed = self.seeds[number % len(self.seeds)]
        variation = number // len(self.seeds) + 1
        ask = ASKS[self.source].format(seed=seed, variation=variation)
        return [{"role": "user", "content": ask + ". Write only the question."}]

    def answer_prompt(self, question: str) -> list[dict]:
        """The conversation that asks the teacher to answer ``question``."""
        system = [{"role": "system", "content": self.instructions}] if self.instructions else []
        return [*system, {"role": "user", "content": question}]


def read_seeds(source: Source, path: Path) -> list[str]:
    """The seeds of ``source`` from ``path``; StudioError when there are none."""
    if not path.exists():
        raise StudioError(f"{path} does not exist")
    if source == "topics":
        seeds = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    elif source == "docs":
        seeds = _passages(path)
    else:
        seeds = _example_sets(path)
    seeds = [s for s in seeds if s]
    if not seeds:
        raise StudioError(f"{path}: nothing to make questions from", hint=_HINTS[source])
    return seeds


_HINTS = {
    "topics": "write one topic per line",
    "docs": "give a folder of .txt or .md files",
    "examples": 'give a .jsonl of rows with questions ({"prompt": ...} or chat rows)',
}


def _passages(path: Path) -> list[str]:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    passages = []
    for file in files:
        if file.suffix.lower() not in TEXT_SUFFIXES:
            continue
        try:
            text = read_document(file)
        except NotText:
            continue
        current = ""
        for block in text.split("\n\n"):
            if current and len(current) + len(block) > PASSAGE_CHARS:
                passages.append(current.strip())
                current = ""
            current += block + "\n\n"
        passages.append(current.strip())
    return passages


def _example_sets(path: Path) -> list[str]:
    """The examples' questions in sets of ``EXAMPLES_SHOWN``, each set one seed."""
    questions = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            messages, _ = question_and_answer(json.loads(line))
        except (ValueError, TypeError, AttributeError):
            continue
        questions.append(messages[-1]["content"])
    sets = [questions[i : i + EXAMPLES_SHOWN] for i in range(0, len(questions), EXAMPLES_SHOWN)]
    return ["\n".join(f"- {q}" for q in group) for group in sets if group]
