"""``lora-studio data generate``: a dataset made by a teacher model (core/teach/), with its
progress on stderr; Ctrl-C stops it after the chunk under way, and the same command resumes."""

from __future__ import annotations

import argparse
import json
import signal
import sys

from core.errors import StudioError
from core.settings import Settings
from webapp.cli.train_command import EXIT_CANCELLED, EXIT_REFUSED


def add_parser(actions) -> None:
    make = actions.add_parser("generate", help="make a dataset with a teacher model")
    make.add_argument("--name", required=True, help="the dataset's name in the studio")
    source = make.add_mutually_exclusive_group(required=True)
    source.add_argument("--topics", metavar="FILE", help="one topic per line")
    source.add_argument("--from-docs", metavar="FOLDER", help="documents (.txt, .md)")
    source.add_argument("--from-examples", metavar="FILE", help="a .jsonl of example rows")
    make.add_argument("--rows", type=int, required=True, help="rows to make")
    make.add_argument("--teacher", metavar="MODEL", help="a model of this studio")
    make.add_argument("--teacher-url", help="an OpenAI-compatible endpoint (…/v1)")
    make.add_argument("--teacher-model", help="the model at --teacher-url")
    make.add_argument("--teacher-key-env", metavar="VAR", help="env variable with its key")
    make.add_argument("--instructions", default="", help="the teacher's system prompt")
    make.add_argument("--shape", choices=("sft", "preference"), default="sft")
    make.add_argument("--student", metavar="MODEL", help="preference: who answers worse")
    make.add_argument("--judge", metavar="MODEL", help="a model of this studio as the judge")
    make.add_argument("--judge-url", help="an OpenAI-compatible endpoint (…/v1) as judge")
    make.add_argument("--judge-model", help="the judge's model name at --judge-url")
    make.add_argument("--rubric", metavar="FILE", help="the judge's scoring prompt")
    make.add_argument("--min-score", type=float, help="drop rows the judge rates lower (1-10)")
    make.add_argument("--temperature", type=float, default=0.8, help="the teacher's (0.8)")
    make.add_argument("--max-tokens", type=int, default=256, help="per reply (256)")
    make.add_argument("--seed", type=int, default=0)
    make.add_argument("--json", action="store_true", help="print the source report as JSON")


def generate(args: argparse.Namespace) -> int:
    from core.serve.engine import InferenceEngine
    from core.serve.registry import ModelRegistry

    settings = Settings.from_env().ensure()
    engine = InferenceEngine(ModelRegistry(settings))
    try:
        making = _making(args, settings, engine)
        previous = signal.signal(signal.SIGINT, lambda *_: making.stop.set())
        try:
            done = making.run(settings.datasets)
        finally:
            signal.signal(signal.SIGINT, previous)
    except StudioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    finally:
        engine.close()
    if done.kept < args.rows:
        print(f"stopped: {done.said()}; the same command resumes", file=sys.stderr)
        return EXIT_CANCELLED
    report = json.loads((settings.datasets / f"{args.name}.source.json").read_text())
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"made {settings.datasets / args.name}.jsonl: {done.said()}")
        print(f"train on it: lora-studio train --model MODEL --data {args.name}")
    return 0


def _making(args, settings: Settings, engine):
    from core.teach.order import Order, prepare

    source, given = next(
        (kind, value)
        for kind, value in (
            ("topics", args.topics),
            ("docs", args.from_docs),
            ("examples", args.from_examples),
        )
        if value
    )
    order = Order(
        name=args.name,
        rows=args.rows,
        source=source,
        seeds_from=given,
        **{name: getattr(args, name) for name in _SAME_NAMES},
    )
    making = prepare(order, settings.datasets, engine, settings.access(shared=False))
    making.progress = lambda done: print(f"{done.asked} questions: {done.said()}", file=sys.stderr)
    return making


# the options that are the order's fields by the same names
_SAME_NAMES = (
    "teacher",
    "teacher_url",
    "teacher_model",
    "teacher_key_env",
    "instructions",
    "shape",
    "student",
    "judge",
    "judge_url",
    "judge_model",
    "rubric",
    "min_score",
    "temperature",
    "max_tokens",
    "seed",
)
