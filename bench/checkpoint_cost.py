"""What a checkpoint costs: time (against a training step of the same run) and disk.

On the demo model (SmolLM2-135M-Instruct, float32; `lora-studio models demo` gets it) with the
default LoRA (rank 8, q/k/v/o of the last 8 layers), after a few real training steps of batch 4 x
``--tokens`` tokens so that the optimizer's moments exist:
- the median time of a training step (the reference) and of ``core.train.checkpoints.save``;
- the bytes each checkpoint file takes;
- what that means per epoch of the pirate sample (56 steps, one checkpoint at its end).

    python bench/checkpoint_cost.py [--model PATH] [--repeat 5]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path
from statistics import median

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.timing import timed  # noqa: E402
from core.machine.blas_choice import reexec_with_fast_blas  # noqa: E402
from core.settings import Settings  # noqa: E402

DEMO_STEPS_PER_EPOCH = 56  # 224 training rows of the pirate sample, batch 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Settings.from_env().models / "smollm2-135m-instruct"
    parser.add_argument("--model", default=str(default))
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=64, help="tokens per row")
    args = parser.parse_args()
    reexec_with_fast_blas([str(Path(__file__).resolve()), *sys.argv[1:]])

    import mlx.core as mx
    import mlx.optimizers as optim
    from mlx_lm import load
    from mlx_lm.tuner.utils import linear_to_lora_layers

    from core.params import TrainingParams
    from core.train import checkpoints
    from core.train.checkpoints import TrainerState
    from core.train.loop import TrainingLoop
    from core.train.output import lora_parameters
    from core.train.schedule import Schedule

    model, _ = load(args.model)
    params = TrainingParams(rank=8, alpha=16)
    model.freeze()
    linear_to_lora_layers(model, params.lora_layers, lora_parameters(params))
    optimizer = optim.Adam(learning_rate=params.learning_rate)
    loop = TrainingLoop(
        model=model,
        optimizer=optimizer,
        train_set=None,
        valid_set=None,
        params=params,
        schedule=Schedule.for_run(params, DEMO_STEPS_PER_EPOCH),
        checkpoint_folder=Path(tempfile.mkdtemp(prefix="ckpt-bench-")),
        emit=lambda _: None,
        stop=None,
    )
    optimizer.init(model.trainable_parameters())
    step, state = loop.compiled_step()
    vocab = model.args.vocab_size
    batch = mx.random.randint(0, vocab, (4, args.tokens + 1))
    lengths = mx.array([[0, args.tokens]] * 4)

    def train_step():
        mx.eval(state, *step((batch, lengths), None, True))

    train_step()  # compile
    step_s = median(timed(train_step) for _ in range(args.repeat))
    save_s = []
    for i in range(args.repeat):
        loop.state = TrainerState(seed=0, step=i + 1)
        save_s.append(timed(loop.save))
    saved = checkpoints.latest(loop.checkpoint_folder)
    sizes = {p.name: p.stat().st_size for p in saved.iterdir()}
    total = sum(sizes.values())
    checkpoint_s = median(save_s)
    print(f"model: {args.model}")
    print(f"training step (batch 4 x {args.tokens}): {step_s * 1000:.0f} ms")
    print(f"checkpoint: {checkpoint_s * 1000:.1f} ms = {checkpoint_s / step_s:.3f} steps")
    for name, size in sorted(sizes.items()):
        print(f"  {name}: {size / 1e6:.2f} MB")
    print(
        f"  total: {total / 1e6:.2f} MB; at most 3 kept (last 2 + best): {3 * total / 1e6:.1f} MB"
    )
    per_epoch = checkpoint_s / (step_s * DEMO_STEPS_PER_EPOCH)
    print(f"one checkpoint per {DEMO_STEPS_PER_EPOCH}-step epoch: {100 * per_epoch:.2f}% of it")
    shutil.rmtree(loop.checkpoint_folder)


if __name__ == "__main__":
    main()
