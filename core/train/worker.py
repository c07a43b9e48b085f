"""The training process: LoRA training with mlx-lm's parts that speaks the JSON-lines protocol.

Run as ``python -m core.train.worker`` (the service does this) or ``scripts/train_lora.py``. Stdout
carries protocol lines only: at start-up the real stdout is set aside for them and everything
else that writes to stdout, rich consoles and C libraries included, is sent to stderr.

SIGTERM stops the run at the next step boundary, after a checkpoint of the last finished step,
so a stopped run resumes without losing work. With ``--stop-on-stdin-eof`` the same happens
when stdin says ``stop`` or closes: the service keeps a pipe open, so the worker never outlives
its studio.

Under ``mlx.launch`` (several ranks) only rank 0 prints protocol lines and writes files; the
other ranks log to stderr with a ``[rank N]`` prefix. A stop reaches every rank as a ``stop``
line, which mlx.launch copies to each rank's stdin. SIGTERM there is mlx.launch ending the
survivors of a failed rank: they may be waiting on the dead rank in an all-reduce, so they
exit at once; the run resumes from its last checkpoint.
"""

from __future__ import annotations

import argparse
import errno
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

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten
from mlx_lm.tuner.datasets import CacheDataset, create_dataset
from mlx_lm.tuner.dora import DoRALinear
from mlx_lm.tuner.lora import LoRALinear, LoRASwitchLinear
from mlx_lm.tuner.utils import linear_to_lora_layers
from mlx_lm.utils import maybe_set_recommended_wired_limit

from core import protocol
from core.data.check import DatasetError
from core.data.scan import Dataset, load_dataset
from core.data.tools import training_rows
from core.errors import StudioError
from core.machine.blas import loaded_blas
from core.models.inspect import ModelInfo, inspect_model
from core.models.loading import load_model
from core.params import TrainingParams, add_arguments, params_from_args
from core.train import checkpoints, grpo, preference, rewards
from core.train import output as output_files
from core.train.batches import longer_rows, sft_batches, validation_batch
from core.train.frozen import frozen_loss
from core.train.loop import Stopped, TrainingLoop
from core.train.loss import choose_loss
from core.train.phases import Phases
from core.train.samples import Sampler
from core.train.schedule import Schedule, learning_rate, lr_schedule

