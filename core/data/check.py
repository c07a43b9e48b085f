"""The rules of a training row: format detection and line-level validation.

mlx-lm guesses a dataset's format from its first row and fails mid-training, obscurely, on a
bad row later on. So every line is read and checked here before any process starts, and each
problem is reported with its file, line number and the fix.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.data.tools import has_tools, tool_problems
from core.errors import StudioError

ROLES = ("system", "user", "assistant", "tool", "developer")
MAX_PROBLEMS = 50
BINARY_PROBE = 1 << 16  # bytes looked at for a zero byte: text has none
FORMAT_FIX = (
    'each line needs {"text": ...}, {"prompt": ..., "completion": ...}, '
    '{"messages": [{"role": ..., "content": ...}, ...]}, '
    '{"prompt": ..., "chosen": ..., "rejected": ...} '
    'or (GRPO) a prompt alone: {"prompt": ...} or "messages" ending on a user turn'
)
PREFERENCE_FIX = (
    'a preference row is {"prompt": ..., "chosen": ..., "rejected": ...} '
    "(docs/formats.md shows its chat forms)"
)


@dataclass(frozen=True)
class Problem:
    file: str
    line: int | None
    message: str
    fix: str

    def __str__(self) -> str:
        where = f"{self.file}, line {self.line}" if self.line else self.file
        return f"{where}: {self.message} ({self.fix})"


class DatasetError(StudioError):
    """A dataset that cannot be trained on, with every problem found (up to a cap)."""

    def __init__(self, problems: list[Problem], more: int = 0):
        lines = [f"- {p}" for p in problems]
        if more:
            lines.append(f"- ... and {more} more problem(s)")
        super().__init__(
            f"the dataset has {len(problems) + more} problem(s):\n" + "\n".join(lines),
            hint="fix the lines above and load the dataset again",
        )
        self.problems = problems
        self.total = len(problems) + more


def row_format(row: dict[str, Any]) -> str | None:
    """The format of one row, tested in mlx-lm's own order so both sides agree (preference
    rows first: mlx-lm does not train them, and their "prompt" or "messages" would pass for
    its formats). A prompt with no answer (``{"prompt"}``, or messages ending on a user turn)
    is a ``prompts`` row: what GRPO answers itself; any other fields are the rewards' to read."""
    if "chosen" in row or "rejected" in row:
        return "preference"
    if "prompt" in row and "completion" in row:
        return "completions"
    if "messages" in row:
        messages = row["messages"]
        last = messages[-1] if isinstance(messages, list) and messages else None
        return "prompts" if isinstance(last, dict) and last.get("role") == "user" else "chat"
    if "prompt" in row:
        return "prompts"
    if "text" in row:
        return "text"
    return None


def _text_field(row: dict, key: str) -> str | None:
    value = row.get(key)
    if not isinstance(value, str):
        return f'"{key}" must be a string, got {type(value).__name__}'
    if not value.strip():
        return f'"{key}" is empty'
    return None


def _message_problems(messages: Any, *, answered: bool = True) -> list[str]:
    if not isinstance(messages, list) or not messages:
        return ['"messages" must be a non-empty list of {"role", "content"} objects']
    found = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            found.append(f"message {i + 1} is not an object")
            continue
        role = message.get("role")
        if role not in ROLES:
            found.append(f"message {i + 1} has unknown role {role!r} (use one of {ROLES})")
        content = message.get("content")
        if message.get("tool_calls") and content in (None, ""):
            continue
        if not isinstance(content, str):
            found.append(f'message {i + 1} "content" must be a string')
        elif not content.strip():
            found.append(f"message {i + 1} ({role}) has empty content")
    if answered and not any(isinstance(m, dict) and m.get("role") == "assistant" for m in messages):
        found.append("the conversation has no assistant turn, so there is nothing to learn")
    return found


