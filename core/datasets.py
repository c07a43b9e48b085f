"""Training data: format detection, line-level validation, split and statistics.

mlx-lm guesses a dataset's format from its first row and fails mid-training, obscurely, on a
bad row later on. So every line is read and checked here before any process starts, and each
problem is reported with its file, line number and the fix.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import json
import random
import shutil
import statistics
from collections.abc import Iterator
from dataclasses import dataclass, field
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


class _Reader:
    """Reads .jsonl files line by line, never whole, checking each row; problems go to
    ``out``, and the first good row sets the format every other row must have."""

    def __init__(self) -> None:
        self.out = _Collector()
        self.format: str | None = None

    def rows(self, path: Path) -> Iterator[dict]:
        name = path.name
        try:
            with path.open("rb") as f:
                first = f.readline()
                if not first.strip() and not f.peek(1):
                    self.out.add(name, None, "the file is empty", "add one JSON object per line")
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
            message = f"{this} row in a {self.format} dataset (format set by its first row)"
            out.add(name, number, message, "use one format for the whole dataset")
            return None
        for message in row_problems(row, this):
            out.add(name, number, message, _fix_for(this))
        return row


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


def split_indices(n: int, validation_split: float, seed: int) -> tuple[list[int], list[int]]:
    """Deterministic shuffled split of ``n`` rows: (train indices, validation indices)."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_valid = split_size(n, validation_split)
    return order[n_valid:], order[:n_valid]


def split_rows(rows: list, validation_split: float, seed: int) -> tuple[list, list]:
    """Deterministic shuffled split: the same rows and seed give the same sets."""
    train, valid = split_indices(len(rows), validation_split, seed)
    return [rows[i] for i in train], [rows[i] for i in valid]


@dataclass(frozen=True)
class _Files:
    name: str
    train: Path
    valid: Path | None  # None: split from train


def _files(path: str | Path) -> _Files:
    try:
        path = Path(path).expanduser()
        if path.is_dir() and (path / "train.jsonl").is_file():
            valid = path / "valid.jsonl"
            return _Files(path.name, path / "train.jsonl", valid if valid.is_file() else None)
        if path.is_file() and path.suffix.lower() == ".jsonl":
            return _Files(path.name, path, None)
    except (OSError, ValueError):  # a name too long, a NUL byte: no such dataset either
        pass
    name = Path(str(path)[:200].replace("\x00", "")).name
    problem = Problem(
        name, None, "not a .jsonl file or a folder with train.jsonl", "pick a .jsonl dataset"
    )
    raise DatasetError([problem])


def _check_sizes(files: _Files, n_train: int, n_valid: int | None, batch_size, split) -> None:
    if n_valid is None:
        needed = minimum_examples(batch_size, split)
        if n_train < needed:
            message = (
                f"{n_train} example(s); batch size {batch_size} with a {split:.0%} "
                f"validation split needs at least {needed}"
            )
            fix = "add examples or lower the batch size"
            raise DatasetError([Problem(files.name, None, message, fix)])
    elif n_train < batch_size:
        message = f"{n_train} example(s), fewer than one batch of {batch_size}"
        fix = f"add at least {batch_size - n_train} example(s) or lower the batch size"
        raise DatasetError([Problem("train.jsonl", None, message, fix)])


def load_dataset(
    path: str | Path, *, batch_size: int, validation_split: float = 0.2, seed: int = 0
) -> Dataset:
    """Read and check a .jsonl file, or a folder with train.jsonl (+ valid.jsonl), keeping
    every row (what the training process needs).

    Raises DatasetError listing every problem; a dataset that is returned trains as is.
    """
    files, reader = _files(path), _Reader()
    train = list(reader.rows(files.train))
    valid = list(reader.rows(files.valid)) if files.valid else None
    reader.out.raise_if_any()
    _check_sizes(
        files, len(train), None if valid is None else len(valid), batch_size, validation_split
    )
    if valid is None:
        train, valid = split_rows(train, validation_split, seed)
    return Dataset(name=files.name, format=reader.format or "text", train=train, valid=valid)


@dataclass
class DatasetScan:
    """A checked dataset without its rows: what the studio needs before training (counts,
    format, a sample to preview), in bounded memory whatever the file's size."""

    name: str
    format: str
    files: _Files
    train_count: int
    valid_count: int
    sample: list[dict[str, Any]]  # the first SAMPLE_ROWS rows
    longest: list[dict[str, Any]]  # the LONGEST_ROWS rows with the most text, in any file
    total: int
    validation_split: float
    seed: int
    _tokens: tuple | None = field(default=None, repr=False, compare=False)

    def tokenized(self, tokenizer: Any, mask_prompt: bool) -> list[tuple[list[int], int]]:
        """The sample's rows, then the longest rows, as (tokens, offset) pairs: one pass that
        the token statistics, the preview and the memory plan share (the page makes all
        three at every edit of the form)."""
        cached = self._tokens
        if cached is None or cached[0] is not tokenizer or cached[1] != mask_prompt:
            rows = self.sample + self.longest
            self._tokens = (
                tokenizer,
                mask_prompt,
                processed_rows(rows, self.format, tokenizer, mask_prompt),
            )
        return self._tokens[2]

    def sample_tokens(self, tokenizer: Any, mask_prompt: bool) -> list[tuple[list[int], int]]:
        """The sample's rows, tokenized (see ``tokenized``)."""
        return self.tokenized(tokenizer, mask_prompt)[: len(self.sample)]

    @property
    def size_bytes(self) -> int:
        """The dataset's files' size."""
        files = [self.files.train] + ([self.files.valid] if self.files.valid else [])
        return sum(f.stat().st_size for f in files)

    def write(self, folder: Path) -> Path:
        """train.jsonl and valid.jsonl in ``folder``, streamed line by line: the split of
        ``split_rows`` (the same rows for the same seed), in the file's order."""
        folder.mkdir(parents=True, exist_ok=True)
        if self.files.valid is not None:
            shutil.copyfile(self.files.train, folder / "train.jsonl")
            shutil.copyfile(self.files.valid, folder / "valid.jsonl")
            return folder
        held_out = set(split_indices(self.total, self.validation_split, self.seed)[1])
        with (
            self.files.train.open("rb") as source,
            (folder / "train.jsonl").open("wb") as train,
            (folder / "valid.jsonl").open("wb") as valid,
        ):
            for index, raw in enumerate(source):
                line = raw.removeprefix(b"\xef\xbb\xbf") if index == 0 else raw
                (valid if index in held_out else train).write(line.rstrip(b"\n") + b"\n")
        return folder


