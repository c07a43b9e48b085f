"""``lora-studio data import``: bring data from where it lives (CSV, TSV, Parquet, Arrow, JSON,
JSONL, a Hugging Face dataset) into the studio's datasets folder, in a shape it trains on.
``lora-studio data generate`` (``webapp.cli.generate_command``) makes one with a teacher."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from core.data.imports import Options, import_dataset
from core.data.sources import FORMATS
from core.errors import StudioError
from core.settings import Settings
from webapp.cli import generate_command
from webapp.cli.train_command import EXIT_REFUSED


def add_parser(commands) -> None:
    data = commands.add_parser("data", help="import datasets, or make one with a teacher model")
    actions = data.add_subparsers(dest="data_command", required=True)
    generate_command.add_parser(actions)
    imported = actions.add_parser(
        "import",
        help="turn a CSV, TSV, Parquet, Arrow, JSON or JSONL file, or a Hugging Face dataset, "
        "into datasets/NAME.jsonl",
    )
    imported.add_argument(
        "source",
        metavar="SRC",
        help="a file, a dataset folder, or owner/name[:config][@split]; with --shape text, a "
        "folder of documents (or one)",
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
    imported.add_argument(
        "--shape",
        default="sft",
        choices=("sft", "preference", "text"),
        help="text: documents (.txt, .md; .pdf, .docx with pypdf, python-docx) in chunks of "
        "--chunk-tokens of --model's tokens, for continued pretraining",
    )
    imported.add_argument("--model", help="text: the base whose tokens count the chunks")
    imported.add_argument("--chunk-tokens", type=int, default=2048, help="text: chunk size (2048)")
    imported.add_argument("--overlap", type=int, default=128, help="text: tokens shared (128)")
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
    if args.data_command == "generate":
        return generate_command.generate(args)
    settings = Settings.from_env().ensure()
    if args.shape == "text":
        return _documents(args, settings)
    options = Options(
        fmt=args.format,
        pairs=tuple(args.map),
        shape=args.shape,
        system=args.system,
        dedupe=args.dedupe,
        encoding=args.encoding,
        replace=args.replace,
    )
    return _reported(
        args,
        lambda: import_dataset(args.source, args.name, settings.datasets, options),
        _rows_lines,
    )


def _rows_lines(args, report) -> list[str]:
    lines = [
        f"imported {report.rows_written} of {report.rows_read} rows ({report.row_format} "
        f"format; mapping: {report.mapping}) into {report.path}"
    ]
    if report.duplicates:
        lines.append(f"dropped {report.duplicates} duplicate row(s)")
    lines += [f"skipped {skip['where']}: {skip['reason']}" for skip in report.skips[:10]]
    if report.skipped > 10:
        lines.append(f"... {report.skipped - 10} more skipped (all in {report.name}.source.json)")
    return [*lines, f"train on it: lora-studio train --model MODEL --data {report.name}"]


def _reported(args: argparse.Namespace, work, lines) -> int:
    """Run an import; print its report (as JSON with --json) or say why it was refused."""
    try:
        report = work()
    except StudioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    print(json.dumps(asdict(report), indent=2) if args.json else "\n".join(lines(args, report)))
    return 0


def _documents(args: argparse.Namespace, settings: Settings) -> int:
    """``--shape text``: a folder of documents in chunks of the base's tokens."""
    from pathlib import Path

    from core.data.documents import import_documents
    from core.data.imports import check_name
    from core.models.inspect import resolve_model, tokenizer

    def work():
        if not args.model:
            raise StudioError("--shape text needs --model: the base whose tokens size the chunks")
        model = resolve_model(args.model, settings.models)
        return import_documents(
            Path(args.source).expanduser(),
            check_name(args.name),
            settings.datasets,
            tokenizer(model),
            tokenizer_name=model.name,
            size=args.chunk_tokens,
            overlap=args.overlap,
            replace=args.replace,
        )

    return _reported(args, work, _documents_lines)


def _documents_lines(args, report) -> list[str]:
    lines = [
        f"imported {len(report.files)} document(s) as {report.rows_written} chunks of up to "
        f"{report.chunk_tokens} tokens into {report.path}"
    ]
    lines += [f"skipped {skip['name']}: {skip['reason']}" for skip in report.skipped]
    return [*lines, f"train on it: lora-studio train --model {args.model} --data {report.name}"]
