"""GRPO against mlx-lm-lora's trainer: the same model, prompts, reward, group size and answer
length, one after the other in one script run; seconds per step (rollouts, rewards, reference
and update) and answer tokens per second.

mlx-lm-lora (the PyPI package ``mlx-lm-lora``) runs from its own venv, never a dependency:

    python -m venv /tmp/mlxlora && /tmp/mlxlora/bin/pip install "mlx[cpu]" mlx-lm-lora
    python bench/grpo.py --peer-python /tmp/mlxlora/bin/python [--model PATH] [--steps 11]

Both train a LoRA adapter of rank 8 on the last 8 layers, batch ``--batch`` prompts of
``--group`` answers of at most ``--tokens`` tokens each, temperature 1, beta 0.1, with the
studio's BLAS preloaded into both (the trainers are compared, not the BLAS). The prompts are
the demo's questions with one system prompt (mlx-lm-lora adds its own system prompt unless a
row has one); the reward is 1 for an answer of at most 6 words. Each tool's first step (which
compiles) is left out; the rest are its median.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import time
from itertools import pairwise
from pathlib import Path
from statistics import median

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SYSTEM = "Answer in as few words as you can."
OURS = """
def short(prompt, completion, row):
    return float(len(completion.split()) <= 6)
"""
PEERS = """
from mlx_lm_lora.trainer.grpo_reward_functions import register_reward_function

@register_reward_function()
def short(prompts, completions, answer, types=None):
    return [float(len(c.split()) <= 6) for c in completions]
