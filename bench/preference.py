"""What keeping DPO's reference log-probabilities saves: a step with them kept, against a step
that would run the reference model as well (a forward pass of the same pairs, no gradients).

On the demo model (SmolLM2-135M-Instruct, float32; `lora-studio models demo` gets it) with the
default LoRA (rank 8, q/k/v/o of the last 8 layers) and the pirate preference set's rows, in
batches of ``--batch`` pairs (2 x batch sequences):
- the median time of a compiled DPO training step, the reference log-probabilities kept;
- the median time of the reference's forward pass over the same batch (what each step, and
  each validation batch, would add if the reference were not kept);
- the one-time pass over every row that keeping them costs instead, and the net saving over
  the demo job (3 epochs, a validation at each epoch's end and before training).

    python bench/preference.py [--model PATH] [--repeat 5] [--batch 4]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from statistics import median

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.timing import timed  # noqa: E402
from core.machine.blas_choice import reexec_with_fast_blas  # noqa: E402
from core.settings import Settings  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Settings.from_env().models / "smollm2-135m-instruct"
    parser.add_argument("--model", default=str(default))
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--batch", type=int, default=4, help="pairs per batch")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    reexec_with_fast_blas([str(Path(__file__).resolve()), *sys.argv[1:]])

    import mlx.core as mx
    import mlx.optimizers as optim
    from mlx_lm import load
    from mlx_lm.tuner.utils import linear_to_lora_layers

    from core.data.tokens import preference_rows as tokenized_rows
    from core.machine.blas import loaded_blas
    from core.machine.jit import cpu_name
    from core.models.demo import preference_rows
    from core.params import TrainingParams
    from core.train import preference
    from core.train.loop import TrainingLoop
    from core.train.output import lora_parameters
    from core.train.schedule import Schedule

    model, tokenizer = load(args.model)
    params = TrainingParams(rank=8, alpha=16, method="dpo", batch_size=args.batch)
    model.freeze()
    linear_to_lora_layers(model, params.lora_layers, lora_parameters(params))
    rows = preference_rows()
    train_rows, valid_rows = rows[: len(rows) * 4 // 5], rows[len(rows) * 4 // 5 :]
    train = preference.PreferenceSet(tokenized_rows(train_rows, tokenizer))
    valid = preference.PreferenceSet(tokenized_rows(valid_rows, tokenizer))
    loss, per_token = preference.choose_loss(model, params, train, valid)

    pass_s = timed(
        lambda: [
            setattr(
                rows,
                "reference",
                preference.reference_logps(
                    model, rows, per_token, batch_size=args.batch, max_seq_length=2048
                ),
            )
            for rows in (train, valid)
        ]
    )
    steps_per_epoch = len(train) // args.batch
    optimizer = optim.Adam(learning_rate=params.learning_rate)
    loop = TrainingLoop(
        model=model,
        optimizer=optimizer,
        train_set=train,
        valid_set=valid,
        params=params,
        schedule=Schedule.for_run(params, steps_per_epoch),
        checkpoint_folder=Path(tempfile.mkdtemp(prefix="pref-bench-")),
        emit=lambda _: None,
        stop=None,
        loss=loss,
        batches=preference.iterate_pairs,
    )
    optimizer.init(model.trainable_parameters())
    step, state = loop.compiled_step()
    batch = next(preference.iterate_pairs(train, args.batch, 2048, seed=0))

    def train_step():
        mx.eval(state, *step(batch, None, True))

    def reference_forward():
        mx.eval(preference.sequence_logps(per_token, batch[0], batch[1]))

    train_step()  # compile
    step_s = median(timed(train_step) for _ in range(args.repeat))
    forward_s = median(timed(reference_forward) for _ in range(args.repeat))
    validation_batches = (len(valid) // args.batch) * (args.epochs + 1)
    passes = steps_per_epoch * args.epochs + validation_batches
    print(f"CPU: {cpu_name()}; BLAS: {loaded_blas()}; model: {args.model}")
    print(f"pairs: {len(train)} train, {len(valid)} validation; batch {args.batch} pairs")
    print(f"DPO step, reference kept:      {step_s * 1000:.0f} ms")
    print(f"reference forward, same batch: {forward_s * 1000:.0f} ms ({forward_s / step_s:.0%})")
    print(f"one-time reference pass over every row: {pass_s:.1f} s")
    saved = passes * forward_s - pass_s
    print(
        f"{args.epochs} epochs ({passes} batches with validations): a reference run at each "
        f"would add {passes * forward_s:.0f} s; kept, it costs {pass_s:.0f} s once: "
        f"{saved:.0f} s saved"
    )


if __name__ == "__main__":
    main()
