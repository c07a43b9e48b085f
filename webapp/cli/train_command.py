"""``lora-studio train`` and ``lora-studio runs``: training from the shell (the run's events
shown by ``webapp.cli.progress``)."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from core import protocol
from core.adapters.layout import TEST_FILE
from core.data.imports import dataset_file
from core.data.leaks import said
from core.errors import StudioError
from core.models.inspect import resolve_model
from core.models.quantize import cpu_slowdown_warning
from core.params import add_arguments, params_from_args
from core.settings import Settings
from webapp.cli.hosts_command import add_launch_arguments, launch_from_args
from webapp.cli.progress import ProgressBar

EXIT_FAILED, EXIT_REFUSED, EXIT_CANCELLED = 1, 2, 130


def ask_to_stop(store, what: str, item_id: str, when: str) -> int:
    """``--stop ID``: ask the process running an evaluation or a sweep to stop it (a ``stop``
    file its store has it look for)."""
    try:
        asked = store.request_stop(item_id)
    except StudioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    if not asked:
        print(f"{what} {item_id} is not running", file=sys.stderr)
        return EXIT_REFUSED
    print(f"{what} {item_id} stops {when}")
    return 0


def add_parsers(commands) -> None:
    """``train`` and ``runs``."""
    train = commands.add_parser("train", help="train a LoRA adapter from the shell")
    train.add_argument("--model", help="base model folder, or a model name in the models folder")
    train.add_argument("--data", help=".jsonl file, or a folder with train.jsonl (+ valid.jsonl)")
    train.add_argument("--name", help="adapter name (default: 'Trained on <dataset>')")
    train.add_argument(
        "--resume",
        metavar="RUN_ID",
        help="continue a stopped or interrupted run from its last checkpoint (see `runs`)",
    )
    train.add_argument(
        "--force", action="store_true", help="start even when the memory plan says it won't fit"
    )
    train.add_argument(
        "--test-data",
        metavar="FILE",
        help="held-out rows (.jsonl) to evaluate the adapter on, against its base, once "
        "published (or --test-split)",
    )
    add_arguments(train)
    add_launch_arguments(train)
    plan = commands.add_parser(
        "plan", help="the memory a run would need, against what this machine has (no training)"
    )
    plan.add_argument("--model", required=True, help="base model folder, or a model name")
    plan.add_argument("--data", required=True, help=".jsonl file, or a folder with train.jsonl")
    plan.add_argument("--json", action="store_true", help="print one JSON object")
    add_arguments(plan)
    add_launch_arguments(plan)
    runs = commands.add_parser("runs", help="unfinished runs: list, discard, publish")
    runs.add_argument("--json", action="store_true", help="print a JSON list")
    runs_commands = runs.add_subparsers(dest="runs_command")
    discard = runs_commands.add_parser("discard", help="delete a run and its checkpoints")
    discard.add_argument("run_id")
    publish = runs_commands.add_parser(
        "publish", help="publish a run whose training finished but whose publishing failed"
    )
    publish.add_argument("run_id")


def train(args: argparse.Namespace) -> int:
    from core.machine.blas_choice import reexec_with_fast_blas
    from core.train.service import TrainingService

    if args.test_data or args.test_split not in (None, "0", "0.0") or args.resume:
        # the adapter will be evaluated in this process: generation wants the fast BLAS
        reexec_with_fast_blas(["-m", "webapp", *sys.argv[1:]])
    settings = Settings.from_env()
    try:
        service = TrainingService(settings)
        run = _start_or_resume(service, args, settings)
    except StudioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    try:
        return follow_run(run, service, settings)
    finally:
        if not run.done:  # whatever ended this command, the worker must not train on unwatched
            run.stop()
            run.wait()


def _start_or_resume(service, args: argparse.Namespace, settings: Settings):
    if args.resume:
        return service.resume(args.resume)
    if not args.model or not args.data:
        raise StudioError("train needs --model and --data (or --resume RUN_ID)")
    params = params_from_args(args)
    model = resolve_model(args.model, settings.models)
    launch = launch_from_args(args, settings)
    return service.start(
        model,
        dataset_file(args.data, settings.datasets),
        params,
        name=args.name,
        launch=launch,
        force=args.force,
        test_data=args.test_data,
    )


def plan(args: argparse.Namespace) -> int:
    """Print the run's memory plan; exit 0 whether it fits or not (``fits`` says which)."""
    from core.train.service import TrainingService

    settings = Settings.from_env()
    try:
        service = TrainingService(settings)
        launch = launch_from_args(args, settings)
        model = resolve_model(args.model, settings.models)
        data = dataset_file(args.data, settings.datasets)
        info, params, dataset = service.check(model, data, params_from_args(args), launch=launch)
        memory = service.plan(info, params, dataset, launch)
    except StudioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    if args.json:
        print(json.dumps(memory.to_json()))
    else:
        print(describe_plan(memory, info))
    return 0


