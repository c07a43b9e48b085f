"""QLoRA on this machine: the same LoRA run on float32, 8-bit and 4-bit copies of one model.

Quantized copies are made with the studio's `models quantize` code (mlx-lm's conversion); each
run trains the same rows through the studio's worker (demo configuration: LoRA rank 8 on q/k/v/o
of the last 8 layers, batch 4, prompts masked). Reported: trained tokens/s (the median of the
reports after the first), the worker's peak RSS, MLX's peak memory, and the size on disk.

    python bench/quantized.py                      # the demo model, 48 rows (9 steps)
    python bench/quantized.py --model PATH --rows 96
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


def train(model: Path, data: Path, out: Path, *flags: str) -> dict:
    """One epoch through the studio's worker (extra worker ``flags`` allowed): trained
    tokens/s, the worker's peak RSS (wait4) and MLX's largest reported peak."""
    from core.machine.blas import with_blas
    from core.machine.blas_choice import choose_blas
    from core.machine.jit import native_jit

    env = native_jit(with_blas({**os.environ, "HF_HUB_OFFLINE": "1"}, choose_blas()))
    command = [sys.executable, "-m", "core.train.worker", "--model", str(model)]
    command += ["--data", str(data)]
    command += ["--output", str(out), "--epochs", "1", "--save-every", "100000", *flags]
    process = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE, text=True)
    lines = process.stdout.read().splitlines()
    _, status, usage = os.wait4(process.pid, 0)
    events = [json.loads(line) for line in lines]
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"training {model.name} failed: {events[-1:]}")
    progress = [e for e in events if e["type"] == "progress"]
    return {
        "tokens_per_second": median(e["tokens_per_second"] for e in progress[1:] or progress),
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "mlx_peak_gb": max(e["peak_memory_gb"] for e in progress),
    }


def size_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.glob("*.safetensors")) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEMO)
    parser.add_argument("--rows", type=int, default=48)
    args = parser.parse_args()
    from core.models.demo import write_sample_dataset
    from core.models.quantize import quantize

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rows = write_sample_dataset(folder).read_text().splitlines()[: args.rows]
        data = folder / "rows.jsonl"
        data.write_text("\n".join(rows) + "\n")
        models = {"float32": args.model}
        for bits in (8, 4):
            models[f"{bits}-bit"] = quantize(args.model, folder, bits)
        results = {name: train(path, data, folder / name) for name, path in models.items()}
        sizes = {name: size_mb(path) for name, path in models.items()}
    reference = results["float32"]
    print(f"model {args.model.name}, {args.rows} rows, batch 4, {os.cpu_count()} cores")
    print("| base | trained tok/s | vs float32 | peak RSS | MLX peak | weights on disk |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, r in results.items():
        print(
            f"| {name} | {r['tokens_per_second']:.1f} | "
            f"{r['tokens_per_second'] / reference['tokens_per_second']:.3f} | "
            f"{r['peak_rss_mb']:,.0f} MB | {r['mlx_peak_gb'] * 1000:,.0f} MB | "
            f"{sizes[name]:,.0f} MB |"
        )


if __name__ == "__main__":
    main()
