"""LoRA training speed and memory: the studio vs PyTorch + PEFT, same CPU, same batches.

The demo configuration: SmolLM2-135M-Instruct float32, LoRA rank 8 (alpha 16) on q/k/v/o of the
last 8 layers, Adam 1e-4, batch 4 of the pirate dataset with prompts masked, ``--epochs``
epochs (the studio's default, 3). The batches are the studio's own (``core.train.batches``):
this script builds them once and the PyTorch side trains on the very same token ids and
padding, epoch after epoch in the studio's order.

Two figures:

- steps only (the default): each side's tokens/s over its training steps after the first
  report (the first includes compilation), everything a step needs counted (for the studio,
  making the batch and its frozen layers' outputs, ``core.train.frozen``); with each
  process's peak RSS;
- ``--job``: the whole job as a user waits for it, wall time from starting the process to
  its exit: for the studio ``lora-studio train`` with default settings but ``--epochs``
  (start-up, validation before and after, the samples after each, publishing); for PyTorch a
  script that loads the model, validates, trains, validates and saves the adapter.

Each side runs in its own process, alternating, ``--repeat`` times; medians are reported.
PyTorch is not a dependency of the studio: install it in a separate venv and name its Python
with ``--torch-python`` (nothing is installed by this script)::

    python3 -m venv /tmp/torch-venv
    /tmp/torch-venv/bin/pip install torch transformers peft     # CPU is enough
    python bench/vs_pytorch.py --torch-python /tmp/torch-venv/bin/python --threads 2
    python bench/vs_pytorch.py --torch-python /tmp/torch-venv/bin/python --threads 2 --job
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

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
DEMO = Path("~/.local/share/lora-studio/models/smollm2-135m-instruct").expanduser()
KEYS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"]
PARAMS = ["--rank", "8", "--alpha", "16", "--learning-rate", "1e-4"]
PARAMS += ["--batch-size", "4", "--lora-layers", "8", "--keys", ",".join(KEYS)]


def studio_batches(model: Path, data: Path, out: Path, epochs: int) -> int:
    """The batches the worker will train on, every epoch in order, and its validation
    batches (its own loading and batching code), saved; returns the training steps."""
    import numpy as np

    from core.train.batches import sft_batch, sft_order, validation_batch
    from core.train.worker import _load, _prepare, build_parser

    args = build_parser().parse_args(
        ["--model", str(model), "--data", str(data), "--output", str(out), *PARAMS]
    )
    params, info, dataset = _prepare(args)
    _, _, train_set, valid_set = _load(info, params, dataset)
    size = params.batch_size
    order = [b for e in range(epochs) for b in sft_order(train_set, size, params.seed + e)]
    checks = sft_order(valid_set, validation_batch(size, len(valid_set), 1))
    arrays = {}
    for prefix, dataset, batches in (("", train_set, order), ("v", valid_set, checks)):
        for i, indices in enumerate(batches):
            batch, lengths = sft_batch(dataset, indices, params.max_seq_length)
            arrays[f"{prefix}batch{i}"], arrays[f"{prefix}lengths{i}"] = (
                np.array(batch),
                np.array(lengths),
            )
    np.savez(out / "batches.npz", **arrays)
    return len(order)


def non_pad_tokens(batches: Path, first: int, last: int) -> int:
    """Non-pad tokens of steps ``first + 1 .. last`` (1-based): each row's length."""
    import numpy as np

    saved = np.load(batches)
    return int(sum(saved[f"lengths{i}"][:, 1].sum() for i in range(first, last)))


def run_studio(model: Path, data: Path, out: Path, batches: Path, env: dict, epochs: int):
    command = [sys.executable, "-m", "core.train.worker", "--model", str(model)]
    command += ["--data", str(data), "--epochs", str(epochs), "--samples", "0"]
    command += ["--output", str(out / "adapter"), "--save-every", "100000", *PARAMS]
    events, rss, _ = _run(command, env)
    progress = [e for e in events if e["type"] == "progress"]
    first, last = progress[0], progress[-1]
    seconds = last["train_seconds"] - first["train_seconds"]
    tokens = non_pad_tokens(batches, first["step"], last["step"])
    start = next(e for e in events if e["type"] == "start")
    return {"tokens_per_second": tokens / seconds, "peak_rss_mb": rss, "loss": start["loss"]}


