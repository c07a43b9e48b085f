"""A dataset read as a whole: counts, the split into train and validation sets, and the
rows the studio keeps before training (a sample, the longest), in bounded memory."""

from __future__ import annotations

import heapq
import itertools
import json
import random
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.data.check import DatasetError, Problem, RowReader
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
    files, reader = _files(path), RowReader()
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
    # the system prompt every row has, if they all have the same one (an Ollama export
    # gives it to the model, which then answers as it did in training)
    system_prompt: str | None = None
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
    files, reader, kept = _files(path), RowReader(), _Kept()
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
        system_prompt=kept.system or None,
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
