"""``lora-studio sweep`` and ``lora-studio sweeps``: several trainings that differ in the
settings varied, ranked by held-out evaluation; and the sweeps kept."""

from __future__ import annotations

import argparse
import json
import signal
import sys

from rich.console import Console
from rich.table import Table

from core.data.imports import dataset_file
from core.errors import StudioError
from core.params import add_arguments, params_from_args
from core.settings import Settings
from core.sweep.prepare import OBJECTIVES
from core.sweep.space import varyable, words
from core.sweep.store import VALIDATION_LOSS, SweepSpec, SweepStore
from webapp.cli.train_command import EXIT_CANCELLED, EXIT_FAILED, EXIT_REFUSED, ask_to_stop


def add_parsers(commands) -> None:
    sweep = commands.add_parser(
        "sweep",
        help="train with several settings and rank the adapters by held-out evaluation",
        description="Every `train` flag fixes that setting for all trials; --vary varies one. "
        f"Fields a sweep can vary: {', '.join(varyable())}.",
    )
    sweep.add_argument("--model", help="base model folder, or a model name in the models folder")
    sweep.add_argument("--data", help=".jsonl file, or a folder with train.jsonl (+ valid.jsonl)")
    sweep.add_argument("--test-data", metavar="FILE", help="held-out rows to rank the adapters on")
    sweep.add_argument(
        "--vary",
        action="append",
        metavar="NAME=VALUES",
        help="a field's values (rank=4,8,16) or range (learning_rate=1e-4:1e-3:log); repeat it",
    )
    sweep.add_argument("--trials", type=int, help="how many (default: the grid's size, or 8)")
    sweep.add_argument(
        "--objective",
        default=VALIDATION_LOSS,
        help=f"what ranks the adapters: {', '.join(OBJECTIVES)} (default: validation_loss)",
    )
    sweep.add_argument("--name", help="the sweep's name (its adapters are named after it)")
    sweep.add_argument(
        "--parallel", type=int, default=1, help="trials at once, if the memory plan allows (1)"
    )
    sweep.add_argument(
        "--no-prune", action="store_true", help="train every trial to its end (no pruning)"
    )
    sweep.add_argument("--resume", metavar="ID", help="continue a stopped or killed sweep")
    sweep.add_argument("--stop", metavar="ID", help="stop a sweep running in another process")
    sweep.add_argument("--json", action="store_true", help="print the result as one JSON object")
    add_arguments(sweep)
    listed = commands.add_parser("sweeps", help="the sweeps of this studio, newest first")
    listed.add_argument("--json", action="store_true", help="print a JSON list")


def sweep(args: argparse.Namespace) -> int:
    from core.machine.blas_choice import reexec_with_fast_blas
    from core.serve.engine import InferenceEngine
    from core.serve.registry import ModelRegistry
    from core.train.service import TrainingService

    settings = Settings.from_env().ensure()
    store = SweepStore(settings.sweeps)
    if args.stop:
        return ask_to_stop(store, "sweep", args.stop, "at its trial's next checkpoint")
    reexec_with_fast_blas(["-m", "webapp", *sys.argv[1:]])  # it evaluates in this process
    engine = InferenceEngine(ModelRegistry(settings))
    try:
        running = _sweep(args, store, TrainingService(settings), engine, settings)
        spec = _run(running)
    except StudioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    finally:
        engine.close()
    return _report(spec, store, args.json)


def _sweep(args, store: SweepStore, training, engine, settings: Settings):
    from core.models.inspect import resolve_model
    from core.sweep import prepare

    if args.resume:
        return prepare.resume(store, training, engine, args.resume)
    if not args.model or not args.data or not args.vary:
        raise StudioError("sweep needs --model, --data and at least one --vary (or --resume ID)")
    return prepare.prepare(
        store,
        training,
        engine,
        model=str(resolve_model(args.model, settings.models)),
        data=dataset_file(args.data, settings.datasets),
        vary=args.vary,
        fixed=params_from_args(args),
        trials=args.trials,
        objective=args.objective,
        test_data=args.test_data,
        name=args.name,
        parallel=args.parallel,
        prune=not args.no_prune,
    )


def _run(running) -> SweepSpec:
    """Run it, saying what happens on stderr; Ctrl-C stops it (resumable)."""
    spec = running.spec
    print(f"sweep {spec.id}: {spec.trials} trials, {spec.objective}", file=sys.stderr)
    running.say = lambda sentence: print(sentence, file=sys.stderr, flush=True)
    previous = signal.signal(signal.SIGINT, lambda *_: running.halt())
    try:
        return running.run()
    finally:
        signal.signal(signal.SIGINT, previous)


def _report(spec: SweepSpec, store: SweepStore, as_json: bool) -> int:
    from core.sweep.results import summary

    found = summary(store, spec)
    if as_json:
        print(json.dumps(found, indent=2))
    else:
        print_table(found)
    if spec.state == "complete":
        return 0
    if spec.error:
        print(f"error: {spec.error}", file=sys.stderr)
        return EXIT_FAILED
    print(f"stopped: lora-studio sweep --resume {spec.id}", file=sys.stderr)
    return EXIT_CANCELLED


def print_table(found: dict) -> None:
    """The trials ranked, with their objective's interval; then what the numbers say."""
    table = Table(title=f"sweep {found['id']} ({found['state']}): {found['measured']}")
    for column in ("rank", "trial", "settings", found["objective"], "95% interval", "steps"):
        table.add_column(column)
    table.add_column("time")
    table.add_column("state")
    for t in found["trials"]:
        interval = f"[{t['low']:.4g}, {t['high']:.4g}]" if t["low"] is not None else "-"
        table.add_row(
            str(t["rank"] or "-"),
            str(t["number"]),
            words(t["settings"]),
            "-" if t["objective"] is None else f"{t['objective']:.4g}",
            interval,
            str(t["steps"] or "-"),
            "-" if t["seconds"] is None else f"{t['seconds']:.0f} s",
            t["state"] + (f": {t['note']}" if t["note"] else ""),
        )
    console = Console(width=160)
    console.print(table)
    for sentence in found["said"]:
        console.print(sentence)


def sweeps(args: argparse.Namespace) -> int:
    from core.sweep.results import summary

    settings = Settings.from_env().ensure()
    store = SweepStore(settings.sweeps)
    listed = [summary(store, spec, trials=False) for spec in store.list()]
    if args.json:
        print(json.dumps(listed, indent=2))
        return 0
    if not listed:
        print("no sweeps")
    for s in listed:
        best = s["best"]
        said = f"best {s['objective']} {best['objective']:.4g} ({best['adapter']})" if best else ""
        print(f"{s['id']}  {s['name'][:40]}  {s['state']}  {s['done']}/{s['trials_asked']}  {said}")
    return 0
