"""Training throughput: LoRA Studio's worker vs `python -m mlx_lm lora`, same model and data.

Both run mlx-lm's trainer on the same random-weight llama (about 29M parameters by default),
the same rows (batch 4 x 128 tokens), LoRA rank 8 on every projection of every layer, with the
same report interval, in alternating runs (the median of --repeat is reported). Each tool's own
tokens/s figures are read (the trainer measures them the same way, validation excluded); the
first report, which includes graph compilation, is dropped when there are more. Each pair runs
with each BLAS asked for.

    python bench/train_throughput.py                    # fast BLAS (MKL) and stock
    python bench/train_throughput.py --blas mkl --steps 30
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from statistics import fmean, median

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.machine.blas import Blas, with_blas  # noqa: E402
from core.machine.blas_choice import choose_blas  # noqa: E402
from core.machine.jit import native_jit  # noqa: E402
from core.models.toy import build_toy_llama, tokenizer_corpus  # noqa: E402
from core.params import TARGET_KEYS  # noqa: E402
from core.train.schedule import report_interval  # noqa: E402

SEQ = 128
BATCH = 4
ANSI = re.compile(r"\x1b\[[0-9;]*m")
MLX_LM_REPORT = re.compile(r"^\s*(\d+)\s+([\d.]+)\s+[▼▲]\s+([\d,]+)\s+")


def make_data(folder: Path, steps: int) -> Path:
    """Text rows longer than SEQ tokens, so every batch is exactly BATCH x SEQ."""
    folder.mkdir(parents=True, exist_ok=True)
    text = " ".join(tokenizer_corpus(40))
    rows = [{"text": text[i * 7 :] + text[: i * 7]} for i in range(steps * BATCH)]
    for name, part in (("train", rows), ("valid", rows[:BATCH])):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    return folder


def steady(values: list[float]) -> float:
    return fmean(values[1:] if len(values) > 1 else values)


def run_studio(model: Path, data: Path, out: Path, steps: int, env: dict) -> float:
    command = [
        sys.executable,
        "-m",
        "core.train.worker",
        "--model",
        str(model),
        "--data",
        str(data),
        "--output",
        str(out),
        "--epochs",
        "1",
        "--batch-size",
        str(BATCH),
        "--rank",
        "8",
        "--lora-layers",
        "-1",
        "--keys",
        ",".join(TARGET_KEYS),
        "--max-seq-length",
        str(SEQ),
        "--learning-rate",
        "1e-4",
    ]
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    events = [json.loads(line) for line in done.stdout.splitlines()]
    return steady([e["tokens_per_second"] for e in events if e["type"] == "progress"])


def run_mlx_lm(model: Path, data: Path, out: Path, steps: int, env: dict) -> float:
    config = out.parent / "mlx_lm_lora.json"  # YAML is a superset of JSON
    lora = {"rank": 8, "scale": 2.0, "dropout": 0.0, "keys": list(TARGET_KEYS)}
    config.write_text(json.dumps({"lora_parameters": lora}))
    command = [
        sys.executable,
        "-m",
        "mlx_lm",
        "lora",
        "--model",
        str(model),
        "--train",
        "--data",
        str(data),
        "--iters",
        str(steps),
        "--batch-size",
        str(BATCH),
        "--num-layers",
        "-1",
        "--max-seq-length",
        str(SEQ),
        "--learning-rate",
        "1e-4",
        "--steps-per-report",
        str(report_interval(steps)),
        "--steps-per-eval",
        "1000000",
        "--val-batches",
        "1",
        "--adapter-path",
        str(out),
        "-c",
        str(config),
    ]
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    rates = [
        float(m.group(3).replace(",", ""))
        for line in done.stdout.splitlines()
        if (m := MLX_LM_REPORT.match(ANSI.sub("", line)))
    ]
    return steady(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blas", default="auto,stock", help="comma-separated: auto,mkl,...")
    parser.add_argument("--steps", type=int, default=20, help="steps with a fast BLAS")
    parser.add_argument("--stock-steps", type=int, default=4, help="steps with stock BLAS")
    parser.add_argument("--repeat", type=int, default=2, help="alternating runs per tool")
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=10)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = build_toy_llama(
            tmp / "model",
            hidden_size=args.hidden,
            num_layers=args.layers,
            num_heads=8,
            num_kv_heads=4,
            intermediate_size=1408,
        )
        from core.models.inspect import inspect_model

        size = inspect_model(model).parameter_count
        print(
            f"model: llama, {size / 1e6:.1f}M parameters; batch {BATCH} x {SEQ} tokens; "
            f"LoRA r8 on {len(TARGET_KEYS)} projections x {args.layers} layers"
        )
        base_env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
        for choice in args.blas.split(","):
            blas = Blas("stock") if choice == "stock" else choose_blas(choice)
            steps = args.stock_steps if blas.name == "stock" else args.steps
            env = with_blas(base_env, blas)
            data = make_data(tmp / f"data-{steps}", steps)
            ours, theirs = [], []
            for i in range(args.repeat):  # alternate, so drift in machine load hits both
                # the studio's worker gets what the studio gives it (core.machine.jit's native JIT)
                studio_env = native_jit(env)
                ours.append(run_studio(model, data, tmp / f"ours-{choice}-{i}", steps, studio_env))
                theirs.append(run_mlx_lm(model, data, tmp / f"mlx-{choice}-{i}", steps, env))
            ours, theirs = median(ours), median(theirs)
            print(
                f"BLAS {blas.name:8} {steps:3} steps: lora-studio {ours:8.1f} tok/s, "
                f"mlx_lm lora {theirs:8.1f} tok/s, ratio {ours / theirs:.2f}"
            )


if __name__ == "__main__":
    main()
