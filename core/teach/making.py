"""Making a dataset, chunk by chunk, so that a kill loses at most the chunk under way.

Each chunk asks the teacher for ``CHUNK`` questions, then their answers; a row is dropped when
its question or answer is empty, when the judge rates it under ``--min-score`` (or gives no
rating), when it nearly copies a row already kept (``core.data.leaks.Seen``: word 3-gram
Jaccard >= 0.8), or (``--shape preference``) when the student's answer, the rejected one, is the
teacher's. The kept rows are appended to ``rows.jsonl`` and fsynced, then ``state.json`` (the
next question's number, the rows kept, the counts of each reason to drop) is replaced
atomically: a run killed between the two is cut back to the state's rows on resume, and
asks that chunk's questions again. When enough rows are kept, ``datasets/NAME.jsonl`` and
``NAME.source.json`` (the recipe, the teacher, the counts) appear, each in one rename.

The work folder is ``datasets/.making-NAME/``: hidden from the dataset pickers, kept until the
dataset is made.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from core.data.leaks import Seen
from core.errors import StudioError
from core.files import write_json_atomic, write_text_atomic
from core.judge import RUBRIC, rubric_score
from core.teach.recipe import Recipe
from core.teach.teacher import Asking

CHUNK = 8  # questions asked together (a batch for a studio teacher)
TRIES = 4  # questions asked at most per row wanted, before giving up


@dataclass
class Progress:
    asked: int = 0  # questions asked so far (the next one's number)
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)  # reason -> rows
    spare: int = 0  # asked in the last chunk, not needed: asked = kept + dropped + spare

    def said(self) -> str:
        why = ", ".join(f"{n} {reason}" for reason, n in self.dropped.most_common())
        return f"{self.kept} kept, {sum(self.dropped.values())} dropped" + (
            f" ({why})" if why else ""
        )


@dataclass
class Making:
    """One dataset being made (or resumed) in ``folder``."""

    recipe: Recipe
    folder: Path
    teacher: object  # core.teach.teacher's: answers(conversations, Asking) -> texts
    judge: Callable[[str], str] | None = None
    rubric: str = RUBRIC
    student: object | None = None  # who gives the rejected answers of preference rows
    asking: Asking = field(default_factory=Asking)
    stop: threading.Event = field(default_factory=threading.Event)
    progress: Callable[[Progress], None] = lambda progress: None

    def run(self, datasets: Path) -> Progress:
        """Make the rows still missing; then the dataset. Returns how it went (a stop
        leaves the folder to resume from)."""
        done = self._resume()
        seen = Seen()
        for row in self._rows():
            seen.add(_text(row))
        while done.kept < self.recipe.rows and done.asked < TRIES * self.recipe.rows:
            if self.stop.is_set():
                return done
            kept = self._chunk(done, seen)
            self._commit(done, kept)
            self.progress(done)
        if done.kept < self.recipe.rows:
            raise StudioError(
                f"made {done.kept} of {self.recipe.rows} rows after {done.asked} questions: "
                f"{done.said()}",
                hint="lower --min-score, or give more topics, documents or examples",
            )
        self._publish(datasets, done)
        return done

    def _chunk(self, done: Progress, seen: Seen) -> list[dict]:
        """One chunk's questions, answers and filters; the rows kept."""
        numbers = range(done.asked, done.asked + CHUNK)
        how = Asking(self.asking.temperature, self.asking.max_tokens, self.recipe.seed + done.asked)
        questions = self.teacher.answers([self.recipe.question_prompt(n) for n in numbers], how)
        answers = self.teacher.answers([self.recipe.answer_prompt(q) for q in questions], how)
        rejected = (
            self.student.answers([self.recipe.answer_prompt(q) for q in questions], how)
            if self.student is not None
            else [None] * len(questions)
        )
        done.asked += len(questions)
        kept = []
        for question, answer, worse in zip(questions, answers, rejected, strict=True):
            if len(kept) + done.kept >= self.recipe.rows:
                done.spare += 1
                continue
            why = self._dropped(question, answer, worse, seen)
            if why:
                done.dropped[why] += 1
                continue
            row = self._row(question, answer, worse)
            seen.add(_text(row))
            kept.append(row)
        return kept

    def _dropped(self, question: str, answer: str, worse: str | None, seen: Seen) -> str | None:
        """Why a row is dropped, or None to keep it."""
        if not question or not answer:
            return "empty"
        if self.student is not None and (not worse or worse == answer):
            return "the student's answer is the teacher's"
        if seen.match(f"{question} {answer}") is not None:
            return "near-duplicate"
        if self.judge is not None and self.recipe.min_score is not None:
            score, _ = rubric_score(self.judge, question, None, answer, self.rubric)
            if score is None:
                return "no rating from the judge"
            if score < self.recipe.min_score:
                return f"rated under {self.recipe.min_score:g}"
        return None

    def _row(self, question: str, answer: str, worse: str | None) -> dict:
        if self.recipe.shape == "preference":
            return {"prompt": question, "chosen": answer, "rejected": worse}
        messages = [{"role": "user", "content": question}]
        return {"messages": [*messages, {"role": "assistant", "content": answer}]}

    # -- on disk -------------------------------------------------------------------------------

    def _resume(self) -> Progress:
        """The state to go on from: none yet, or the last committed one (rows written after
        it are cut: their chunk is asked again)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        state = self.folder / "state.json"
        if not state.exists():
            write_json_atomic(state, {"recipe": self.recipe.fingerprint(), **_plain(Progress())})
            (self.folder / "rows.jsonl").write_text("")
            return Progress()
        saved = json.loads(state.read_text())
        if saved.pop("recipe") != self.recipe.fingerprint():
            raise StudioError(
                f"a dataset named {self.recipe.name} is being made with another recipe",
                hint=f"finish it with the same options, or remove {self.folder}",
            )
        done = Progress(saved["asked"], saved["kept"], Counter(saved["dropped"]), saved["spare"])
        lines = (self.folder / "rows.jsonl").read_text(encoding="utf-8").splitlines(True)
        write_text_atomic(self.folder / "rows.jsonl", "".join(lines[: done.kept]))
        return done

    def _rows(self) -> list[dict]:
        text = (self.folder / "rows.jsonl").read_text(encoding="utf-8")
        return [json.loads(line) for line in text.splitlines() if line]

    def _commit(self, done: Progress, kept: list[dict]) -> None:
        with (self.folder / "rows.jsonl").open("a", encoding="utf-8") as rows:
            rows.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))
            rows.flush()
            os.fsync(rows.fileno())
        done.kept += len(kept)
        write_json_atomic(
            self.folder / "state.json", {"recipe": self.recipe.fingerprint(), **_plain(done)}
        )

    def _publish(self, datasets: Path, done: Progress) -> None:
        name = self.recipe.name
        source = {**asdict(self.recipe), "seeds": len(self.recipe.seeds), **_plain(done)}
        write_json_atomic(datasets / f"{name}.source.json", source)
        os.replace(self.folder / "rows.jsonl", datasets / f"{name}.jsonl")
        shutil.rmtree(self.folder, ignore_errors=True)


def _plain(done: Progress) -> dict:
    counts = {"asked": done.asked, "kept": done.kept, "dropped": dict(done.dropped)}
    return counts | {"spare": done.spare}


def _text(row: dict) -> str:
    if "prompt" in row:
        return f"{row['prompt']} {row['chosen']}"
    return " ".join(m["content"] for m in row["messages"])
