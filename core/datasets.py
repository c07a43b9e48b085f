"""Training data: format detection, line-level validation, split and statistics.

mlx-lm guesses a dataset's format from its first row and fails mid-training, obscurely, on a
bad row later on. So every line is read and checked here before any process starts, and each
problem is reported with its file, line number and the fix.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import statistics
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from .errors import StudioError

ROLES = ("system", "user", "assistant", "tool", "developer")
MAX_PROBLEMS = 50
FORMAT_FIX = (
    'each line needs {"text": ...}, {"prompt": ..., "completion": ...} '
    'or {"messages": [{"role": ..., "content": ...}, ...]}'
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


@dataclass
class Dataset:
    """Checked rows, already split into train and validation sets."""

    name: str
    format: str
    train: list[dict[str, Any]]
    valid: list[dict[str, Any]]

    def write(self, folder: Path) -> Path:
        """Write train.jsonl and valid.jsonl, the layout mlx-lm's loader reads."""
        folder.mkdir(parents=True, exist_ok=True)
        for split, rows in (("train", self.train), ("valid", self.valid)):
            text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
            (folder / f"{split}.jsonl").write_text(text, encoding="utf-8")
        return folder


def row_format(row: dict[str, Any]) -> str | None:
    """The format of one row, tested in mlx-lm's own order so both sides agree."""
    if "prompt" in row and "completion" in row:
        return "completions"
    if "messages" in row:
        return "chat"
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


def _message_problems(messages: Any) -> list[str]:
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
    if not any(isinstance(m, dict) and m.get("role") == "assistant" for m in messages):
        found.append("the conversation has no assistant turn, so there is nothing to learn")
    return found


def row_problems(row: dict[str, Any], fmt: str) -> list[str]:
    """What is wrong with the fields of one row of format ``fmt`` (empty: nothing)."""
    if fmt == "text":
        found = [_text_field(row, "text")]
    elif fmt == "completions":
        found = [_text_field(row, "prompt"), _text_field(row, "completion")]
    else:
        found = _message_problems(row.get("messages"))
        if "tools" in row and not isinstance(row["tools"], list):
            found.append('"tools" must be a list')
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


