"""``lora-studio data import``: bring data from where it lives (CSV, TSV, Parquet, Arrow, JSON,
JSONL, a Hugging Face dataset) into the studio's datasets folder, in a shape it trains on."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from core.data.imports import Options, import_dataset
from core.data.sources import FORMATS
from core.errors import StudioError
from core.settings import Settings
from webapp.cli.train_command import EXIT_REFUSED


def add_parser(commands) -> None:
    data = commands.add_parser("data", help="import datasets")
    actions = data.add_subparsers(dest="data_command", required=True)
    imported = actions.add_parser(
        "import",
        help="turn a CSV, TSV, Parquet, Arrow, JSON or JSONL file, or a Hugging Face dataset, "
        "into datasets/NAME.jsonl",
    )
    imported.add_argument(
        "source", metavar="SRC", help="a file, a dataset folder, or owner/name[:config][@split]"
    )
    imported.add_argument("--name", required=True, help="the dataset's name in the studio")
    imported.add_argument("--format", default="auto", choices=FORMATS, help="default: by name")
    imported.add_argument(
        "--map",
        action="append",
        default=[],
        metavar="FIELD=COLUMN",
        help="a studio field (prompt, completion, text, system, chosen, rejected) from a "
        "column; not needed for a known shape",
    )
    imported.add_argument("--shape", default="sft", choices=("sft", "preference"))
    imported.add_argument("--system", help="a system prompt for every row")
    imported.add_argument("--dedupe", action="store_true", help="drop exact duplicate rows")
    imported.add_argument("--encoding", help="a CSV's text encoding (default: detected)")
    imported.add_argument(
        "--replace",
        action="store_true",
        help="replace the dataset of that name (the old one stays until the new one is whole)",
    )
    imported.add_argument("--json", action="store_true", help="print the report as JSON")


def data(args: argparse.Namespace) -> int:
    settings = Settings.from_env().ensure()
    options = Options(
        fmt=args.format,
        pairs=tuple(args.map),
        shape=args.shape,
        system=args.system,
        dedupe=args.dedupe,
        encoding=args.encoding,
        replace=args.replace,
    )
    try:
        report = import_dataset(args.source, args.name, settings.datasets, options)
    except StudioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    if args.json:
        print(json.dumps(asdict(report), indent=2))
        return 0
    print(
        f"imported {report.rows_written} of {report.rows_read} rows ({report.row_format} "
        f"format; mapping: {report.mapping}) into {report.path}"
    )
    if report.duplicates:
        print(f"dropped {report.duplicates} duplicate row(s)")
    for skip in report.skips[:10]:
        print(f"skipped {skip['where']}: {skip['reason']}")
    if report.skipped > 10:
        print(f"... {report.skipped - 10} more skipped (all in {report.name}.source.json)")
    print(f"train on it: lora-studio train --model MODEL --data {report.name}")
    return 0
