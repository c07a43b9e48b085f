"""Data-parallel training on one machine: 1 process x N BLAS threads vs N ranks x 1 thread.

Both runs train the same model on the same rows with the same global batch through the
studio's service (the 2-rank run through ``mlx.launch --backend ring`` over 127.0.0.1), and
report trained tokens/s (summed over ranks), the median over reports after the first (which
includes compilation). Then the cost of the communication: an all-reduce of as many float32
values as the run has LoRA parameters (what each optimizer step sends), timed between 2
ranks, so a reader can predict other links with the scaling model in docs/distributed.md.

    python bench/distributed.py                       # the demo model if present, else toy
    python bench/distributed.py --model PATH --rows 96
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / ".pytest_cache/d/demo-models/smollm2-135m-instruct"


def train(model: Path, data: Path, home: Path, processes: int) -> dict:
    from core import protocol
    from core.machine.launch import Launch
    from core.params import TrainingParams
    from core.settings import Settings
    from core.train.service import TrainingService

    service = TrainingService(Settings.from_env(home))
    params = TrainingParams(epochs=1, batch_size=4, save_every=10_000, eval_every=10_000)
    run = service.start(model, data, params, launch=Launch(processes=processes))
    events = list(run.follow(timeout=3600))
    if not isinstance(events[-1], protocol.Complete):
        raise SystemExit(f"the run failed: {events[-1]}")
    speeds = [e.tokens_per_second for e in events if isinstance(e, protocol.Progress)]
    start = next(e for e in events if isinstance(e, protocol.Start))
    return {
        "tokens_per_second": median(speeds[1:] or speeds),
        "trainable": start.trainable_params,
        "steps": start.total_steps,
        "seconds": run.elapsed,
    }


def allreduce_rank(values: int, repeats: int) -> None:
    """One rank of the all-reduce timing (run under mlx.launch)."""
    import mlx.core as mx

    group = mx.distributed.init()
    grads = mx.random.normal((values,))
    mx.eval(mx.distributed.all_sum(grads, stream=mx.cpu))  # connect, warm up
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        mx.eval(mx.distributed.all_sum(grads, stream=mx.cpu))
        times.append(time.perf_counter() - tic)
    if group.rank() == 0:
        print(json.dumps({"seconds": median(times), "bytes": values * 4}))


def allreduce(values: int, repeats: int = 50) -> dict:
    from core.machine.launch import free_port, launcher

    command = [str(launcher()), "--backend", "ring", "-n", "2", "--starting-port"]
    command += [str(free_port()), sys.executable, __file__, "--allreduce-rank", str(values)]
    command += ["--repeats", str(repeats)]
    done = subprocess.run(command, capture_output=True, text=True, check=True, cwd=REPO)
    return json.loads(done.stdout.strip().splitlines()[-1])


def subset(source: Path, rows: int, folder: Path) -> Path:
    lines = source.read_text().splitlines()[:rows]
    target = folder / f"{source.stem}-{rows}.jsonl"
    target.write_text("\n".join(lines) + "\n")
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="base model (default: the demo model)")
    parser.add_argument("--data", type=Path, help=".jsonl (default: the demo's pirate dataset)")
    parser.add_argument("--rows", type=int, default=200, help="rows of the dataset to use")
    parser.add_argument("--allreduce-rank", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=50, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.allreduce_rank:
        return allreduce_rank(args.allreduce_rank, args.repeats)
    from core.models.demo import write_sample_dataset

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or DEMO
        rows = subset(args.data or write_sample_dataset(Path(tmp)), args.rows, Path(tmp))
        one = train(model, rows, Path(tmp) / "one", 1)
        two = train(model, rows, Path(tmp) / "two", 2)
    cores = os.cpu_count()
    ratio = two["tokens_per_second"] / one["tokens_per_second"]
    print(f"model {model.name}, {args.rows} rows, batch 4, {one['steps']} steps, {cores} cores")
    print("| run | trained tok/s | vs 1 process |\n| --- | --- | --- |")
    print(f"| 1 process x {cores} BLAS threads | {one['tokens_per_second']:.0f} | 1.00 |")
    print(
        f"| 2 ranks x {max(1, cores // 2)} thread(s), ring over 127.0.0.1 | "
        f"{two['tokens_per_second']:.0f} | {ratio:.2f} |",
        flush=True,
    )
    step = one["seconds"] / one["steps"]
    for values in (one["trainable"], 10 * one["trainable"], 100 * one["trainable"]):
        comm = allreduce(values)
        print(
            f"all-reduce of {values:,} float32 ({comm['bytes'] / 1e6:.1f} MB) between 2 ranks "
            f"on loopback: {comm['seconds'] * 1e3:.2f} ms "
            f"({comm['bytes'] / comm['seconds'] / 1e9:.2f} GB/s)"
        )
    print(f"a 1-process step (wall, validation included): {step:.2f} s")


if __name__ == "__main__":
    main()
