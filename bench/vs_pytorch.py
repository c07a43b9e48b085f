"""LoRA training speed and memory: the studio's worker vs PyTorch + PEFT, same CPU, same batches.

The demo configuration: SmolLM2-135M-Instruct float32, LoRA rank 8 (alpha 16) on q/k/v/o of the
last 8 layers, Adam 1e-4, batch 4 of the pirate dataset with prompts masked, one epoch. The
batches are the studio's own (mlx-lm's length-sorted, seeded batches with the studio's
padding): this script builds them once, the worker trains on them, and the PyTorch side trains
on the very same token ids and padding. Both count every non-pad token of the steps after the
first report (the first includes compilation), over the seconds spent in those steps. Each side
runs in its own process, alternating, ``--repeat`` times; the median is reported, with each
process's peak RSS.

PyTorch is not a dependency of the studio: install it in a separate venv and name its Python
with ``--torch-python`` (nothing is installed by this script)::

    python3 -m venv /tmp/torch-venv
    /tmp/torch-venv/bin/pip install torch transformers peft     # CPU is enough
    python bench/vs_pytorch.py --torch-python /tmp/torch-venv/bin/python --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from statistics import median

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
DEMO = REPO / ".pytest_cache/d/demo-models/smollm2-135m-instruct"
KEYS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"]
PARAMS = ["--rank", "8", "--alpha", "16", "--learning-rate", "1e-4", "--epochs", "1"]
PARAMS += ["--batch-size", "4", "--lora-layers", "8", "--keys", ",".join(KEYS)]


def studio_batches(model: Path, data: Path, out: Path) -> dict:
    """The batches the worker will train on (its own loading and batching code), saved."""
    import numpy as np
    from mlx_lm.tuner import trainer

    from core.train.batches import trimmed
    from core.train.worker import _load, _prepare, build_parser

    args = build_parser().parse_args(
        ["--model", str(model), "--data", str(data), "--output", str(out), *PARAMS]
    )
    params, info, dataset = _prepare(args)
    _, train_set, _ = _load(info, params, dataset)
    batches = trimmed(
        trainer.iterate_batches(train_set, params.batch_size, params.max_seq_length, seed=0)
    )
    arrays = {}
    for i, (batch, lengths) in enumerate(batches):
        arrays[f"batch{i}"], arrays[f"lengths{i}"] = np.array(batch), np.array(lengths)
    np.savez(out / "batches.npz", **arrays)
    return {"steps": len(arrays) // 2}


def non_pad_tokens(batches: Path, first: int, last: int) -> int:
    """Non-pad tokens of steps ``first + 1 .. last`` (1-based): each row's length."""
    import numpy as np

    saved = np.load(batches)
    return int(sum(saved[f"lengths{i}"][:, 1].sum() for i in range(first, last)))


def run_studio(model: Path, data: Path, out: Path, batches: Path, env: dict) -> dict:
    command = [sys.executable, "-m", "core.train.worker", "--model", str(model)]
    command += ["--data", str(data)]
    command += ["--output", str(out / "adapter"), "--save-every", "100000", *PARAMS]
    events, rss = _run(command, env)
    progress = [e for e in events if e["type"] == "progress"]
    first, last = progress[0], progress[-1]
    seconds = last["train_seconds"] - first["train_seconds"]
    tokens = non_pad_tokens(batches, first["step"], last["step"])
    start = next(e for e in events if e["type"] == "start")
    return {"tokens_per_second": tokens / seconds, "peak_rss_mb": rss, "loss": start["loss"]}


def studio_env(env: dict, blas) -> dict:
    """What the studio gives its training process: the BLAS, the native JIT."""
    from core.machine.blas import with_blas
    from core.machine.jit import native_jit

    return native_jit(with_blas(env, blas))


def run_torch(python: str, model: Path, batches: Path, env: dict, skip: int) -> dict:
    command = [python, __file__, "--torch-side", str(batches), "--model", str(model)]
    command += ["--skip", str(skip)]
    events, rss = _run(command, env)
    return events[-1] | {"peak_rss_mb": rss}


