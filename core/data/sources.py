"""Where training data lives: readers that stream the records of a CSV or TSV file, a Parquet
or Arrow file, a JSON array, a JSONL file or a Hugging Face dataset, each record with where a
person finds it (its line, or its row).

A record that cannot be read (a ragged CSV row, a JSONL line that is not an object) comes as
a ``Skipped`` with the reason, and the import goes on; a source that cannot be read at all (a
binary file named .csv, an unterminated quote, a JSON object instead of an array) raises a
StudioError naming the file and where it broke. Nothing here holds a whole file in memory
except a JSON array, which is one value.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.access import HUB_NAME, is_hub_name
from core.errors import StudioError

FORMATS = ("auto", "csv", "tsv", "parquet", "arrow", "json", "jsonl", "hf")
SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".arrow": "arrow"}
SUFFIXES |= {".json": "json", ".jsonl": "jsonl"}
BATCH_ROWS = 1024  # Parquet and Arrow rows read at once
csv.field_size_limit(1 << 30)  # a long answer is one field: 1 GB, not csv's 128 kB


@dataclass(frozen=True)
class Record:
    where: str  # "line 12" or "row 7": what a person looks for
    values: dict[str, Any]


@dataclass(frozen=True)
class Skipped:
    where: str
    reason: str


def detect_format(source: str) -> str:
    """The format of ``source``, by its name: a file by its suffix, a folder or an
    ``owner/name[:config][@split]`` that is no file as a Hugging Face dataset."""
    path = Path(source).expanduser()
    if path.is_dir():
        return "hf"
    if path.suffix.lower() in SUFFIXES:
        return SUFFIXES[path.suffix.lower()]
    if is_hub_name(source):
        return "hf"
    raise StudioError(
        f"cannot tell what {source} is from its name",
        hint="give --format csv, tsv, parquet, arrow, json, jsonl or hf",
    )


def read(source: str, fmt: str, encoding: str | None = None) -> Iterator[Record | Skipped]:
    """The records of ``source`` in format ``fmt`` (see FORMATS; "auto" detects it)."""
    fmt = detect_format(source) if fmt == "auto" else fmt
    if fmt == "hf":
        return _hugging_face(source)
    path = Path(source).expanduser()
    if not path.is_file():
        raise StudioError(f"{source} is not a file")
    if fmt in ("csv", "tsv"):
        return _delimited(path, "\t" if fmt == "tsv" else ",", encoding)
    readers = {"parquet": _parquet, "arrow": _arrow, "json": _json_array, "jsonl": _jsonl}
    return readers[fmt](path)


def _delimited(path: Path, delimiter: str, encoding: str | None) -> Iterator[Record | Skipped]:
    """CSV or TSV with a header row; quoted fields may span lines."""
    encoding = encoding or _encoding(path)
    with path.open(encoding=encoding, errors="strict", newline="") as f:
        reader = csv.DictReader(f, delimiter=delimiter, strict=True)
        ended, row = 1, 0  # the header's line
        try:
            header = reader.fieldnames
            if not header:
                raise StudioError(f"{path.name} is empty: it needs a header row")
            for values in reader:
                row += 1
                where = f"line {ended + 1} (row {row})"
                ended = reader.line_num
                extra = values.pop(None, None)  # csv's place for fields past the header
                missing = [name for name, value in values.items() if value is None]
                if extra or missing:
                    fields = len(header) + len(extra) if extra else len(header) - len(missing)
                    yield Skipped(where, f"{fields} field(s), the header has {len(header)}")
                    continue
                yield Record(where, values)
        except csv.Error as exc:
            raise StudioError(
                f"{path.name}: {exc} in the record that starts on line {ended + 1}",
                hint="an unterminated quote runs to the end of the file: close it",
            ) from None
        except UnicodeDecodeError as exc:
            raise StudioError(
                f"{path.name} is not {encoding} text (byte 0x{exc.object[exc.start]:02x})",
                hint="give its encoding with --encoding",
            ) from None


def _encoding(path: Path) -> str:
    """The text encoding of a file, from its first 64 kB; a file with NUL bytes is binary."""
    with path.open("rb") as f:
        head = f.read(1 << 16)
    if b"\x00" in head:
        raise StudioError(
            f"{path.name} is not a text file: it holds binary data "
            f"(a zero byte at offset {head.index(0)})",
            hint="export the data as CSV, or import the file with its real format",
        )
    if head.startswith(b"\xef\xbb\xbf"):
        return "utf-8-sig"
    try:
        head.decode("utf-8")
        return "utf-8"
    except UnicodeDecodeError as exc:
        if exc.start >= len(head) - 4:  # a character cut at the 64 kB boundary
            return "utf-8"
    from charset_normalizer import from_bytes

    found = from_bytes(head).best()
    return found.encoding if found else "utf-8"


def _parquet(path: Path) -> Iterator[Record]:
    """A Parquet file's rows, a batch of row groups' rows at a time."""
    import pyarrow.parquet as pq

    try:
        file = pq.ParquetFile(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow's errors are many; all mean "not Parquet"
        raise StudioError(f"{path.name} is not a Parquet file ({_first_line(exc)})") from None
    yield from _rows(file.iter_batches(batch_size=BATCH_ROWS))


def _arrow(path: Path) -> Iterator[Record]:
    """An Arrow IPC file or stream (what ``datasets`` keeps in its cache)."""
    import pyarrow as pa

    try:
        source = pa.memory_map(str(path))
        try:
            batches = pa.ipc.open_file(source)
            batches = (batches.get_batch(i) for i in range(batches.num_record_batches))
        except pa.ArrowInvalid:
            source.seek(0)
            batches = pa.ipc.open_stream(source)
    except Exception as exc:  # noqa: BLE001 - every failure here means "not Arrow"
        raise StudioError(f"{path.name} is not an Arrow file ({_first_line(exc)})") from None
    yield from _rows(batches)


def _rows(batches) -> Iterator[Record]:
    number = 0
    for batch in batches:
        for values in batch.to_pylist():
            number += 1
            yield Record(f"row {number}", values)


def _json_array(path: Path) -> Iterator[Record | Skipped]:
    """A JSON file holding one array of objects."""
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError:
        raise StudioError(f"{path.name} is not UTF-8 text", hint="save it as UTF-8") from None
    except ValueError as exc:
        raise StudioError(f"{path.name} is not valid JSON ({exc})") from None
    if isinstance(data, dict):
        lists = [k for k, v in data.items() if isinstance(v, list)]
        hint = f'the rows may be its "{lists[0]}" list: save that list alone' if lists else None
        raise StudioError(
            f"{path.name} holds a JSON object, not an array of rows "
            f"(its keys: {', '.join(list(data)[:8])})",
            hint=hint or "a JSON dataset is an array of objects, one per row",
        )
    if not isinstance(data, list):
        raise StudioError(f"{path.name} holds a JSON {type(data).__name__}, not an array of rows")
    for number, values in enumerate(data, start=1):
        if isinstance(values, dict):
            yield Record(f"row {number}", values)
        else:
            yield Skipped(f"row {number}", f"a JSON {type(values).__name__}, not an object")


def _jsonl(path: Path) -> Iterator[Record | Skipped]:
    """One JSON object per line, read line by line."""
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            where = f"line {number}"
            try:
                values = json.loads(raw.removeprefix(b"\xef\xbb\xbf") if number == 1 else raw)
            except ValueError as exc:
                if raw.strip():
                    yield Skipped(where, f"not valid JSON ({_first_line(exc)})")
                continue
            if isinstance(values, dict):
                yield Record(where, values)
            else:
                yield Skipped(where, f"a JSON {type(values).__name__}, not an object")


def _hugging_face(spec: str) -> Iterator[Record]:
    """A dataset through the ``datasets`` library: a folder saved with ``save_to_disk`` or
    holding data files, or ``owner/name[:config][@split]`` from the hub (or its cache, when
    the hub is out of reach)."""
    dataset = _load_hf(spec)
    for number, values in enumerate(dataset, start=1):
        yield Record(f"row {number}", values)


def _load_hf(spec: str):
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "5")  # offline fails in seconds
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "10")
    import datasets

    datasets.disable_progress_bars()
    path = Path(spec).expanduser()
    match = HUB_NAME.fullmatch(spec) if is_hub_name(spec) else None
    split = match.group("split") if match else None
    if not match and not path.is_dir():
        raise StudioError(
            f"{spec} is neither a dataset folder nor a Hugging Face dataset name",
            hint="a hub dataset is named owner/name, optionally :config and @split",
        )
    try:
        if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
            loaded = datasets.load_from_disk(str(path))
        elif path.is_dir():
            loaded = datasets.load_dataset(str(path))
        else:
            name, config = match.group("name"), match.group("config")
            loaded = datasets.load_dataset(name, config, split=split)
    except Exception as exc:  # noqa: BLE001 - network, cache and format errors alike
        raise StudioError(
            f"could not load the Hugging Face dataset {spec}: {_first_line(exc)}",
            hint="offline, a hub dataset loads only from the local cache; save it with "
            "save_to_disk on a machine that has it and import that folder",
        ) from None
    if isinstance(loaded, datasets.DatasetDict):
        chosen = split or ("train" if "train" in loaded else next(iter(loaded)))
        if chosen not in loaded:
            raise StudioError(f"{spec} has no split {chosen!r} (it has {', '.join(loaded)})")
        loaded = loaded[chosen]
    return loaded


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