def describe_plan(memory, info) -> str:
    """The plan's parts, its verdict, and the changes that lower it."""
    parts = memory.estimate
    lines = [
        f"memory plan for {info.id}: longest example {memory.data.longest} tokens, "
        f"loss window {memory.data.window}",
        f"  base weights          {parts.weights_gb:6.2f} GB",
        f"  trained, grads, Adam  {parts.trained_gb:6.2f} GB",
        f"  activations           {parts.activations_gb:6.2f} GB",
        f"  loss (logits)         {parts.loss_gb:6.2f} GB",
        f"  dataset (rows, tokens){parts.data_gb:6.2f} GB",
        f"  runtime               {parts.runtime_gb:6.2f} GB",
        f"{memory.summary()}: " + ("fits" if memory.fits else "too much"),
    ]
    heading = "lower it with:" if memory.fits else "what would make it fit:"
    return "\n".join([*lines, heading, *(f"  {line}" for line in memory.advice())])


def follow_run(run, service, settings: Settings) -> int:
    """Print the run's progress until it ends; Ctrl-C stops it (resumable)."""
    print(describe_start(run, service.blas.hint, settings))
    print(describe_tokens(run))
    bar = ProgressBar()
    try:
        for event in run.follow():
            bar.show(event)
    except KeyboardInterrupt:
        print("\nstopping after a checkpoint...", file=sys.stderr)
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must wait
        run.stop()
        run.wait()
        signal.signal(signal.SIGINT, previous)
    bar.close()
    final = run.last_event
    if isinstance(final, protocol.Complete):
        kept = f" (kept the {final.kept} step, {final.kept_step})" if final.kept == "best" else ""
        early = f"; stopped early at step {final.steps}" if final.stopped_early else ""
        what = "model" if final.model_id else "adapter"
        print(f"{what} saved to {final.adapter_path}{kept}{early}")
        print(f"model id: {final.published_id}")
        return evaluate_test_rows(settings, final)
    assert isinstance(final, protocol.Error)
    print(f"error: {final.error}", file=sys.stderr)
    if final.hint:
        print(f"  hint: {final.hint}", file=sys.stderr)
    return EXIT_CANCELLED if final.kind == "cancelled" else EXIT_FAILED