def row_problems(row: dict[str, Any], fmt: str) -> list[str]:
    """What is wrong with the fields of one row of format ``fmt`` (empty: nothing)."""
    if fmt == "preference":
        return preference_problems(row)
    if fmt == "text":
        found = [_text_field(row, "text")]
    elif fmt == "prompts":
        found = (
            _message_problems(row["messages"], answered=False)
            if "messages" in row
            else [_text_field(row, "prompt")]
        )
    elif fmt == "completions":
        found = [_text_field(row, "prompt"), _text_field(row, "completion")]
    else:
        found = _message_problems(row.get("messages"))
        if isinstance(row.get("messages"), list):
            found += tool_problems(row)
    return [p for p in found if p]


class _Collector:
    """Problems in reading order, capped; beyond the cap only counted."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []
        self.more = 0

    def add(self, file: str, line: int | None, message: str, fix: str) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(Problem(file, line, message, fix))
        else:
            self.more += 1

    def raise_if_any(self) -> None:
        if self.problems:
            raise DatasetError(self.problems, self.more)


class RowReader:
    """Reads .jsonl files line by line, never whole, checking each row; problems go to
    ``out``, and the first good row sets the format every other row must have."""

    def __init__(self) -> None:
        self.out = _Collector()
        self.format: str | None = None
        self.tool_rows = 0  # rows with tools or tool calls: the base's template must write them

    def rows(self, path: Path) -> Iterator[dict]:
        name = path.name
        try:
            with path.open("rb") as f:
                first = f.readline()
                if not first.strip() and not f.peek(1):
                    self.out.add(name, None, "the file is empty", "add one JSON object per line")
                    return
                if b"\x00" in first + f.peek(BINARY_PROBE):  # one problem, not one per line
                    self.out.add(
                        name,
                        None,
                        "a binary file (it holds zero bytes), not JSON lines",
                        "pick the .jsonl dataset itself, or import the file in its real format",
                    )
                    return
                lines = itertools.chain([first.removeprefix(b"\xef\xbb\xbf")], f)
                for number, raw in enumerate(lines, start=1):
                    row = self._row(name, number, raw.removesuffix(b"\n"))
                    if row is not None:
                        yield row
        except OSError as exc:
            self.out.add(
                name, None, f"cannot be read ({exc.strerror})", "check the path and permissions"
            )

    def _row(self, name: str, number: int, raw: bytes) -> dict | None:
        out = self.out
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            byte = raw[exc.start]
            where = f"byte 0x{byte:02x} at column {exc.start + 1}"
            out.add(name, number, f"{where} is not UTF-8", "save the file as UTF-8")
            return None
        if not text.strip():
            out.add(name, number, "blank line", "remove it: every line must be a JSON object")
            return None
        try:
            row = json.loads(text)
        except json.JSONDecodeError as exc:
            message = f"not valid JSON ({exc.msg} at column {exc.colno})"
            out.add(name, number, message, "write one complete JSON object per line")
            return None
        if not isinstance(row, dict):
            out.add(name, number, f"a JSON {type(row).__name__}, not an object", FORMAT_FIX)
            return None
        this = row_format(row)
        if this is None:
            out.add(name, number, f"no known fields (found {sorted(row)[:5]})", FORMAT_FIX)
            return None
        if self.format is None:
            self.format = this
        elif this != self.format:
            out.add(name, number, _mixed(this, self.format), "use one format for the whole dataset")
            return None
        for message in row_problems(row, this):
            out.add(name, number, message, _fix_for(this))
        self.tool_rows += this == "chat" and has_tools(row)
        return row


def _mixed(this: str, first: str) -> str:
    """A row in another format than the first row's, said in the words that help most."""
    if (this, first) == ("prompts", "chat"):
        return (
            "the conversation has no assistant turn, so there is nothing to learn (a prompt "
            "alone is a GRPO row; this dataset's first row is a conversation with its answer)"
        )
    return f"{this} row in a {first} dataset (format set by its first row)"


