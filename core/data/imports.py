"""Importing data from where it lives into the studio's datasets folder.

``import_dataset`` streams a source's records (``core.data.sources``) through a mapping
(``core.data.shapes``), checks every row with the rules training uses (``core.data.check``),
optionally drops exact duplicates, and writes ``datasets/NAME.jsonl`` whole or not at all,
with ``datasets/NAME.source.json`` beside it: the source, its checksum, the mapping, and the
rows read, written and skipped (each with its reason and its line or row). The source is
never changed.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from core.data import sources
from core.data.check import row_format, row_problems
from core.data.shapes import Mapping, RowProblem, mapping_for
from core.errors import StudioError
from core.files import replacing, write_json_atomic

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
SKIPS_KEPT = 200  # skipped rows listed in the .source.json (all are counted)
PREVIEW_ROWS = 5


@dataclass
class ImportReport:
    """What an import did: the numbers and reasons ``NAME.source.json`` keeps."""

    name: str
    path: str
    source: str
    format: str
    checksum: str | None
    mapping: str
    rows_read: int = 0
    rows_written: int = 0
    duplicates: int = 0
    skipped: int = 0
    skips: list[dict] = field(default_factory=list)  # the first SKIPS_KEPT: where, reason
    row_format: str | None = None  # chat, completions, text or preference
    imported_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())

    def skip(self, where: str, reason: str) -> None:
        self.skipped += 1
        if len(self.skips) < SKIPS_KEPT:
            self.skips.append({"where": where, "reason": reason})


@dataclass(frozen=True)
class Options:
    """An import's choices (the CLI's flags and the page's form give them)."""

    fmt: str = "auto"
    pairs: tuple[str, ...] = ()  # FIELD=COLUMN
    shape: str = "sft"  # or preference
    system: str | None = None
    dedupe: bool = False
    encoding: str | None = None
    replace: bool = False  # a dataset of the same name is replaced (once the new one is whole)


def columns_of(source: str, options: Options) -> tuple[list[str], list[dict]]:
    """The columns of ``source`` and its first records (the page's mapping form shows them)."""
    records = [r for r in itertools.islice(_records(source, options), 50)]
    found = [r for r in records if isinstance(r, sources.Record)]
    if not found:
        raise StudioError(f"{source} has no readable rows")
    columns = list(dict.fromkeys(c for r in found for c in r.values))
    return columns, [r.values for r in found[:PREVIEW_ROWS]]


def preview(source: str, options: Options) -> tuple[Mapping, list[dict]]:
    """The mapping an import would use and the first rows it would write."""
    columns, first = columns_of(source, options)
    mapping = mapping_for(columns, list(options.pairs), options.shape, options.system)
    rows = []
    for values in first:
        try:
            rows.append(mapping.convert(values))
        except RowProblem:
            continue
    return mapping, rows


def import_dataset(source: str, name: str, folder: Path, options: Options) -> ImportReport:
    """Import ``source`` as ``folder/NAME.jsonl`` (see the module's docstring)."""
    name = check_name(name)
    target = folder / f"{name}.jsonl"
    if target.exists() and not options.replace:
        raise StudioError(
            f"a dataset named {name} exists already",
            hint="choose another --name, or give --replace to replace it",
        )
    folder.mkdir(parents=True, exist_ok=True)
    columns, _ = columns_of(source, options)
    mapping = mapping_for(columns, list(options.pairs), options.shape, options.system)
    fmt = sources.detect_format(source) if options.fmt == "auto" else options.fmt
    report = ImportReport(name, str(target), source, fmt, _checksum(source), mapping.describe())
    with replacing(target) as partial, partial.open("w", encoding="utf-8") as out:
        for row in _rows(source, options, mapping, report):
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
        if not report.rows_written:
            raise StudioError(
                f"{source}: no row could be imported ({report.rows_read} read, "
                f"{report.skipped} skipped{_first_skip(report)})",
                hint="check the mapping and the rows named above",
            )
    write_json_atomic(folder / f"{name}.source.json", asdict(report))
    return report


def dataset_file(text: str | os.PathLike, folder: Path) -> Path:
    """A dataset a person names on the command line: a file or folder, else a name of the
    studio's datasets (what ``data import`` printed): ``folder/<name>.jsonl``."""
    path = Path(text).expanduser()
    if path.exists() or not NAME.fullmatch(str(text)):
        return path
    named = folder / f"{text}.jsonl"
    if named.is_file():
        return named
    raise StudioError(
        f"no file {text} here, and no dataset named {text} in {folder}",
        hint="give the .jsonl file's path, or the name data import printed",
    )


def check_name(name: str) -> str:
    if not NAME.fullmatch(name or "") or name.endswith((".jsonl", ".json")):
        raise StudioError(
            f"{name!r} cannot name a dataset",
            hint="letters, digits, '.', '_' and '-', up to 100, no extension",
        )
    return name


def _records(source: str, options: Options) -> Iterator[sources.Record | sources.Skipped]:
    return sources.read(source, options.fmt, options.encoding)


def _rows(source: str, options: Options, mapping: Mapping, report: ImportReport) -> Iterator[dict]:
    """The rows to write, in the source's order: converted, checked, deduplicated."""
    seen: set[bytes] = set()
    for record in _records(source, options):
        report.rows_read += 1
        if isinstance(record, sources.Skipped):
            report.skip(record.where, record.reason)
            continue
        try:
            row = mapping.convert(record.values)
            _check(row, report)
        except RowProblem as exc:
            report.skip(record.where, str(exc))
            continue
        if options.dedupe:
            key = hashlib.blake2b(json.dumps(row, sort_keys=True).encode(), digest_size=16)
            if key.digest() in seen:
                report.duplicates += 1
                continue
            seen.add(key.digest())
        report.rows_written += 1
        yield row


def _check(row: dict, report: ImportReport) -> None:
    """The rules training applies to the row (one format for the whole file)."""
    fmt = row_format(row)
    if report.row_format is None:
        report.row_format = fmt
    elif fmt != report.row_format:
        raise RowProblem(f"a {fmt} row in a {report.row_format} dataset")
    problems = row_problems(row, fmt) if fmt else ["no known fields"]
    if problems:
        raise RowProblem("; ".join(problems))


def _checksum(source: str) -> str | None:
    """sha256 of a source file (a dataset folder or a hub name has none of its own)."""
    path = Path(source).expanduser()
    if not path.is_file():
        return None
    with path.open("rb") as f:
        return "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()


def _first_skip(report: ImportReport) -> str:
    if not report.skips:
        return ""
    first = report.skips[0]
    return f"; first: {first['where']}: {first['reason']}"