def run_studio_job(model: Path, data: Path, out: Path, env: dict, epochs: int) -> dict:
    """``lora-studio train`` as a user runs it (its own BLAS choice), in a studio of its own."""
    command = [str(Path(sys.executable).parent / "lora-studio"), "train", "--model", str(model)]
    command += ["--data", str(data), "--epochs", str(epochs)]
    home = out / f"studio-{time.monotonic_ns()}"
    _, rss, seconds = _run(command, env | {"LORA_STUDIO_HOME": str(home)})
    lines = next(home.glob("adapters/*/events.jsonl")).read_text().splitlines()
    events = [json.loads(line) for line in lines]
    checks = [e for e in events if e["type"] == "validation"]
    last = [e for e in events if e["type"] == "progress"][-1]
    step = last["train_seconds"] / last["step"]  # the mean step, its batches made included
    return {
        "seconds": seconds,
        "peak_rss_mb": rss,
        "losses": [c["loss"] for c in checks],
        "final_validation_steps": checks[-1]["seconds"] / step,
    }


def studio_env(env: dict, blas) -> dict:
    """What the studio gives its training process: the BLAS, the native JIT."""
    from core.machine.blas import with_blas
    from core.machine.jit import native_jit

    return native_jit(with_blas(env, blas))


def run_torch(python: str, model: Path, batches: Path, env: dict, skip: int, job: bool):
    command = [python, __file__, "--torch-side", str(batches), "--model", str(model)]
    command += ["--skip", str(skip), *(["--job"] if job else [])]
    events, rss, seconds = _run(command, env)
    return events[-1] | {"peak_rss_mb": rss, "seconds": seconds}


def _run(command: list[str], env: dict) -> tuple[list[dict], float, float]:
    """Run a side; its JSON lines, its own peak RSS in MB (from wait4) and its wall time."""
    tic = time.perf_counter()
    process = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE, text=True)
    out = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - tic
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{command[0]} failed:\n{out[-2000:]}")
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return events, usage.ru_maxrss / 1024, seconds


def torch_side(batches: Path, model: Path, skip: int, job: bool) -> None:
    """Train PyTorch + PEFT on the saved batches; print one JSON line with the tok/s of the
    steps after the first ``skip`` (those the studio's first report covers). A ``job``
    validates before and after, and saves the adapter, as the studio's job does."""
    import numpy as np
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(model, torch_dtype=torch.float32)
    layers = base.config.num_hidden_layers
    config = LoraConfig(
        r=8,
        lora_alpha=16,
        lora_dropout=0.0,
        target_modules=[k.split(".")[-1] for k in KEYS],
        layers_to_transform=list(range(layers - 8, layers)),
    )
    peft_model = get_peft_model(base, config)
    saved = np.load(batches)

    def batch(prefix: str, i: int):
        tokens = torch.from_numpy(saved[f"{prefix}batch{i}"]).long()
        lengths = torch.from_numpy(saved[f"{prefix}lengths{i}"]).long()
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        position = torch.arange(1, targets.shape[1] + 1)
        mask = (position >= lengths[:, 0:1]) & (position <= lengths[:, 1:])
        logits = peft_model(input_ids=inputs).logits
        ce = torch.nn.functional.cross_entropy(
            logits.flatten(0, 1), targets.flatten(), reduction="none"
        )
        return (ce * mask.flatten()).sum(), mask.sum(), int(lengths[:, 1].sum())

    def validate() -> float:
        peft_model.eval()
        with torch.no_grad():
            sums = [batch("v", i)[:2] for i in range(_count(saved, "vbatch"))]
        peft_model.train()
        return float(sum(s for s, _ in sums) / sum(n for _, n in sums))

    result = {"losses": [validate()] if job else []}
    peft_model.train()
    optimizer = torch.optim.Adam([p for p in peft_model.parameters() if p.requires_grad], lr=1e-4)
    tokens, seconds = 0, 0.0
    for i in range(_count(saved, "batch")):
        tic = time.perf_counter()
        total, counted, real = batch("", i)
        (total / counted).backward()
        optimizer.step()
        optimizer.zero_grad()
        if i >= skip:
            tokens, seconds = tokens + real, seconds + time.perf_counter() - tic
    if job:
        result["losses"].append(validate())
        with tempfile.TemporaryDirectory() as folder:
            peft_model.save_pretrained(folder)
    print(json.dumps(result | {"tokens_per_second": tokens / seconds}))


