"""Held-out rows that sit in the training data too: an evaluation on them flatters a model that
memorised its training set.

A held-out row leaks when its text (its prompt and its answer, as a question is asked and
answered: ``core.data.prompts``) is a near-duplicate of a training row's: the Jaccard
similarity of their sets of word 3-grams is at least ``THRESHOLD`` (0.8). Words are compared
without case or punctuation, so a copy with other spacing, capitals or a trailing period still
counts; a row of fewer than 3 words is one "gram", the whole text. 0.8 is loose enough for a
copied row with a word changed in twenty and strict enough that rows sharing a template ("What
is the capital of X?") do not count (measured in tests/test_leaks.py). Candidates are found
through an index of the training rows' grams, so the check is linear in the data.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from core.data.prompts import question_and_answer

NGRAM = 3
THRESHOLD = 0.8
_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class Leak:
    """A held-out row (its line) and the training row (its line) it nearly copies."""

    held_out_line: int
    training_line: int
    similarity: float


def row_text(row: dict) -> str:
    """A row's words as a question and its answer (a text row: its text)."""
    if isinstance(row.get("text"), str):
        return row["text"]
    try:
        messages, answer = question_and_answer(row)
    except ValueError:
        return ""
    asked = " ".join(str(m.get("content") or "") for m in messages)
    return f"{asked} {answer or ''}"


def file_rows(path: Path) -> Iterator[tuple[int, str]]:
    """(line, text) of each JSON row of a .jsonl file (a dataset folder: its train.jsonl);
    a line that is no JSON object is not a row (the dataset check says so, not this)."""
    path = path / "train.jsonl" if path.is_dir() else path
    with path.open(encoding="utf-8", errors="replace") as lines:
        for number, raw in enumerate(lines, start=1):
            try:
                row = json.loads(raw)
            except ValueError:
                continue
            if isinstance(row, dict):
                yield number, row_text(row)


def grams(text: str) -> frozenset[int]:
    """The hashed word 3-grams of ``text`` (its whole text when shorter)."""
    words = [w.lower() for w in _WORD.findall(text)]
    if len(words) < NGRAM:
        return frozenset([hash(tuple(words))]) if words else frozenset()
    return frozenset(hash(tuple(words[i : i + NGRAM])) for i in range(len(words) - NGRAM + 1))


def find_leaks(
    held_out: Iterable[tuple[int, str]],
    training: Iterable[tuple[int, str]],
    threshold: float = THRESHOLD,
) -> list[Leak]:
    """Each held-out (line, text) whose best match among the training (line, text) has a
    Jaccard similarity of ``threshold`` or more; in the held-out rows' order."""
    sizes: dict[int, int] = {}
    index: dict[int, list[int]] = defaultdict(list)
    for line, text in training:
        mine = grams(text)
        sizes[line] = len(mine)
        for gram in mine:
            index[gram].append(line)
    found = []
    for line, text in held_out:
        mine = grams(text)
        if not mine:
            continue
        shared = Counter(other for gram in mine for other in index.get(gram, ()))
        best = max(  # the most similar, the first line of equals
            ((n / (len(mine) + sizes[other] - n), other) for other, n in shared.items()),
            key=lambda match: (match[0], -match[1]),
            default=None,
        )
        if best is not None and best[0] >= threshold:
            found.append(Leak(line, best[1], round(best[0], 3)))
    return found


class Seen:
    """Texts kept so far, for near-duplicates (the same measure as ``find_leaks``): a
    dataset being made drops a row too close to one it already has."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.index: dict[int, list[int]] = defaultdict(list)

    def match(self, text: str, threshold: float = THRESHOLD) -> int | None:
        """The first kept text (its 1-based number) ``text`` nearly copies, or None."""
        mine = grams(text)
        shared = Counter(other for gram in mine for other in self.index.get(gram, ()))
        for other, n in sorted(shared.items()):
            if mine and n / (len(mine) + self.sizes[other] - n) >= threshold:
                return other + 1
        return None

    def add(self, text: str) -> None:
        mine = grams(text)
        for gram in mine:
            self.index[gram].append(len(self.sizes))
        self.sizes.append(len(mine))


def said(pairs: list, test: str, training: str) -> str:
    """How many test rows nearly copy training rows, with the first pairs of lines (pairs:
    ``Leak``s, or [test line, training line, similarity] lists)."""
    rows = [
        (p.held_out_line, p.training_line, p.similarity) if isinstance(p, Leak) else p
        for p in pairs
    ]
    if not rows:
        return f"no test row is a near-duplicate of a row of {training}"
    shown = ", ".join(f"test line {t} ~ training line {r} ({s:.2f})" for t, r, s in rows[:5])
    more = f" and {len(rows) - 5} more" if len(rows) > 5 else ""
    return f"{len(rows)} test row(s) of {test} nearly copy rows of {training}: {shown}{more}"