SAMPLE_ROWS = 1000
LONGEST_ROWS = 32


def scan_dataset(
    path: str | Path, *, batch_size: int, validation_split: float = 0.2, seed: int = 0
) -> DatasetScan:
    """Every check of ``load_dataset``, reading line by line and keeping only counts and
    the first SAMPLE_ROWS rows and the LONGEST_ROWS longest: a 500 MB upload costs the server
    no more than a small one."""
    files, reader, kept = _files(path), _Reader(), _Kept()
    n_train = kept.count(reader.rows(files.train))
    n_valid = kept.count(reader.rows(files.valid)) if files.valid else None
    reader.out.raise_if_any()
    _check_sizes(files, n_train, n_valid, batch_size, validation_split)
    total = n_train + (n_valid or 0)
    if n_valid is None:
        n_valid = split_size(n_train, validation_split)
        n_train -= n_valid
    return DatasetScan(
        name=files.name,
        format=reader.format or "text",
        files=files,
        train_count=n_train,
        valid_count=n_valid,
        sample=kept.sample,
        longest=[row for _, _, row in kept.longest],
        total=total,
        validation_split=validation_split,
        seed=seed,
    )


class _Kept:
    """The rows a scan keeps: the first ones (``sample``), and a heap of the longest (the
    memory plan tokenizes those: padding gives a batch its longest row's width)."""

    def __init__(self) -> None:
        self.sample: list[dict] = []
        self.longest: list[tuple[int, int, dict]] = []  # (text length, order, row)
        self._order = itertools.count()

    def count(self, rows: Iterator[dict]) -> int:
        count = 0
        for row in rows:
            if len(self.sample) < SAMPLE_ROWS:
                self.sample.append(row)
            entry = (_text_length(row), next(self._order), row)
            if len(self.longest) < LONGEST_ROWS:
                heapq.heappush(self.longest, entry)
            elif entry[:2] > self.longest[0][:2]:
                heapq.heapreplace(self.longest, entry)
            count += 1
        return count


def _text_length(value: Any) -> int:
    """Characters of text in a row, whatever its format."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(map(_text_length, value.values()))
    if isinstance(value, list):
        return sum(map(_text_length, value))
    return 0


@dataclass(frozen=True)
class TokenStats:
    examples: int
    min_tokens: int
    median_tokens: float
    max_tokens: int
    over_max_length: int
    trained_tokens: int
    lengths: list[int]


def processed_rows(
    rows: list[dict], fmt: str, tokenizer: Any, mask_prompt: bool
) -> list[tuple[list[int], int]]:
    """(tokens, offset of the first trained token) per row, from mlx-lm's own dataset
    classes (chat template, prompt masking), so the numbers match training exactly."""
    from mlx_lm.tuner.datasets import create_dataset

    config = SimpleNamespace(mask_prompt=mask_prompt and fmt != "text")
    processed = create_dataset(rows, tokenizer, config)
    return [processed.process(row) for row in rows]


def token_statistics(items: list[tuple[list[int], int]], *, max_seq_length: int) -> TokenStats:
    """Token counts as the trainer will see them, from rows tokenized by ``processed_rows``."""
    lengths, trained = [], 0
    for tokens, offset in items:
        lengths.append(len(tokens))
        trained += max(0, min(len(tokens), max_seq_length) - offset)
    return TokenStats(
        examples=len(items),
        min_tokens=min(lengths),
        median_tokens=statistics.median(lengths),
        max_tokens=max(lengths),
        over_max_length=sum(n > max_seq_length for n in lengths),
        trained_tokens=trained,
        lengths=lengths,
    )


def preview(items: list[tuple[list[int], int]], tokenizer: Any) -> list[tuple[str, str]]:
    """For each tokenized row: (the text masked from the loss, the text trained on), as the
    model sees them after its chat template."""
    return [
        (tokenizer.decode(tokens[:offset]), tokenizer.decode(tokens[offset:]))
        for tokens, offset in items
    ]


def confine(path: str | Path, roots: list[Path]) -> Path:
    """``path`` with symlinks and ``..`` resolved, if it lies under one of ``roots``;
    otherwise a StudioError naming the roots (the studio is open to other machines, and a
    path box must not read whatever the server can)."""
    try:
        resolved = Path(path).expanduser().resolve()
    except (OSError, ValueError, RuntimeError):
        raise StudioError(f"{str(path)[:200]!r} is not a usable path") from None
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
    with source.open("rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()  # streamed, not read whole
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{digest}.jsonl"
    if not target.exists():
        partial = folder / f".{digest}.partial"
        try:
            shutil.copyfile(source, partial)
            partial.replace(target)
        except OSError as exc:
            partial.unlink(missing_ok=True)
            raise StudioError(
                f"the upload could not be stored in {folder}: {exc.strerror or exc}",
                hint="free some disk space and upload it again",
            ) from None
    return target