def evaluate_test_rows(settings: Settings, final: protocol.Complete) -> int:
    """The published adapter (or model) against its base on the run's test rows, if it
    kept any."""
    from core.eval.runner import evaluate_published
    from core.eval.store import EvalStore
    from core.serve.engine import InferenceEngine
    from core.serve.registry import ModelRegistry
    from webapp.cli.eval_command import print_table

    if not (Path(final.adapter_path) / TEST_FILE).is_file():
        return 0
    what = "model" if final.model_id else "adapter"
    print(f"evaluating the {what} against its base on the run's test rows...", file=sys.stderr)
    engine = InferenceEngine(ModelRegistry(settings))
    try:
        spec = evaluate_published(EvalStore(settings.evals), engine, final.published_id)
    except StudioError as exc:
        print(f"error: the test evaluation failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        engine.close()
    if spec.state != "complete":
        print(f"error: the test evaluation stopped: {spec.error}", file=sys.stderr)
        return EXIT_FAILED
    print_table({**spec.summary, "id": spec.id, "path": str(settings.evals / spec.id)})
    return 0


def runs(args: argparse.Namespace) -> int:
    """List unfinished runs, or discard or publish one."""
    from core.train.service import TrainingService

    service = TrainingService(Settings.from_env())
    try:
        if args.runs_command == "discard":
            service.runs.discard(args.run_id)
            print(f"discarded run {args.run_id}")
        elif args.runs_command == "publish":
            final = service.publish_again(args.run_id)
            print(f"saved to {final.adapter_path}\nmodel id: {final.published_id}")
        else:
            print_runs(service.list_runs(), as_json=args.json)
    except StudioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    return 0


def print_runs(records, as_json: bool) -> None:
    if as_json:
        rows = [
            {
                "id": r.id,
                "name": r.name,
                "base": r.model_id,
                "state": r.state,
                "step": r.step,
                "total_steps": r.total_steps,
                "checkpoint_step": r.checkpoint_step,
                "best_validation_loss": r.best_validation_loss,
                "error": r.error,
                "pruned": r.pruned,
            }
            for r in records
        ]
        print(json.dumps(rows, indent=2))
        return
    if not records:
        print("no unfinished runs")
        return
    header = ("id", "name", "base", "state", "step", "checkpoint", "best val")
    table = [header] + [
        (
            r.id,
            r.name[:40],
            r.model_id,
            r.state + (" (pruned by a sweep)" if r.pruned else ""),
            f"{r.step}/{r.total_steps or '?'}",
            "-" if r.checkpoint_step is None else f"step {r.checkpoint_step}",
            "-" if r.best_validation_loss is None else f"{r.best_validation_loss:.3f}",
        )
        for r in records
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


def describe_start(run, blas_hint: str | None, settings: Settings) -> str:
    p = run.params
    lines = [
        f"studio: {settings.home}",
        f"base model: {run.model.id} ({run.model.parameter_count / 1e6:.1f}M parameters, "
        f"{run.model.num_layers} layers)",
        f"dataset: {run.dataset.name}, {run.dataset.format} format, "
        f"{run.dataset.train_count} train / {run.dataset.valid_count} validation examples",
        (
            "full fine-tuning: "
            if p.fine_tune_type == "full"
            else f"{p.fine_tune_type.upper() if p.fine_tune_type == 'dora' else 'LoRA'}: "
            f"rank {p.rank}, alpha {p.alpha:g}, "
        )
        + f"layers {p.lora_layers}, lr {p.learning_rate:g}, {p.epochs} epoch(s), "
        f"batch {p.batch_size}",
    ]
    if run.memory is not None:
        lines.append(f"memory: {run.memory.summary()}")
    if p.report_to:
        lines.append(f"reporting to: {', '.join(p.report_to)} (see the README's Trackers)")
    if run.record.leaked_test_rows:
        leaks = said(run.record.leaked_test_rows, "the test rows", "the training rows")
        lines.append(f"warning: {leaks}: the test evaluation will flatter the adapter")
    if blas_hint:
        lines.append(f"note: {blas_hint}")
    slowdown = cpu_slowdown_warning(run.model)
    if slowdown:
        lines.append(f"warning: {slowdown}")
    return "\n".join(lines)


def describe_tokens(run) -> str:
    """Token statistics with the base model's tokenizer (computed while the worker loads)."""
    from core.data.tokens import token_statistics
    from core.models.inspect import tokenizer

    rows = run.dataset.sample
    tokens = run.dataset.sample_tokens(tokenizer(run.model.path), run.params.mask_prompt)
    stats = token_statistics(tokens, max_seq_length=run.params.max_seq_length)
    if run.dataset.format == "prompts":  # GRPO's answers are drawn while it trains
        return (
            f"tokens per prompt: min {stats.min_tokens}, median {stats.median_tokens:g}, "
            f"max {stats.max_tokens}; answers of up to {run.params.max_completion_tokens} "
            f"tokens, {run.params.group_size} per prompt"
        )
    text = (
        f"tokens per example: min {stats.min_tokens}, median {stats.median_tokens:g}, "
        f"max {stats.max_tokens}; {stats.trained_tokens:,} tokens trained on per epoch"
    )
    if run.dataset.total > len(rows):
        text += f" (of the first {len(rows):,} examples)"
    if stats.over_max_length:
        text += (
            f"\nwarning: {stats.over_max_length} example(s) exceed max_seq_length "
            f"{run.params.max_seq_length} and will be truncated"
        )
    return text
