"""``lora-studio eval`` and ``lora-studio evals``: which model answers a held-out file best, by
reference metrics and by an LLM judge, with 95% intervals; and the evaluations kept."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from core.data.leaks import said
from core.errors import StudioError
from core.eval import runner
from core.eval.generation import Sampling
from core.eval.metrics import ANSWER_METRICS, METRICS, TOOL_METRICS, parse_metrics
from core.eval.store import EvalSpec, EvalStore
from core.eval.verdicts import sentences, verdicts
from core.judge import read_rubric
from core.settings import Settings
from webapp.cli.train_command import EXIT_REFUSED, ask_to_stop


def add_parsers(commands) -> None:
    evaluate = commands.add_parser(
        "eval",
        help="evaluate models (a base id, lora/<id>) on a held-out .jsonl: metrics, a judge",
    )
    evaluate.add_argument("models", nargs="*", metavar="MODEL", help="base id or lora/<id>")
    evaluate.add_argument("--data", help="the test file (.jsonl: prompt/completion, chat)")
    evaluate.add_argument(
        "--metrics",
        help=f"comma-separated, of {','.join(METRICS + TOOL_METRICS + ANSWER_METRICS)} "
        "(default: all that apply but answer_words, the answers' length in words; tool_call: "
        "a reference that calls tools, matched by name and arguments)",
    )
    evaluate.add_argument("--max-tokens", type=int, default=256, help="per answer (256)")
    evaluate.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default)")
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument(
        "--batch-size", type=int, default=8, help="rows generated together (1: one at a time)"
    )
    evaluate.add_argument("--judge", metavar="MODEL", help="a model of this studio as the judge")
    evaluate.add_argument("--judge-url", help="an OpenAI-compatible endpoint (…/v1) as judge")
    evaluate.add_argument("--judge-model", help="the judge's model name at --judge-url")
    evaluate.add_argument("--judge-key-env", metavar="VAR", help="env variable with its key")
    evaluate.add_argument("--rubric", metavar="FILE", help="the judge's scoring prompt")
    evaluate.add_argument(
        "--train-data",
        metavar="FILE",
        help="the training data (.jsonl or a dataset folder): test rows that nearly copy a "
        "training row are counted, with both lines",
    )
    evaluate.add_argument(
        "--exclude-leaked", action="store_true", help="with --train-data: leave those rows out"
    )
    evaluate.add_argument("--resume", metavar="ID", help="continue a stopped evaluation")
    evaluate.add_argument(
        "--stop", metavar="ID", help="stop a running evaluation (from any process) after its rows"
    )
    evaluate.add_argument("--json", action="store_true", help="print the result as JSON")
    listed = commands.add_parser("evals", help="list the evaluations kept")
    listed.add_argument("--json", action="store_true", help="print a JSON list")


def evals(args: argparse.Namespace) -> int:
    store = EvalStore(Settings.from_env().ensure().evals)
    specs = store.list()
    if args.json:  # "state" as a person is told it: "interrupted" for a run that died
        listed = [spec.model_dump(mode="json") | {"state": store.state(spec)} for spec in specs]
        print(json.dumps(listed, indent=2))
        return 0
    if not specs:
        print("no evaluations yet: lora-studio eval MODEL ... --data FILE")
    for spec in specs:
        print(
            f"{spec.id}  {spec.created_at[:16]}  {store.state(spec):<11} {spec.rows_done}/"
            f"{spec.rows_total} rows of {spec.data_name}  {', '.join(spec.models)}"
        )
    return 0


def evaluate(args: argparse.Namespace) -> int:
    from core.machine.blas_choice import reexec_with_fast_blas
    from core.serve.engine import InferenceEngine
    from core.serve.registry import ModelRegistry

    reexec_with_fast_blas(["-m", "webapp", *sys.argv[1:]])

    settings = Settings.from_env().ensure()
    store = EvalStore(settings.evals)
    if args.stop:
        return ask_to_stop(store, "evaluation", args.stop, "after the rows under way")
    engine = InferenceEngine(ModelRegistry(settings))
    try:
        try:
            spec = _run(_evaluation(args, store, engine))
        except StudioError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_REFUSED
    finally:
        engine.close()
    return _report(spec, store, args.json)


def _evaluation(args, store: EvalStore, engine) -> runner.Evaluation:
    if args.resume:
        return runner.resume(store, engine, args.resume)
    if not args.data:
        raise StudioError("--data FILE is required", hint="the held-out .jsonl to answer")
    sampling = Sampling(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        seed=args.seed,
        batch_size=args.batch_size,
    )
    if sampling.max_tokens < 1 or sampling.batch_size < 1 or sampling.temperature < 0:
        raise StudioError("--max-tokens and --batch-size must be >= 1, --temperature >= 0")
    if args.exclude_leaked and not args.train_data:
        raise StudioError("--exclude-leaked needs --train-data FILE: the rows to compare with")
    leaks = None
    if args.train_data:
        leaks = runner.leaks_against(args.data, Path(args.train_data), args.exclude_leaked)
    return runner.prepare(
        store,
        engine,
        list(args.models),
        args.data,
        metrics=parse_metrics(args.metrics),
        sampling=sampling,
        judge=_judge_config(args),
        leaks=leaks,
    )


def _judge_config(args) -> dict | None:
    if args.judge and args.judge_url:
        raise StudioError("--judge and --judge-url: choose one judge")
    rubric = read_rubric(args.rubric) if args.rubric else None
    if args.judge_url:
        if not args.judge_model:
            raise StudioError("--judge-url needs --judge-model NAME (the model it serves)")
        return {
            "kind": "url",
            "url": args.judge_url,
            "model": args.judge_model,
            "key_env": args.judge_key_env,
            "rubric": rubric,
        }
    if args.judge:
        return {"kind": "studio", "model": args.judge, "rubric": rubric}
    return None


def _run(evaluation: runner.Evaluation) -> EvalSpec:
    """Run it with a progress line on stderr; Ctrl-C stops it after the rows under way."""
    console = Console(file=sys.stderr, highlight=False)
    started, total = time.monotonic(), evaluation.spec.rows_total
    first = evaluation.spec.rows_done

    def progress(done: int, total: int) -> None:
        rate = (done - first) / max(time.monotonic() - started, 1e-9)
        eta = f", ETA {(total - done) / rate:.0f} s" if rate else ""
        console.print(f"rows {done}/{total} ({rate:.2f} rows/s{eta})", markup=False)

    evaluation.progress = progress
    previous = signal.signal(signal.SIGINT, lambda *_: evaluation.stop.set())
    console.print(
        f"evaluating {', '.join(evaluation.spec.models)} on {total} rows "
        f"(evaluation {evaluation.spec.id})",
        markup=False,
    )
    try:
        return evaluation.run()
    finally:
        signal.signal(signal.SIGINT, previous)


def _report(spec: EvalSpec, store: EvalStore, as_json: bool) -> int:
    path = str(store.folder / spec.id)
    if spec.state != "complete":
        why = f": {spec.error}" if spec.error else ""
        print(
            f"evaluation {spec.id} stopped after {spec.rows_done} of {spec.rows_total} rows"
            f"{why}\n  resume it: lora-studio eval --resume {spec.id}",
            file=sys.stderr,
        )
        return 1
    result = {**spec.summary, "id": spec.id, "path": path}
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)
    return 0


def print_table(result: dict) -> None:
    """A row per model, a column per metric (mean and 95% interval); the judge's counts."""
    console = Console(width=None if sys.stdout.isatty() else 200)
    names = list(dict.fromkeys(m for scores in result["metrics"].values() for m in scores))
    table = Table(title=f"{result['rows']} rows ({result['rows_with_reference']} with a reference)")
    table.add_column("model")
    for name in names:
        table.add_column(name, justify="right")
    for model, scores in result["metrics"].items():
        cells = [_cell(scores.get(name)) for name in names]
        table.add_row(model, *cells)
    console.print(table)
    for sentence in sentences(verdicts(result["models"], result["metrics"]), {}):
        console.print(sentence, markup=False)
    if leaked := result.get("leaked"):
        console.print(leaked_sentence(leaked), markup=False)
    judge = result.get("judge")
    if judge:
        for model, counts in judge["pairwise"].items():
            console.print(
                f"judge, {model} vs {counts['against']}: {counts['win']} win, {counts['tie']} "
                f"tie, {counts['loss']} loss, {counts['unparseable']} unparseable",
                markup=False,
            )
        for model, score in judge["scores"].items():
            console.print(
                f"judge's score of {model}: {_cell(score)} ({score['unparseable']} unparseable)",
                markup=False,
            )
    console.print(f"saved in {result['path']}", markup=False)


def _cell(stat: dict | None) -> str:
    if not stat or stat.get("n", 1) == 0:
        return "-"
    return f"{stat['mean']:.3g} [{stat['low']:.3g}, {stat['high']:.3g}]"


def leaked_sentence(leaked: dict) -> str:
    """How many test rows copy training rows, and whether the scores count them."""
    text = said(leaked["pairs"], "the test file", leaked["training"])
    if not leaked["pairs"]:
        return text
    if leaked["excluded"]:
        return f"{text}; left out of the scores"
    return f"{text}; counted in the scores (--exclude-leaked leaves them out)"
