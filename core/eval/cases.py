"""The rows of an evaluation: a prompt to answer and, when the row has one, the reference
answer to compare with (``core.data.prompts`` says which is which in each format). A text row
has nothing to answer, so a text file is refused, line by line.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from core.data.check import DatasetError, Problem
from core.data.prompts import question_and_answer
from core.data.tools import calls_of, has_tools, normalized
from core.errors import StudioError

MAX_PROBLEMS = 20


@dataclass(frozen=True)
class Case:
    """One row to answer: its line in the file, the conversation so far, the reference."""

    line: int
    messages: list[dict]
    reference: str | None
    tools: list | None = None  # the row's tools, rendered by the chat template
    calls: list[dict] | None = None  # the reference turn's tool calls, when it makes some

    @property
    def prompt(self) -> str:
        """The last user turn, for tables and the page."""
        users = [m.get("content") for m in self.messages if m.get("role") == "user"]
        return str(users[-1] if users else self.messages[-1].get("content", ""))


def read_cases(path: str | Path) -> list[Case]:
    """Every row of the test file as a Case; DatasetError naming each bad line."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise StudioError(f"no test file at {path}", hint="give a .jsonl file with --data")
    cases, problems = [], []
    with path.open(encoding="utf-8", errors="replace") as lines:
        for number, text in enumerate(lines, start=1):
            if not text.strip():
                continue
            try:
                cases.append(_case(number, json.loads(text)))
            except (ValueError, TypeError, AttributeError) as exc:
                problems.append(Problem(path.name, number, str(exc), _FIX))
            if len(problems) >= MAX_PROBLEMS:
                break
    if problems:
        raise DatasetError(problems)
    if not cases:
        raise StudioError(f"{path.name} has no rows to evaluate", hint=_FIX)
    return cases


def fingerprint(path: str | Path) -> str:
    """sha256 of the test file: an evaluation resumes only on the same rows."""
    with Path(path).expanduser().open("rb") as f:
        return "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()


_FIX = (
    'each line needs {"prompt", "completion"}, {"messages": [...]} (the last assistant '
    'turn is the reference) or {"prompt", "chosen", "rejected"}'
)


def _case(line: int, row: dict) -> Case:
    if not isinstance(row, dict):
        raise ValueError(f"a JSON {type(row).__name__}, not an object")
    if isinstance(row.get("messages"), list) and has_tools(row):
        row = normalized(row)  # a call's arguments as objects, its empty content as ""
    messages = row.get("messages")
    if isinstance(messages, list) and messages and messages[-1].get("tool_calls"):
        calls = calls_of(messages[-1])  # the reference is a call: compared as one
        return Case(line, messages[:-1], json.dumps(calls), row.get("tools"), calls)
    messages, reference = question_and_answer(row)
    return Case(line, messages, reference, row.get("tools"))
