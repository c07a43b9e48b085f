"""A dataset read as a whole: counts, the split into train and validation sets, and the
rows the studio keeps before training (a sample, the longest), in bounded memory."""

from __future__ import annotations

import functools
import heapq
import itertools
import json
import os
import random
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.data.check import DatasetError, Problem, RowReader
from core.data.leaks import Leak, file_rows, find_leaks
from core.data.tokens import processed_rows


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


def minimum_examples(batch_size: int, validation_split: float, test_split: float = 0.0) -> int:
    """The fewest rows that leave one batch for training after the validation (and test)
    splits."""
    n = batch_size + 1
    while n - split_size(n, validation_split) - test_size(n, test_split) < batch_size:
        n += 1
    return n


def split_size(n: int, validation_split: float) -> int:
    """Validation rows taken from ``n``: the share rounded, at least one."""
    return max(1, round(n * validation_split))


def test_size(n: int, test_split: float) -> int:
    """Test rows taken from ``n``: the share rounded, at least one when asked for any."""
    return max(1, round(n * test_split)) if test_split else 0


def split_indices(
    n: int, validation_split: float, seed: int, test_split: float = 0.0
) -> tuple[list[int], list[int], list[int]]:
    """Deterministic shuffled split of ``n`` rows: (train, validation, test) indices. The
    validation rows are the same whatever the test split (they come first in the order)."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_valid = split_size(n, validation_split)
    n_test = test_size(n, test_split)
    return order[n_valid + n_test :], order[:n_valid], order[n_valid : n_valid + n_test]


def split_rows(
    rows: list, validation_split: float, seed: int, test_split: float = 0.0
) -> tuple[list, list]:
    """Deterministic shuffled split: the same rows and seed give the same sets; test rows
    (with ``test_split``) are in neither."""
    train, valid, _ = split_indices(len(rows), validation_split, seed, test_split)
    return [rows[i] for i in train], [rows[i] for i in valid]


@dataclass(frozen=True)
class _Files:
    name: str
    train: Path
    valid: Path | None  # None: split from train
    test: Path | None = None  # a folder's own test.jsonl


def _files(path: str | Path) -> _Files:
    try:
        path = Path(path).expanduser()
        if path.is_dir() and (path / "train.jsonl").is_file():
            valid, test = path / "valid.jsonl", path / "test.jsonl"
            return _Files(
                path.name,
                path / "train.jsonl",
                valid if valid.is_file() else None,
                test if test.is_file() else None,
            )
        if path.is_file() and path.suffix.lower() == ".jsonl":
            return _Files(path.name, path, None)
    except (OSError, ValueError):  # a name too long, a NUL byte: no such dataset either
        pass
    name = Path(str(path)[:200].replace("\x00", "")).name
    try:
        missing = not Path(path).exists()
    except (OSError, ValueError):
        missing = True
    what = "no such file or folder" if missing else "not a .jsonl file or a folder with train.jsonl"
    raise DatasetError([Problem(name, None, what, "pick a .jsonl dataset")])


def _check_sizes(
    files: _Files, n_train: int, n_valid: int | None, batch_size, split, test_split=0.0
) -> None:
    if n_valid is None:
        needed = minimum_examples(batch_size, split, test_split)
        if n_train < needed:
            test = f" and a {test_split:.0%} test split" if test_split else ""
            message = (
                f"{n_train} example(s); batch size {batch_size} with a {split:.0%} "
                f"validation split{test} needs at least {needed}"
            )
            fix = "add examples or lower the batch size"
            raise DatasetError([Problem(files.name, None, message, fix)])
    elif n_train < batch_size:
        message = f"{n_train} example(s), fewer than one batch of {batch_size}"
        fix = f"add at least {batch_size - n_train} example(s) or lower the batch size"
        raise DatasetError([Problem("train.jsonl", None, message, fix)])


def load_dataset(
    path: str | Path,
    *,
    batch_size: int,
    validation_split: float = 0.2,
    seed: int = 0,
    test_split: float = 0.0,
) -> Dataset:
    """Read and check a .jsonl file, or a folder with train.jsonl (+ valid.jsonl), keeping
    every row (what the training process needs).

    Raises DatasetError listing every problem; a dataset that is returned trains as is.
    """
    files, reader = _files(path), RowReader()
    train = list(reader.rows(files.train))
    valid = list(reader.rows(files.valid)) if files.valid else None
    reader.out.raise_if_any()
    if valid is not None:
        test_split = 0.0  # a folder's own split (the studio's run folders among them)
    n_valid = None if valid is None else len(valid)
    _check_sizes(files, len(train), n_valid, batch_size, validation_split, test_split)
    if valid is None:
        train, valid = split_rows(train, validation_split, seed, test_split)
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
    test_split: float = 0.0
    test_count: int = 0  # rows kept out for the test evaluation (a split, or test.jsonl)
    # the system prompt every row has, if they all have the same one (an Ollama export
    # gives it to the model, which then answers as it did in training)
    system_prompt: str | None = None
    tool_rows: int = 0  # rows with tools or tool calls (``core.data.tools``)
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

    def test_leaks(self, test_data: Path | None = None) -> list[Leak]:
        """The run's test rows that nearly copy its training rows (``core.data.leaks``), by
        their lines: in a test file given, the folder's test.jsonl, or (a test split) the one
        file both come from. Empty when the run keeps no test rows. Kept for files unchanged
        since (the page asks again at every edit of the form)."""
        test = test_data or self.files.test
        if test is None and not self.test_count:
            return []
        one_file = self.files.valid is None  # split from one file: its training rows only
        split = (self.total, self.validation_split, self.seed, self.test_split, one_file)
        files = (self.files.train, _stamp(self.files.train), test, _stamp(test))
        return list(_test_leaks(*files, split))

    def write(self, folder: Path, test_file: Path | None = None) -> Path:
        """train.jsonl and valid.jsonl in ``folder``, streamed line by line: the split of
        ``split_rows`` (the same rows for the same seed), in the file's order; the test rows
        (a split, or the folder's test.jsonl) to ``test_file`` when given."""
        folder.mkdir(parents=True, exist_ok=True)
        if self.files.test is not None and test_file is not None:
            shutil.copyfile(self.files.test, test_file)
            test_file = None  # the folder's own test rows: none are split off
        if self.files.valid is not None:
            shutil.copyfile(self.files.train, folder / "train.jsonl")
            shutil.copyfile(self.files.valid, folder / "valid.jsonl")
            return folder
        _, valid_rows, test_rows = split_indices(
            self.total, self.validation_split, self.seed, self.test_split
        )
        held_out, tested = set(valid_rows), set(test_rows)
        with (
            self.files.train.open("rb") as source,
            (folder / "train.jsonl").open("wb") as train,
            (folder / "valid.jsonl").open("wb") as valid,
            (test_file or Path(os.devnull)).open("wb") as test,
        ):
            for index, raw in enumerate(source):
                line = raw.removeprefix(b"\xef\xbb\xbf") if index == 0 else raw
                out = valid if index in held_out else test if index in tested else train
                out.write(line.rstrip(b"\n") + b"\n")
        return folder


@functools.lru_cache(maxsize=16)
def _test_leaks(train: Path, _train_stamp, test: Path | None, _test_stamp, split) -> tuple:
    """``DatasetScan.test_leaks``'s finding, for files with these stamps and this split."""
    total, validation_split, seed, test_split, one_file = split
    train_lines = None
    if one_file:
        kept, _, tested = split_indices(total, validation_split, seed, test_split)
        train_lines = {index + 1 for index in kept}
    rows = list(file_rows(train))
    training = [(line, text) for line, text in rows if not train_lines or line in train_lines]
    if test is not None:
        return tuple(find_leaks(file_rows(Path(test)), training))
    tested_lines = {index + 1 for index in tested}
    return tuple(find_leaks([(n, t) for n, t in rows if n in tested_lines], training))


def _stamp(path: Path | None) -> tuple | None:
    """What tells a file changed: its size and modification time."""
    if path is None:
        return None
    found = Path(path).stat()
    return found.st_size, found.st_mtime_ns


SAMPLE_ROWS = 1000
LONGEST_ROWS = 32


def scan_dataset(
    path: str | Path,
    *,
    batch_size: int,
    validation_split: float = 0.2,
    seed: int = 0,
    test_split: float = 0.0,
) -> DatasetScan:
    """Every check of ``load_dataset``, reading line by line and keeping only counts and
    the first SAMPLE_ROWS rows and the LONGEST_ROWS longest: a 500 MB upload costs the server
    no more than a small one."""
    files, reader, kept = _files(path), RowReader(), _Kept()
    n_train = kept.count(reader.rows(files.train))
    n_valid = kept.count(reader.rows(files.valid)) if files.valid else None
    n_test = sum(1 for _ in reader.rows(files.test)) if files.test else 0
    reader.out.raise_if_any()
    if test_split and (files.valid is not None or files.test is not None):
        message = "the dataset folder has its own validation or test file: no test split"
        fix = "put the test rows in the folder's test.jsonl, or give --test-data FILE"
        raise DatasetError([Problem(files.name, None, message, fix)])
    _check_sizes(files, n_train, n_valid, batch_size, validation_split, test_split)
    total = n_train + (n_valid or 0)
    if n_valid is None:
        n_valid, n_test = split_size(n_train, validation_split), test_size(n_train, test_split)
        n_train -= n_valid + n_test
    return DatasetScan(
        name=files.name,
        format=reader.format or "text",
        files=files,
        train_count=n_train,
        valid_count=n_valid,
        sample=kept.sample,
        longest=[row for _, _, row in kept.longest],
        system_prompt=kept.system or None,
        total=total,
        validation_split=validation_split,
        seed=seed,
        test_split=test_split,
        test_count=n_test,
        tool_rows=reader.tool_rows,
    )


class _Kept:
    """The rows a scan keeps: the first ones (``sample``), and a heap of the longest (the
    memory plan tokenizes those: padding gives a batch its longest row's width)."""

    def __init__(self) -> None:
        self.sample: list[dict] = []
        self.longest: list[tuple[int, int, dict]] = []  # (text length, order, row)
        self.system: str | None = ""  # "": no row seen yet; None: the rows differ
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
            self._note_system(row)
            count += 1
        return count

    def _note_system(self, row: dict) -> None:
        if self.system is None:
            return
        messages = row.get("messages") or [{}]
        first = messages[0] if isinstance(messages[0], dict) else {}
        said = first.get("content") if first.get("role") == "system" else None
        if not isinstance(said, str) or (self.system and said != self.system):
            self.system = None
        else:
            self.system = said


def _text_length(value: Any) -> int:
    """Characters of text in a row, whatever its format."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(map(_text_length, value.values()))
    if isinstance(value, list):
        return sum(map(_text_length, value))
    return 0