def _read_rows(path: Path, fmt: str | None, out: _Collector) -> tuple[list[dict], str | None]:
    """Every row of a .jsonl file; problems go to ``out``. Returns (rows, format)."""
    name = path.name
    try:
        data = path.read_bytes()
    except OSError as exc:
        out.add(name, None, f"cannot be read ({exc.strerror})", "check the path and permissions")
        return [], fmt
    if not data.strip():
        out.add(name, None, "the file is empty", "add one JSON object per line")
        return [], fmt
    lines = data.removeprefix(b"\xef\xbb\xbf").split(b"\n")
    if lines[-1] == b"":
        lines.pop()  # the newline that ends the last line
    rows = []
    for number, raw in enumerate(lines, start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            byte = raw[exc.start]
            out.add(
                name,
                number,
                f"byte 0x{byte:02x} at column {exc.start + 1} is not UTF-8",
                "save the file as UTF-8",
            )
            continue
        if not text.strip():
            out.add(name, number, "blank line", "remove it: every line must be a JSON object")
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as exc:
            out.add(
                name,
                number,
                f"not valid JSON ({exc.msg} at column {exc.colno})",
                "write one complete JSON object per line",
            )
            continue
        if not isinstance(row, dict):
            out.add(name, number, f"a JSON {type(row).__name__}, not an object", FORMAT_FIX)
            continue
        this = row_format(row)
        if this is None:
            out.add(name, number, f"no known fields (found {sorted(row)[:5]})", FORMAT_FIX)
            continue
        if fmt is None:
            fmt = this
        elif this != fmt:
            out.add(
                name,
                number,
                f"{this} row in a {fmt} dataset (format set by its first row)",
                "use one format for the whole dataset",
            )
            continue
        for message in row_problems(row, fmt):
            out.add(name, number, message, _fix_for(fmt))
        rows.append(row)
    return rows, fmt


def _fix_for(fmt: str) -> str:
    return {
        "text": 'give "text" a non-empty string',
        "completions": 'give "prompt" and "completion" non-empty strings',
        "chat": "each message needs a known role and non-empty string content, "
        "and one assistant turn at least",
    }[fmt]


def minimum_examples(batch_size: int, validation_split: float) -> int:
    """The fewest rows that leave one batch for training after the validation split."""
    n = batch_size + 1
    while n - split_size(n, validation_split) < batch_size:
        n += 1
    return n


def split_size(n: int, validation_split: float) -> int:
    """Validation rows taken from ``n``: the share rounded, at least one."""
    return max(1, round(n * validation_split))


def split_rows(rows: list, validation_split: float, seed: int) -> tuple[list, list]:
    """Deterministic shuffled split: the same rows and seed give the same sets."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_valid = split_size(len(rows), validation_split)
    return [rows[i] for i in order[n_valid:]], [rows[i] for i in order[:n_valid]]


def load_dataset(
    path: str | Path, *, batch_size: int, validation_split: float = 0.2, seed: int = 0
) -> Dataset:
    """Read and check a .jsonl file, or a folder with train.jsonl (+ valid.jsonl).

    Raises DatasetError listing every problem; a dataset that is returned trains as is.
    """
    path = Path(path).expanduser()
    out = _Collector()
    valid = None
    if path.is_dir() and (path / "train.jsonl").is_file():
        train, fmt = _read_rows(path / "train.jsonl", None, out)
        if (path / "valid.jsonl").is_file():
            valid, fmt = _read_rows(path / "valid.jsonl", fmt, out)
    elif path.is_file() and path.suffix.lower() == ".jsonl":
        train, fmt = _read_rows(path, None, out)
    else:
        raise DatasetError(
            [
                Problem(
                    path.name,
                    None,
                    "not a .jsonl file or a folder with train.jsonl",
                    "pick a .jsonl dataset",
                )
            ]
        )
    out.raise_if_any()
    if valid is None:
        needed = minimum_examples(batch_size, validation_split)
        if len(train) < needed:
            raise DatasetError(
                [
                    Problem(
                        path.name,
                        None,
                        f"{len(train)} example(s); batch size {batch_size} with a "
                        f"{validation_split:.0%} validation split needs at least {needed}",
                        "add examples or lower the batch size",
                    )
                ]
            )
        train, valid = split_rows(train, validation_split, seed)
    elif len(train) < batch_size:
        raise DatasetError(
            [
                Problem(
                    "train.jsonl",
                    None,
                    f"{len(train)} example(s), fewer than one batch of {batch_size}",
                    f"add at least {batch_size - len(train)} example(s) or lower the batch size",
                )
            ]
        )
    return Dataset(name=path.name, format=fmt or "text", train=train, valid=valid)


@dataclass(frozen=True)
class TokenStats:
    examples: int
    min_tokens: int
    median_tokens: float
    max_tokens: int
    over_max_length: int
    trained_tokens: int
    lengths: list[int]


def _processed(rows: list[dict], fmt: str, tokenizer: Any, mask_prompt: bool):
    """(tokens, offset of the first trained token) per row, from mlx-lm's own dataset
    classes (chat template, prompt masking), so the numbers match training exactly."""
    from mlx_lm.tuner.datasets import create_dataset

    config = SimpleNamespace(mask_prompt=mask_prompt and fmt != "text")
    processed = create_dataset(rows, tokenizer, config)
    return [processed.process(row) for row in rows]


def token_statistics(
    rows: list[dict], fmt: str, tokenizer: Any, *, max_seq_length: int, mask_prompt: bool
) -> TokenStats:
    """Token counts as the trainer will see them."""
    lengths, trained = [], 0
    for tokens, offset in _processed(rows, fmt, tokenizer, mask_prompt):
        lengths.append(len(tokens))
        trained += max(0, min(len(tokens), max_seq_length) - offset)
    return TokenStats(
        examples=len(rows),
        min_tokens=min(lengths),
        median_tokens=statistics.median(lengths),
        max_tokens=max(lengths),
        over_max_length=sum(n > max_seq_length for n in lengths),
        trained_tokens=trained,
        lengths=lengths,
    )


def preview(
    rows: list[dict], fmt: str, tokenizer: Any, *, mask_prompt: bool
) -> list[tuple[str, str]]:
    """For each row: (the text masked from the loss, the text trained on), as the model
    sees them after its chat template."""
    return [
        (tokenizer.decode(tokens[:offset]), tokenizer.decode(tokens[offset:]))
        for tokens, offset in _processed(rows, fmt, tokenizer, mask_prompt)
    ]


def confine(path: str | Path, roots: list[Path]) -> Path:
    """``path`` with symlinks and ``..`` resolved, if it lies under one of ``roots``;
    otherwise a StudioError naming the roots (the studio is open to other machines, and a
    path box must not read whatever the server can)."""
    resolved = Path(path).expanduser().resolve()
    for root in roots:
        if resolved.is_relative_to(root.expanduser().resolve()):
            return resolved
    allowed = ", ".join(str(r) for r in roots)
    raise StudioError(
        f"{path} is outside the folders datasets may be read from ({allowed})",
        hint="upload the file instead, or add its folder to LORA_STUDIO_DATA_ROOTS",
    )


def store_upload(source: Path, folder: Path) -> Path:
    """Keep an uploaded dataset as ``<sha256>.jsonl``: the same content is stored once, and
    nothing of the uploaded file's name reaches the path."""
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{digest}.jsonl"
    if not target.exists():
        partial = folder / f".{digest}.partial"
        shutil.copyfile(source, partial)
        partial.replace(target)
    return target