def _run(command: list[str], env: dict) -> tuple[list[dict], float]:
    """Run a side; its JSON lines, and its own peak RSS in MB (from wait4)."""
    process = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE, text=True)
    out = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{command[0]} failed:\n{out[-2000:]}")
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return events, usage.ru_maxrss / 1024


def torch_side(batches: Path, model: Path, skip: int) -> None:
    """Train PyTorch + PEFT on the saved batches; print one JSON line with the tok/s of the
    steps after the first ``skip`` (those the studio's first report covers)."""
    import time

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
    peft_model.train()
    optimizer = torch.optim.Adam([p for p in peft_model.parameters() if p.requires_grad], lr=1e-4)
    saved = np.load(batches)
    steps, tokens, seconds, losses = len(saved.files) // 2, 0, 0.0, []
    for i in range(steps):
        batch = torch.from_numpy(saved[f"batch{i}"]).long()
        lengths = torch.from_numpy(saved[f"lengths{i}"]).long()
        inputs, targets = batch[:, :-1], batch[:, 1:]
        position = torch.arange(1, targets.shape[1] + 1)
        mask = (position >= lengths[:, 0:1]) & (position <= lengths[:, 1:])
        tic = time.perf_counter()
        logits = peft_model(input_ids=inputs).logits
        ce = torch.nn.functional.cross_entropy(
            logits.flatten(0, 1), targets.flatten(), reduction="none"
        )
        loss = (ce * mask.flatten()).sum() / mask.sum()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        elapsed = time.perf_counter() - tic
        losses.append(loss.item())
        if i >= skip:
            tokens, seconds = tokens + int(lengths[:, 1].sum()), seconds + elapsed
    print(json.dumps({"tokens_per_second": tokens / seconds, "first_loss": losses[0]}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--torch-python", help="a Python with torch, transformers and peft")
    parser.add_argument("--model", type=Path, default=DEMO)
    parser.add_argument("--data", type=Path, help=".jsonl (default: the demo's pirate dataset)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--torch-side", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--skip", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.torch_side:
        return torch_side(args.torch_side, args.model, args.skip)
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
        steps = studio_batches(args.model, data, folder)["steps"]
        batches = folder / "batches.npz"
        studio, torch_runs = [], []
        for _ in range(args.repeat):
            studio.append(run_studio(args.model, data, folder, batches, studio_env(env, blas)))
            skip = report_interval(steps)  # the studio's first report: its warm-up
            torch_runs.append(run_torch(args.torch_python, args.model, batches, env, skip))
    report(studio, torch_runs, steps, threads, blas.name)


def report(studio: list[dict], torch_runs: list[dict], steps: int, threads: str, blas: str):
    rows = [("PyTorch + PEFT", torch_runs), (f"LoRA Studio (BLAS {blas})", studio)]
    reference = median(r["tokens_per_second"] for r in torch_runs)
    reference_rss = median(r["peak_rss_mb"] for r in torch_runs)
    print(f"{steps} steps, {threads} threads; loss: {studio[0]['loss']}")
    print("| run | tok/s (non-pad) | vs PyTorch | peak RSS | vs PyTorch |")
    print("| --- | --- | --- | --- | --- |")
    for name, runs in rows:
        speed = median(r["tokens_per_second"] for r in runs)
        rss = median(r["peak_rss_mb"] for r in runs)
        print(
            f"| {name} | {speed:.0f} | {speed / reference:.2f} | {rss:,.0f} MB | "
            f"{rss / reference_rss:.2f} |"
        )
    each = (
        [round(r["tokens_per_second"]) for r in studio],
        [round(r["tokens_per_second"]) for r in torch_runs],
    )
    print(f"each run: studio {each[0]}, PyTorch {each[1]}")


if __name__ == "__main__":
    main()
