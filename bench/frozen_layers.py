"""What keeping the frozen layers' outputs (``core.train.frozen``) gives: step and validation
times of the demo run with them kept and without, in the worker's own process setup.

The demo configuration (SmolLM2-135M-Instruct, LoRA rank 8 on q/k/v/o of the last 8 layers,
batch 4 of the pirate dataset). For each way, ``--epochs`` epochs of compiled steps as the
loop runs them (the batch, and its frozen outputs when kept, made inside the timed step),
then a validation over the whole validation set, its loss compiled as the loop compiles it
(``--uncompiled``: as before it was). Run it under the studio's BLAS::

    lora-studio doctor                     # the BLAS runs use
    LD_PRELOAD=... python bench/frozen_layers.py --model MODEL
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path
from statistics import mean

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
DEMO = Path("~/.local/share/lora-studio/models/smollm2-135m-instruct").expanduser()


def measure(
    model_path: Path, data: Path, epochs: int, kept: bool, compiled: bool, validation_rows: int
):
    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optim

    from bench.timing import timed
    from core.train.batches import sft_batches
    from core.train.frozen import frozen_loss
    from core.train.loss import choose_loss
    from core.train.worker import _load, _prepare, build_parser

    argv = ["--model", str(model_path), "--data", str(data), "--output", "/tmp/unused"]
    params, info, dataset = _prepare(build_parser().parse_args(argv))
    model, _, train_set, valid_set = _load(info, params, dataset)
    sets, width = (train_set, valid_set), params.max_seq_length
    if kept:
        loss, rows = frozen_loss(model, *sets, max_seq_length=width)
        batches = rows.batches
    else:
        loss, batches = choose_loss(model, *sets, max_seq_length=width), sft_batches
    optimizer = optim.Adam(learning_rate=params.learning_rate)
    state = [model.state, optimizer.state]
    value_and_grad = nn.value_and_grad(model, loss.fn)

    @partial(mx.compile, inputs=state, outputs=state)
    def step(*batch):
        (value, _), grad = value_and_grad(model, *batch)
        optimizer.update(model, grad)
        return value

    def epoch_steps(epoch: int) -> list[float]:
        made = batches(dataset=train_set, batch_size=4, max_seq_length=width, seed=epoch)
        return [timed(lambda: mx.eval(step(*next(made)))) for _ in range(len(train_set) // 4)]

    check = mx.compile(partial(loss.fn, model), inputs=[model.state])  # as the loop does

    def validate() -> None:
        model.eval()
        for batch in batches(dataset=valid_set, batch_size=validation_rows, max_seq_length=width):
            mx.eval(check(*batch) if compiled else loss.fn(model, *batch))
        model.train()

    first_validation = timed(validate)
    steps = [epoch_steps(epoch) for epoch in range(epochs)]
    return {"steps": steps, "first": first_validation, "validation": timed(validate)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEMO)
    parser.add_argument("--data", type=Path, help=".jsonl (default: the demo's pirate dataset)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--uncompiled", action="store_true", help="validate uncompiled")
    parser.add_argument("--validation-batch", type=int, default=4, help="rows per batch")
    args = parser.parse_args()
    from core.models.demo import write_sample_dataset

    data = args.data or write_sample_dataset(Path("/tmp"))
    print(
        "| frozen outputs | step, epoch 1 | step, later epochs | first validation | "
        "last validation | last validation in steps |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for kept in (False, True):
        found = measure(
            args.model, data, args.epochs, kept, not args.uncompiled, args.validation_batch
        )
        first = mean(found["steps"][0][4:])  # after the first compilations
        later = mean(t for epoch in found["steps"][1:] for t in epoch) if args.epochs > 1 else first
        print(
            f"| {'kept' if kept else 'computed at each step'} | {first:.3f} s | {later:.3f} s | "
            f"{found['first']:.1f} s | {found['validation']:.1f} s | "
            f"{found['validation'] / later:.1f} |"
        )


if __name__ == "__main__":
    main()
