"""The memory plan against measured peaks: runs of several sizes through the studio's worker.

Each configuration is planned the way `lora-studio plan` plans it (the dataset scan's longest
rows and sample, tokenized by the model's tokenizer; `core.train.plan.estimate`), then trained for
one epoch by the worker. Measured: the worker's peak RSS (wait4: what the machine had to give)
and MLX's own peak (`peak_memory_gb` in the progress events). The plan predicts the RSS;
the issue's bar is within 25% of it.

Models: the toy llama (built here), SmolLM2-135M (the demo model, float32, and a 4-bit copy
made by `core.models.quantize`), a 300M-parameter random-weight llama built here (hidden 1536,
12 layers), and one model of each family (core/models/families.py at hidden 512, 8 layers, a
32k vocabulary, Gemma's 256k). Datasets: the demo's pirate rows, and rows of a few hundred
to a thousand words.

    python bench/memory_plan.py                 # every configuration (about 12 minutes)
    python bench/memory_plan.py --only demo     # those whose name contains "demo"
    python bench/memory_plan.py --only family   # one model of each family
    python bench/memory_plan.py --only full     # full fine-tuning
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quantized import DEMO, REPO, train  # noqa: E402

sys.path.insert(0, str(REPO))
from core.params import TARGET_KEYS  # noqa: E402

ALL_KEYS = ",".join(TARGET_KEYS)
WORDS = [
    "the",
    "sea",
    "ship",
    "captain",
    "gold",
    "treasure",
    "island",
    "wind",
    "sail",
    "storm",
    "rum",
    "parrot",
    "map",
    "crew",
]

# name, model, dataset, worker flags
CONFIGS = [
    ("toy, pirate rows", "toy", "pirate", ["--lora-layers", "4"]),
    ("demo 4-bit, pirate rows", "demo-4bit", "pirate", []),
    ("demo, pirate rows (the quick start)", "demo", "pirate", []),
    ("demo, 250-word answers", "demo", "answers-250", []),
    ("demo, 500-word prompts (masked)", "demo", "prompts-500", []),
    ("demo, 500-word answers, grad checkpoint", "demo", "answers-500", ["--grad-checkpoint"]),
    (
        "demo, 250 words, all layers and keys",
        "demo",
        "answers-250",
        ["--lora-layers", "-1", "--keys", ALL_KEYS],
    ),
    ("demo, 1000-word answers, batch 2", "demo", "answers-1000", ["--batch-size", "2"]),
    ("300M, pirate rows", "mid", "pirate", []),
    ("300M, 250-word answers, batch 2", "mid", "answers-250", ["--batch-size", "2"]),
    # full fine-tuning: the trained layers' gradients and Adam moments instead of LoRA's
    ("demo full fine-tuning, pirate rows", "demo", "pirate", ["--fine-tune-type", "full"]),
    (
        "demo full fine-tuning of all layers, pirate rows",
        "demo",
        "pirate",
        ["--fine-tune-type", "full", "--lora-layers", "-1"],
    ),
    ("300M full fine-tuning, pirate rows", "mid", "pirate", ["--fine-tune-type", "full"]),
]
# each family at one size (hidden 512, 8 layers, a 32k vocabulary; Gemma's 256k, where the
# logits outweigh the rest), the default settings, 250-word answers
FAMILY_SIZES = {
    "hidden_size": 512,
    "intermediate_size": 1536,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "num_hidden_layers": 8,
    "head_dim": 64,
    "query_pre_attn_scalar": 64,
    "moe_intermediate_size": 384,
    "vocab_size": 32768,
}
GEMMA_VOCABULARY = 262144
CONFIGS += [
    (f"family {family}, 250-word answers", f"family:{family}", "answers-250", [])
    for family in ("llama", "mistral", "qwen2", "qwen3", "qwen3_moe", "gemma2", "gemma3_text")
    + ("phi3", "smollm3")
]


def rows(folder: Path, name: str) -> Path:
    """A dataset by name: the demo's first 24 pirate rows, or 24 (12 for 1000 words) rows
    with long answers or long prompts."""
    path = folder / f"{name}.jsonl"
    if path.exists():
        return path
    if name == "pirate":
        from core.models.demo import write_sample_dataset

        lines = write_sample_dataset(folder).read_text().splitlines()[:24]
    else:
        kind, words = name.split("-")
        rng = random.Random(0)
        lines = []
        for _ in range(12 if words == "1000" else 24):
            long_text = " ".join(rng.choices(WORDS, k=int(words)))
            prompt, answer = " ".join(rng.choices(WORDS, k=8)), long_text
            if kind == "prompts":
                prompt, answer = answer, prompt
            messages = [{"role": "user", "content": prompt}]
            messages.append({"role": "assistant", "content": answer})
            lines.append(json.dumps({"messages": messages}))
    path.write_text("\n".join(lines) + "\n")
    return path


def model(folder: Path, name: str) -> Path:
    """A model by name, made on first use."""
    path = folder / name
    if name == "demo" or path.exists():
        return DEMO if name == "demo" else path
    from core.models.families import build_toy
    from core.models.quantize import quantize
    from core.models.toy import build_toy_llama

    if name.startswith("family:"):
        family = name.split(":", 1)[1]
        vocabulary = GEMMA_VOCABULARY if family.startswith("gemma") else 32768
        sizes = FAMILY_SIZES | {"vocab_size": vocabulary}
        if family == "phi3":  # one long-rope factor per frequency of the wider heads
            sizes["rope_scaling"] = {"type": "longrope", "short_factor": [1.0] * 32}
            sizes["rope_scaling"]["long_factor"] = [1.0 + i / 8 for i in range(32)]
        return build_toy(family, path, sizes=sizes)
    if name == "demo-4bit":
        return quantize(DEMO, folder, 4, name=name)
    if name == "toy":
        return build_toy_llama(path)
    sizes = dict(hidden_size=1536, num_layers=12, num_heads=12, num_kv_heads=4)
    return build_toy_llama(path, intermediate_size=4096, **sizes)


def predict(model_path: Path, data: Path, flags: list[str]):
    """The plan of this run, as `lora-studio plan` makes it."""
    from core.data.scan import scan_dataset
    from core.models.inspect import inspect_model, tokenizer
    from core.params import add_arguments, params_from_args
    from core.train.plan import DataShape, ModelShape, estimate

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    info = inspect_model(model_path)
    params = params_from_args(parser.parse_args(flags)).for_model(info)
    scan = scan_dataset(data, batch_size=params.batch_size)
    shape = DataShape.of(scan, tokenizer(info.path), mask_prompt=True)
    return estimate(ModelShape.of(info), params, shape)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="run the configurations whose name has this")
    args = parser.parse_args()
    print(f"{os.cpu_count()} cores; the plan's peak vs the worker's peak RSS and MLX's peak")
    print("| configuration | plan | peak RSS | plan / RSS | plan - runtime | MLX peak |")
    print("| --- | --- | --- | --- | --- | --- |")
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name, model_name, data_name, flags in CONFIGS:
            if args.only not in name:
                continue
            model_path, data = model(folder, model_name), rows(folder, data_name)
            planned = predict(model_path, data, flags)
            measured = train(model_path, data, folder / "out", *flags)
            rss_gb = measured["peak_rss_mb"] * 1024 * 1024 / 1e9
            ratios.append(planned.peak_gb / rss_gb)
            print(
                f"| {name} | {planned.peak_gb:.3f} GB | {rss_gb:.3f} GB | {ratios[-1]:.2f} | "
                f"{planned.peak_gb - planned.runtime_gb:.3f} GB | "
                f"{measured['mlx_peak_gb']:.3f} GB |",
                flush=True,
            )
    worst = max(ratios, key=lambda r: abs(r - 1))
    within = sum(abs(r - 1) <= 0.25 for r in ratios)
    print(f"\nwithin 25% of the peak RSS: {within} of {len(ratios)}; worst ratio {worst:.2f}")


if __name__ == "__main__":
    main()