def _fix_for(fmt: str) -> str:
    return {
        "preference": PREFERENCE_FIX,
        "text": 'give "text" a non-empty string',
        "completions": 'give "prompt" and "completion" non-empty strings',
        "prompts": 'give "prompt" a non-empty string, or end "messages" on a user turn',
        "chat": "each message needs a known role and non-empty string content (an assistant "
        "turn that calls tools may have none), one assistant turn at least, and each call a "
        "declared tool with JSON-object arguments",
    }[fmt]


@dataclass(frozen=True)
class PreferencePair:
    """A preference row in one shape whatever its form: the conversation so far, and the
    two answers to it."""

    prompt: list[dict]
    chosen: str
    rejected: str


def preference_pair(row: dict[str, Any]) -> PreferencePair:
    """The pair of a preference row in any of its three forms: prompt (text, with an
    optional "system"), "messages" (the conversation so far) with two answers, or TRL's
    "chosen" and "rejected" conversations whose shared turns are the prompt. Raises
    ValueError saying what is wrong."""
    chosen, rejected = row.get("chosen"), row.get("rejected")
    if chosen is None or rejected is None:
        raise ValueError(f'"{"chosen" if chosen is None else "rejected"}" is missing')
    if isinstance(chosen, list) and isinstance(rejected, list) and "messages" not in row:
        prompt, chosen, rejected = _shared_prompt(chosen, rejected, row.get("prompt"))
    elif "messages" in row:
        prompt = row["messages"]
    else:
        prompt = _prompt_messages(row)
    pair = PreferencePair(prompt, _answer(chosen, "chosen"), _answer(rejected, "rejected"))
    if pair.chosen == pair.rejected:
        raise ValueError("chosen and rejected are the same answer, so there is nothing to prefer")
    return pair


def preference_problems(row: dict[str, Any]) -> list[str]:
    """What is wrong with one preference row (empty: nothing)."""
    try:
        pair = preference_pair(row)
    except ValueError as exc:
        return [str(exc)]
    found = _message_problems(pair.prompt, answered=False)
    if (
        pair.prompt
        and isinstance(pair.prompt[-1], dict)
        and pair.prompt[-1].get("role") == "assistant"
    ):
        found.append("the prompt ends with an assistant turn: the answers have nothing to answer")
    return found


def _prompt_messages(row: dict) -> list[dict]:
    prompt, system = row.get("prompt"), row.get("system")
    if isinstance(prompt, list):  # TRL's conversational prompt
        return prompt
    problem = _text_field(row, "prompt")
    if problem:
        raise ValueError(problem)
    if system is not None and not isinstance(system, str):
        raise ValueError('"system" must be a string')
    messages = [{"role": "system", "content": system}] if system else []
    return [*messages, {"role": "user", "content": prompt}]


def _answer(value: Any, key: str) -> str:
    """An answer given as text or as one assistant message."""
    if isinstance(value, dict):
        if value.get("role", "assistant") != "assistant":
            raise ValueError(f'"{key}" is a {value.get("role")!r} message, not an assistant one')
        value = value.get("content")
    if not isinstance(value, str):
        raise ValueError(f'"{key}" must be a string or an assistant message')
    if not value.strip():
        raise ValueError(f'"{key}" is empty')
    return value


def _shared_prompt(chosen: list, rejected: list, prompt: Any) -> tuple[list, Any, Any]:
    """TRL's conversational form: the turns before each last one are the prompt (or
    "prompt" gives them, and each side is its answer alone)."""
    if isinstance(prompt, list):
        if len(chosen) != 1 or len(rejected) != 1:
            raise ValueError(
                'with a "prompt", "chosen" and "rejected" hold one assistant turn each'
            )
        return prompt, chosen[0], rejected[0]
    if not chosen or not rejected:
        raise ValueError('"chosen" and "rejected" must not be empty conversations')
    if chosen[:-1] != rejected[:-1]:
        raise ValueError(
            "the prompt differs between chosen and rejected: their turns before the last "
            "must be the same"
        )
    return chosen[:-1], chosen[-1], rejected[-1]