log = logging.getLogger("lora_studio.worker")
LORA_LAYERS = (LoRALinear, DoRALinear, LoRASwitchLinear)  # a mixture of experts' too


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
    parser.add_argument(
        "--checkpoints", help="folder for checkpoints (default: OUTPUT/checkpoints)"
    )
    parser.add_argument(
        "--resume", help="continue from this checkpoint (or the newest one in this folder)"
    )
    parser.add_argument(
        "--stop-on-stdin-eof",
        action="store_true",
        help="stop (after a checkpoint) when stdin says `stop` or closes (the parent has gone)",
    )
    parser.add_argument(
        "--parent-pid",
        type=int,
        help="stop (after a checkpoint) when this process has gone; checked by rank 0, for "
        "runs under mlx.launch, which does not pass on the end of stdin",
    )
    add_arguments(parser)
    return parser


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
        test_split=params.test_split,
    )
    params.check_data(dataset.format)
    params.check_steps(len(dataset.train) // params.batch_size)
    return params, info, dataset


def train(
    args: argparse.Namespace,
    emit: Callable[[protocol._Message], None],
    stop: threading.Event,
) -> None:
    """Validate, load, wrap in LoRA, run the training loop, write the adapter; emitting events."""
    clock = Phases()
    params, info, dataset = _prepare(args)
    clock.mark("data")
    model, tokenizer, train_set, valid_set = _load(info, params, dataset)
    clock.mark("model")
    steps_per_epoch = len(train_set) // params.batch_size
    schedule = Schedule.for_run(params, steps_per_epoch)
    sets = (train_set, valid_set)
    loss, batches, frozen = _objective(model, tokenizer, params, sets, emit, clock)
    output = Path(args.output)
    loop = TrainingLoop(
        model=model,
        optimizer=optim.Adam(learning_rate=learning_rate(params, steps_per_epoch)),
        train_set=train_set,
        valid_set=valid_set,
        params=params,
        schedule=schedule,
        checkpoint_folder=Path(args.checkpoints or output / "checkpoints"),
        emit=emit,
        stop=stop,
        loss=loss,
        batches=batches,
        sampler=_sampler(model, tokenizer, dataset, params, batches),
    )
    if args.resume:
        resumed = _checkpoint(Path(args.resume))
        loop.restore(resumed)
        _check_resumed_step(resumed, loop.state.step)
    emit(
        protocol.Start(
            total_steps=schedule.total_steps,
            epochs=params.epochs,
            steps_per_epoch=schedule.steps_per_epoch,
            num_train=len(train_set),
            num_val=len(valid_set),
            trainable_params=sum(v.size for _, v in tree_flatten(model.trainable_parameters())),
            total_params=sum(v.size for _, v in tree_flatten(model.parameters())),
            lora_modules=sum(isinstance(m, LORA_LAYERS) for m in model.modules()),
            blas=loaded_blas(),
            resumed_from=loop.state.step or None,
            ranks=loop.group.size(),
            loss=loss.name,
            frozen_layers=frozen,
            ready_seconds=clock.total(),
            phases=clock.phases,
            method=params.method,
            beta=None if params.method == "sft" else params.beta,
        )
    )
    loop.run()
    if loop.writes:
        config = output_files.adapter_config(params, info)
        config["lr_schedule"] = lr_schedule(params, steps_per_epoch)
        emit(output_files.write(loop, output, config, info, tokenizer))


def _objective(model, tokenizer, params: TrainingParams, sets: tuple, emit, clock: Phases):
    """The method's loss and batches, and how many frozen layers the batches carry the
    output of; for DPO, the reference pass too (before any checkpoint is loaded: the
    adapter still does nothing); for GRPO, the rewards and the rollouts."""
    if params.method == "grpo":
        scorer = rewards.scorer_for(params)
        loss, per_token = grpo.choose_loss(model, params, [r.name for r in scorer.rewards])
        clock.mark("loss")
        return loss, grpo.Rollouts(model, tokenizer, params, scorer, per_token, emit), 0
    if params.method == "sft":
        frozen = frozen_loss(model, *sets, max_seq_length=params.max_seq_length)
        if frozen is not None:
            clock.mark("loss")
            loss, rows = frozen
            return loss, rows.batches, rows.stack.first
        loss = choose_loss(model, *sets, max_seq_length=params.max_seq_length)
        clock.mark("loss")
        return loss, sft_batches, 0
    loss, per_token = preference.choose_loss(model, params, *sets)
    clock.mark("loss")
    if params.method == "dpo":
        batch_size = validation_batch(params.batch_size, len(sets[1]), 1)
        preference.add_reference(model, per_token, sets, params, batch_size, emit)
        clock.mark("reference")
    return loss, preference.iterate_pairs, 0


def _load(info: ModelInfo, params: TrainingParams, dataset: Dataset):
    """The base model with LoRA layers (seeded init), and the tokenized train/valid sets."""
    try:
        model, tokenizer = load_model(info.path)
    except Exception as exc:  # noqa: BLE001 - any load failure is the model's problem
        raise WorkerError("model", f"mlx-lm could not load {info.path}: {exc}") from exc
    maybe_set_recommended_wired_limit()
    mx.random.seed(params.seed)
    np.random.seed(params.seed)
    model.freeze()
    _make_trainable(model, params)
    return model, tokenizer, *_tokenized(dataset, tokenizer, params)


def _make_trainable(model, params: TrainingParams) -> None:
    """What the run trains, as mlx-lm's own ``train_model`` sets it: LoRA (or DoRA) layers
    in the last ``lora_layers`` layers, or for full fine-tuning those layers' own weights."""
    if params.fine_tune_type == "full":
        for layer in model.layers[-params.lora_layers if params.lora_layers > 0 else 0 :]:
            layer.unfreeze()
        return
    dora = params.fine_tune_type == "dora"
    config = output_files.lora_parameters(params)
    try:
        linear_to_lora_layers(model, params.lora_layers, config, use_dora=dora)
    except ValueError as exc:  # mlx-lm refuses DoRA on some layer types
        raise WorkerError("params", f"fine_tune_type = {params.fine_tune_type}: {exc}") from None


def _sampler(model, tokenizer, dataset: Dataset, params, batches) -> Sampler | None:
    if not params.samples:
        return None
    # a GRPO run's samples carry their reward
    score = batches.scorer.total if isinstance(batches, grpo.Rollouts) else None
    return Sampler(model, tokenizer, dataset.valid, params.samples, params.sample_tokens, score)


def _tokenized(dataset: Dataset, tokenizer, params: TrainingParams) -> tuple:
    """The train and validation sets as the loop takes them: mlx-lm's datasets, or the
    pairs of a preference set."""
    if dataset.format == "preference":
        return preference.tokenized(dataset, tokenizer, params.max_seq_length)
    if dataset.format == "prompts":
        return grpo.tokenized(dataset, tokenizer)
    config = SimpleNamespace(mask_prompt=params.mask_prompt and dataset.format != "text")
    # a tool-calling row trains each of its assistant turns (core.data.tools)
    train_set = CacheDataset(create_dataset(training_rows(dataset.train), tokenizer, config))
    valid_set = CacheDataset(create_dataset(training_rows(dataset.valid), tokenizer, config))
    _warn_when_cut(train_set, params.max_seq_length)
    return train_set, valid_set


def _warn_when_cut(train_set: CacheDataset, max_seq_length: int) -> None:
    """Say once how many rows are cut (mlx-lm warns at each batch; the studio's do not)."""
    if cut := longer_rows(train_set, max_seq_length):
        log.warning(
            "%d training row(s) are longer than %d tokens (the longest: %d) and are cut to "
            "that; raise --max-seq-length or split them to train on all of it",
            len(cut),
            max_seq_length,
            max(cut),
        )


def _checkpoint(path: Path) -> Path:
    """``--resume`` takes a checkpoint folder, or a folder of checkpoints (the newest). A
    checkpoint named by its step (what the studio passes every rank) must be here."""
    if (path / checkpoints.STATE_FILE).is_file():
        return path
    if checkpoints.step_of(path) is not None:
        raise WorkerError(
            "params",
            f"{_here()}the checkpoint to resume from, {path}, is not here",
            hint="copy the run's checkpoints folder to this host, or share the runs folder",
        )
    newest = checkpoints.latest(path)
    if newest is None:
        raise WorkerError("params", f"no checkpoint to resume from in {path}")
    return newest


def _check_resumed_step(path: Path, state_step: int) -> None:
    """A checkpoint named step-N holds step N, on every rank: a host with an older copy at
    that path would train on other weights than rank 0."""
    named = checkpoints.step_of(path)
    if named is not None and named != state_step:
        raise WorkerError(
            "params",
            f"{_here()}the checkpoint {path} holds step {state_step}, not {named}",
            hint="copy the run's checkpoints folder to this host again, then resume",
        )


def _here() -> str:
    group = mx.distributed.init()
    return f"rank {group.rank()}: " if group.size() > 1 else ""


def error_message(exc: BaseException) -> protocol.Error:
    """The protocol's error line for whatever stopped the run."""
    if isinstance(exc, Stopped):
        return protocol.Error(error="training stopped", kind="cancelled")
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
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        return protocol.Error(
            error=f"the disk is full: {text}",
            kind="disk_full",
            hint="free some disk space, then resume the run from its last checkpoint",
        )
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


def _stop_when_stdin_says(stop: threading.Event) -> None:
    def watch() -> None:
        # the raw descriptor, not sys.stdin: a buffered reader blocked in a daemon thread
        # aborts the interpreter at exit
        while chunk := os.read(0, 4096):
            if b"stop" in chunk:
                log.info("asked to stop; stopping after a checkpoint")
                break
        else:
            log.warning("stdin closed: the studio has gone; stopping after a checkpoint")
        stop.set()

    threading.Thread(target=watch, name="stdin-watch", daemon=True).start()


def _stop_when_gone(pid: int, stop: threading.Event, every: float = 2.0) -> None:
    def watch() -> None:
        while not stop.wait(every):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                log.warning("the studio (pid %s) has gone; stopping after a checkpoint", pid)
                stop.set()
            except PermissionError:
                pass  # alive, someone else's

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    group = mx.distributed.init()
    rank = group.rank() if group.size() > 1 else None
    prefix = f"[rank {rank}] " if rank is not None else ""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format=prefix + "%(message)s")
    out = _protocol_stream()

    def emit(message: protocol._Message) -> None:
        if rank:
            return  # rank 0 speaks for the run
        try:
            out.write(message.to_line())
            out.flush()
        except BrokenPipeError:
            stop.set()  # nobody reads the events any more: stop, keeping a checkpoint

    stop = threading.Event()
    if rank is None:
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    if args.stop_on_stdin_eof:
        _stop_when_stdin_says(stop)
    if args.parent_pid and not rank:
        _stop_when_gone(args.parent_pid, stop)
    started = time.monotonic()
    try:
        train(args, emit, stop)
    except BaseException as exc:  # noqa: BLE001 - every failure becomes one error line
        if not isinstance(exc, (Stopped, StudioError)):
            log.exception("training failed")
        emit(error_message(exc))
        if isinstance(exc, Stopped) and rank:
            return 0  # agreed by all ranks: mlx.launch must not end rank 0 mid-checkpoint
        return 130 if isinstance(exc, (Stopped, KeyboardInterrupt)) else 1
    log.info("training finished in %.1f s", time.monotonic() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
