"""The training process: mlx-lm LoRA training that speaks the JSON-lines protocol.

Run as ``python -m core.worker`` (the service does this) or ``scripts/train_lora.py``. Stdout
carries protocol lines only: at start-up the real stdout is set aside for them and everything
else that writes to stdout, rich consoles and C libraries included, is sent to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import TextIO

from . import protocol
from .blas import loaded_blas
from .datasets import Dataset, DatasetError, load_dataset
from .errors import StudioError
from .models import ModelInfo, inspect_model
from .params import TrainingParams, add_arguments, params_from_args

log = logging.getLogger("lora_studio.worker")


class Cancelled(Exception):
    """Raised at a step boundary once SIGTERM has arrived."""


class WorkerError(StudioError):
    """A StudioError with the protocol's error kind attached."""

    def __init__(self, kind: protocol.ErrorKind, message: str, hint: str | None = None):
        super().__init__(message, hint)
        self.kind = kind


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="train_lora.py",
        description="Train a LoRA adapter with mlx-lm. Prints one JSON object per line on "
        "stdout (start, progress, validation, checkpoint, complete, error); logs go to stderr.",
    )
    parser.add_argument("--model", required=True, help="base model folder (MLX layout)")
    parser.add_argument(
        "--data", required=True, help=".jsonl file, or a folder with train.jsonl (+ valid.jsonl)"
    )
    parser.add_argument("--output", required=True, help="folder for the adapter files")
    add_arguments(parser)
    return parser


class _QuietUI:
    """Stands in for mlx-lm's TrainUI, whose rich progress display we do not want."""

    def __init__(self, *args, **kwargs):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def advance(self):
        pass

    def report_train(self, *args):
        pass

    @contextlib.contextmanager
    def val_task(self, total):
        yield lambda: None

    def report_val(self, *args):
        pass

    def report_save(self, *args):
        pass


def report_interval(steps_per_epoch: int, target: int = 10) -> int:
    """Steps between progress lines: the largest divisor of an epoch up to ``target``, so
    every epoch ends on a report (where validation runs)."""
    return max(d for d in range(1, min(target, steps_per_epoch) + 1) if steps_per_epoch % d == 0)


def adapter_config(params: TrainingParams, info: ModelInfo) -> dict:
    """adapter_config.json in mlx-lm's format (what ``mlx_lm.load(adapter_path=)`` reads),
    plus the base model it was trained on."""
    return {
        "fine_tune_type": "lora",
        "num_layers": params.lora_layers,
        "lora_parameters": {
            "rank": params.rank,
            "scale": params.scale,
            "dropout": params.dropout,
            "keys": params.keys,
        },
        "model": str(info.path),
        "base_model_id": info.id,
        "max_seq_length": params.max_seq_length,
        "mask_prompt": params.mask_prompt,
        "seed": params.seed,
    }


def _prepare(args: argparse.Namespace) -> tuple[TrainingParams, ModelInfo, Dataset]:
    params = params_from_args(args)
    try:
        info = inspect_model(args.model)
    except StudioError as exc:
        raise WorkerError("model", exc.message, exc.hint) from None
    params = params.for_model(info)
    dataset = load_dataset(
        args.data,
        batch_size=params.batch_size,
        validation_split=params.validation_split,
        seed=params.seed,
    )
    return params, info, dataset