"""


def write_data(folder: Path, steps: int, batch: int) -> tuple[Path, Path]:
    """The same prompts in each tool's form: ours as chat rows, the peer's as its fields."""
    from core.models.demo import concise_rows

    prompts, _ = concise_rows()
    rows = prompts[: steps * batch + batch]  # the last batch: validation
    ours, peers = folder / "ours", folder / "peers"
    for path in (ours, peers):
        path.mkdir()
    chat = [
        {
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": r["prompt"]},
            ]
        }
        for r in rows
    ]
    plain = [{"system": SYSTEM, "prompt": r["prompt"], "answer": r["answer"]} for r in rows]
    for path, data in ((ours, chat), (peers, plain)):
        lines = [json.dumps(r) for r in data]
        (path / "train.jsonl").write_text("\n".join(lines[:-batch]) + "\n")
        (path / "valid.jsonl").write_text("\n".join(lines[-batch:]) + "\n")
    (folder / "ours.py").write_text(textwrap.dedent(OURS))
    (folder / "peers.py").write_text(textwrap.dedent(PEERS))
    return ours, peers


def run_ours(model: str, folder: Path, data: Path, args, env: dict) -> dict:
    command = [sys.executable, "-m", "webapp", "train", "--model", model, "--data", str(data)]
    command += ["--method", "grpo", "--reward-file", str(folder / "ours.py"), "--epochs", "1"]
    command += ["--batch-size", str(args.batch), "--group-size", str(args.group)]
    command += ["--max-completion-tokens", str(args.tokens), "--lora-layers", "8", "--rank", "8"]
    command += ["--learning-rate", "1e-5", "--samples", "0", "--validation-split", "0.2"]
    home = folder / "studio"
    done = subprocess.run(
        command, env={**env, "LORA_STUDIO_HOME": str(home)}, capture_output=True, text=True
    )
    if done.returncode:
        raise SystemExit(f"the studio failed:\n{done.stderr[-3000:]}")
    from core import protocol

    adapter = next((home / "adapters").iterdir())
    events = protocol.read_events(adapter / "events.jsonl")
    reports = [e for e in events if isinstance(e, protocol.Progress)]
    seconds = [b.train_seconds - a.train_seconds for a, b in pairwise(reports)]
    answers = args.batch * args.group
    tokens = [r.completion_length * answers for r in reports[1:]]
    peak = max(r.peak_memory_gb for r in reports)
    return _figures(seconds, tokens, peak)


def run_peer(model: str, folder: Path, data: Path, args, env: dict) -> dict:
    command = [args.peer_python, "-m", "mlx_lm_lora.train", "--train-mode", "grpo", "--train"]
    command += ["--model", model, "--data", str(data), "--iters", str(args.steps)]
    command += ["--batch-size", str(args.batch), "--group-size", str(args.group)]
    command += ["--max-completion-length", str(args.tokens), "--num-layers", "8"]
    command += ["--reward-functions-file", str(folder / "peers.py"), "--reward-functions", "short"]
    command += ["--learning-rate", "1e-5", "--steps-per-report", "1", "--beta", "0.1"]
    command += ["--steps-per-eval", "100000", "--val-batches", "1", "--temperature", "1.0"]
    command += ["--adapter-path", str(folder / "peer-adapter"), "--seed", "0"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=folder)
    output = done.stdout + done.stderr
    if done.returncode:
        raise SystemExit(f"mlx-lm-lora failed:\n{output[-3000:]}")
    speeds = [float(s) for s in re.findall(r"Speed: ([\d.]+) it/s", output)]
    generated = [float(t) for t in re.findall(r"Avg tokens: ([\d.]+)", output)]
    peaks = [float(m) for m in re.findall(r"Memory: ([\d.]+)GB", output)]
    answers = args.batch * args.group
    seconds = [1 / s for s in speeds[1:]]
    return _figures(seconds, [t * answers for t in generated[1:]], max(peaks))


def _figures(seconds: list[float], tokens: list[float], peak: float) -> dict:
    rates = [t / s for t, s in zip(tokens, seconds, strict=True)]
    return {
        "seconds_per_step": median(seconds),
        "answer_tokens_per_step": median(tokens),
        "answer_tokens_per_second": median(rates),
        "peak_memory_gb": peak,
        "steps_timed": len(seconds),
    }


def main() -> None:
    from core.settings import Settings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Settings.from_env().models / "smollm2-135m-instruct"
    parser.add_argument("--model", default=str(default))
    parser.add_argument("--peer-python", required=True, help="python of mlx-lm-lora's venv")
    parser.add_argument("--steps", type=int, default=11, help="11: the studio reports each")
    parser.add_argument("--batch", type=int, default=2, help="prompts a step")
    parser.add_argument("--group", type=int, default=4, help="answers a prompt")
    parser.add_argument("--tokens", type=int, default=32, help="longest answer")
    args = parser.parse_args()

    from core.machine.blas import with_blas
    from core.machine.blas_choice import choose_blas
    from core.machine.jit import cpu_name

    env = with_blas({**os.environ, "PYTHONPATH": str(REPO)}, choose_blas())
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        ours_data, peers_data = write_data(folder, args.steps, args.batch)
        started = time.perf_counter()
        ours = run_ours(args.model, folder, ours_data, args, env)
        peer = run_peer(args.model, folder, peers_data, args, env)
    print(
        f"{cpu_name()}; {args.steps} steps of {args.batch} prompts x {args.group} answers, "
        f"at most {args.tokens} tokens; {time.perf_counter() - started:.0f} s in all"
    )
    print("| trainer | s / step | answer tokens / step | answer tokens / s | peak MLX memory |")
    print("| --- | --- | --- | --- | --- |")
    for name, found in (("LoRA Studio", ours), ("mlx-lm-lora", peer)):
        print(
            f"| {name} | {found['seconds_per_step']:.2f} | {found['answer_tokens_per_step']:.0f} "
            f"| {found['answer_tokens_per_second']:.1f} | {found['peak_memory_gb']:.2f} GB |"
        )
    ratio = peer["seconds_per_step"] / ours["seconds_per_step"]
    print(f"\nstudio / mlx-lm-lora, steps per second: {ratio:.2f}x")


if __name__ == "__main__":
    main()