def _count(saved, prefix: str) -> int:
    return sum(1 for name in saved.files if name.startswith(prefix))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--torch-python", help="a Python with torch, transformers and peft")
    parser.add_argument("--model", type=Path, default=DEMO)
    parser.add_argument("--data", type=Path, help=".jsonl (default: the demo's pirate dataset)")
    parser.add_argument("--epochs", type=int, default=3, help="3: the studio's default")
    parser.add_argument("--job", action="store_true", help="time the whole job, wall clock")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--torch-side", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--skip", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.torch_side:
        return torch_side(args.torch_side, args.model, args.skip, args.job)
    if not args.torch_python:
        raise SystemExit("give --torch-python: a Python with torch, transformers and peft")
    from core.machine.blas_choice import choose_blas
    from core.models.demo import write_sample_dataset
    from core.train.schedule import report_interval

    threads = str(args.threads)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    env |= {k: threads for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    blas = choose_blas()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        data = args.data or write_sample_dataset(folder)
        steps = studio_batches(args.model, data, folder, args.epochs)
        batches = folder / "batches.npz"
        skip = report_interval(steps // args.epochs)  # the studio's first report: its warm-up
        studio, torch_runs = [], []
        for _ in range(args.repeat):
            if args.job:
                studio.append(run_studio_job(args.model, data, folder, env, args.epochs))
            else:
                studio_side = studio_env(env, blas)
                studio.append(
                    run_studio(args.model, data, folder, batches, studio_side, args.epochs)
                )
            torch_runs.append(
                run_torch(args.torch_python, args.model, batches, env, skip, args.job)
            )
    print(f"{steps} steps ({args.epochs} epochs), {threads} threads, BLAS {blas.name}")
    report(studio, torch_runs, "seconds" if args.job else "tokens_per_second")


def report(studio: list[dict], torch_runs: list[dict], figure: str) -> None:
    """The markdown table: ``figure`` (seconds: lower is better) and peak RSS, as ratios."""
    rows = [("PyTorch + PEFT", torch_runs), ("LoRA Studio", studio)]
    reference = median(r[figure] for r in torch_runs)
    reference_rss = median(r["peak_rss_mb"] for r in torch_runs)
    unit = "wall s" if figure == "seconds" else "tok/s (non-pad)"
    print(f"| run | {unit} | vs PyTorch (speed) | peak RSS | vs PyTorch |")
    print("| --- | --- | --- | --- | --- |")
    for name, runs in rows:
        value = median(r[figure] for r in runs)
        speed = reference / value if figure == "seconds" else value / reference
        rss = median(r["peak_rss_mb"] for r in runs)
        print(
            f"| {name} | {value:.1f} | {speed:.2f}x | {rss:,.0f} MB | {rss / reference_rss:.2f} |"
        )
    for name, runs in rows:
        print(f"{name}: each run {[round(r[figure], 1) for r in runs]}", end="")
        print(f"; validation losses {runs[0].get('losses', [])}")
    if "final_validation_steps" in studio[0]:
        costs = [round(r["final_validation_steps"], 1) for r in studio]
        print(f"the studio's final validation cost {costs} mean training steps")


if __name__ == "__main__":
    main()