def train(
    args: argparse.Namespace,
    emit: Callable[[protocol._Message], None],
    cancel: threading.Event,
) -> None:
    """Validate, load, wrap in LoRA, train with mlx-lm's trainer, save; emitting events."""
    params, info, dataset = _prepare(args)

    import mlx.core as mx
    import mlx.optimizers as optim
    import numpy as np
    from mlx.utils import tree_flatten
    from mlx_lm import load
    from mlx_lm.tuner import trainer
    from mlx_lm.tuner.datasets import CacheDataset, create_dataset
    from mlx_lm.tuner.lora import LoRALinear
    from mlx_lm.tuner.utils import linear_to_lora_layers

    try:
        model, tokenizer = load(str(info.path))
    except Exception as exc:  # noqa: BLE001 - any load failure is the model's problem
        raise WorkerError("model", f"mlx-lm could not load {info.path}: {exc}") from exc

    mx.random.seed(params.seed)
    np.random.seed(params.seed)
    model.freeze()
    linear_to_lora_layers(
        model,
        params.lora_layers,
        {
            "rank": params.rank,
            "scale": params.scale,
            "dropout": params.dropout,
            "keys": params.keys,
        },
    )
    config = SimpleNamespace(mask_prompt=params.mask_prompt and dataset.format != "text")
    train_set = CacheDataset(create_dataset(dataset.train, tokenizer, config))
    valid_set = CacheDataset(create_dataset(dataset.valid, tokenizer, config))

    steps_per_epoch = len(train_set) // params.batch_size
    total_steps = steps_per_epoch * params.epochs
    emit(
        protocol.Start(
            total_steps=total_steps,
            epochs=params.epochs,
            steps_per_epoch=steps_per_epoch,
            num_train=len(train_set),
            num_val=len(valid_set),
            trainable_params=sum(v.size for _, v in tree_flatten(model.trainable_parameters())),
            total_params=sum(v.size for _, v in tree_flatten(model.parameters())),
            lora_modules=sum(isinstance(m, LoRALinear) for m in model.modules()),
            blas=loaded_blas(),
        )
    )

    def batches(**kwargs):
        for batch in trainer.iterate_batches(**kwargs):
            if cancel.is_set():
                raise Cancelled
            yield batch

    def validate(step: int) -> None:
        loss = trainer.evaluate(
            model,
            valid_set,
            batch_size=min(params.batch_size, len(valid_set)),
            num_batches=-1,
            max_seq_length=params.max_seq_length,
            iterate_batches=batches,
        )
        model.train()
        emit(protocol.Validation(step=step, epoch=step // steps_per_epoch, loss=loss))

    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    adapter_file = output / "adapters.safetensors"
    last_loss = float("nan")

    class Reporter(trainer.TrainingCallback):
        def on_train_loss_report(self, info: dict) -> None:
            nonlocal last_loss
            step, last_loss = info["iteration"], info["train_loss"]
            emit(
                protocol.Progress(
                    step=step,
                    total_steps=total_steps,
                    epoch=(step - 1) // steps_per_epoch + 1,
                    loss=last_loss,
                    learning_rate=info["learning_rate"],
                    tokens_per_second=info["tokens_per_second"],
                    peak_memory_gb=info["peak_memory"],
                    progress=100.0 * step / total_steps,
                )
            )
            if step % steps_per_epoch == 0:
                validate(step)
                if step < total_steps:  # the trainer itself saves after the last step
                    weights = dict(tree_flatten(model.trainable_parameters()))
                    mx.save_safetensors(str(adapter_file), weights)
                    emit(protocol.Checkpoint(step=step, path=str(adapter_file)))

    if cancel.is_set():
        raise Cancelled
    validate(0)
    trainer.TrainUI = _QuietUI
    trainer.train(
        model=model,
        optimizer=optim.Adam(learning_rate=params.learning_rate),
        train_dataset=train_set,
        val_dataset=None,  # validation runs at epoch ends, from the callback
        args=trainer.TrainingArgs(
            batch_size=params.batch_size,
            iters=total_steps,
            steps_per_report=report_interval(steps_per_epoch),
            steps_per_save=total_steps + 1,
            adapter_file=str(adapter_file),
            max_seq_length=params.max_seq_length,
        ),
        iterate_batches=batches,
        training_callback=Reporter(),
    )
    (output / "adapter_config.json").write_text(json.dumps(adapter_config(params, info), indent=2))
    emit(protocol.Complete(adapter_path=str(output), steps=total_steps, final_loss=last_loss))


def error_message(exc: BaseException) -> protocol.Error:
    """The protocol's error line for whatever stopped the run."""
    if isinstance(exc, Cancelled):
        return protocol.Error(error="training cancelled", kind="cancelled")
    if isinstance(exc, DatasetError):
        first = exc.problems[0]
        return protocol.Error(
            error=exc.message, kind="dataset", hint=exc.hint, file=first.file, line=first.line
        )
    if isinstance(exc, WorkerError):
        return protocol.Error(error=exc.message, kind=exc.kind, hint=exc.hint)
    if isinstance(exc, StudioError):
        return protocol.Error(error=exc.message, kind="params", hint=exc.hint)
    text = str(exc)
    if isinstance(exc, MemoryError) or (
        isinstance(exc, RuntimeError) and ("allocate" in text or "memory" in text.lower())
    ):
        return protocol.Error(
            error=f"out of memory: {text}", kind="out_of_memory", hint=protocol.OOM_HINT
        )
    return protocol.Error(error=f"{type(exc).__name__}: {text}", kind="internal")


def _protocol_stream() -> TextIO:
    """Keep the real stdout for protocol lines; point fd 1 and sys.stdout at stderr."""
    sys.stdout.flush()
    stream = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return stream


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    out = _protocol_stream()

    def emit(message: protocol._Message) -> None:
        out.write(message.to_line())
        out.flush()

    cancel = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: cancel.set())
    started = time.monotonic()
    try:
        train(args, emit, cancel)
    except BaseException as exc:  # noqa: BLE001 - every failure becomes one error line
        if not isinstance(exc, (Cancelled, StudioError)):
            log.exception("training failed")
        emit(error_message(exc))
        return 130 if isinstance(exc, (Cancelled, KeyboardInterrupt)) else 1
    log.info("training finished in %.1f s", time.monotonic() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
