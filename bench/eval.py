"""Evaluation speed: rows per second of `lora-studio eval` (``core.eval.runner``, the same
code) with 1 and with 4 adapters of one base, batched (8 rows generated together by mlx-lm's
batch generation) against one row at a time; the reference run is the one-row-at-a-time one.

On the demo model (SmolLM2-135M-Instruct; `lora-studio models demo` gets it). The adapters
are made here, not trained: LoRA layers (rank 8, q/k/v/o of the last 8 layers, mlx-lm's own
initialisation) with a random B, saved in mlx-lm's format, so the engine loads and switches
them as it would trained ones. The rows are the first ``--rows`` questions of the pirate
sample; every metric is computed (the reference loss costs a forward pass per row and model).

    python bench/eval.py [--model PATH] [--rows 32] [--max-tokens 32]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.machine.blas_choice import reexec_with_fast_blas  # noqa: E402
from core.settings import Settings  # noqa: E402


def make_adapter(model_path: Path, folder: Path, seed: int) -> None:
    """An mlx-lm adapter folder with random weights, and the studio's metadata."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm import load
    from mlx_lm.tuner.utils import linear_to_lora_layers

    from core.adapters.layout import CONFIG_FILE, WEIGHTS_FILE
    from core.adapters.store import AdapterMetadata
    from core.params import TrainingParams
    from core.train.output import lora_parameters

    params = TrainingParams(rank=8, alpha=16)
    model, _ = load(str(model_path))
    model.freeze()
    mx.random.seed(seed)
    linear_to_lora_layers(model, params.lora_layers, lora_parameters(params))
    weights = dict(tree_flatten(model.trainable_parameters()))
    weights = {
        k: (mx.random.normal(v.shape) * 0.01 if k.endswith("lora_b") else v)
        for k, v in weights.items()
    }
    folder.mkdir(parents=True)
    mx.save_safetensors(str(folder / WEIGHTS_FILE), weights)
    config = {
        "fine_tune_type": "lora",
        "num_layers": params.lora_layers,
        "lora_parameters": lora_parameters(params),
    }
    (folder / CONFIG_FILE).write_text(json.dumps(config))
    AdapterMetadata(adapterName=f"random {seed}", baseModelId=model_path.name).write(folder)


def timed_eval(settings, models: list[str], data: Path, batch: int, max_tokens: int) -> float:
    """Seconds of one whole evaluation (the base already in memory)."""
    from core.eval import runner
    from core.eval.generation import Sampling
    from core.eval.metrics import METRICS
    from core.eval.store import EvalStore
    from core.serve.engine import InferenceEngine
    from core.serve.registry import ModelRegistry

    engine = InferenceEngine(ModelRegistry(settings))
    try:
        engine.with_model(models[0], lambda model, tokenizer: None)  # load the base first
        evaluation = runner.prepare(
            EvalStore(settings.evals),
            engine,
            models,
            str(data),
            metrics=METRICS,
            sampling=Sampling(max_tokens=max_tokens, batch_size=batch),
        )
        start = time.perf_counter()
        spec = evaluation.run()
        assert spec.state == "complete", spec.error
        return time.perf_counter() - start
    finally:
        engine.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Settings.from_env().models / "smollm2-135m-instruct"
    parser.add_argument("--model", default=str(default))
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()
    reexec_with_fast_blas([str(Path(__file__).resolve()), *sys.argv[1:]])

    from core.machine.blas import loaded_blas
    from core.machine.jit import cpu_name
    from core.models.demo import sample_rows

    model = Path(args.model).resolve()
    with tempfile.TemporaryDirectory(prefix="eval-bench-") as tmp:
        settings = Settings.from_env(tmp).ensure()
        (settings.models / model.name).symlink_to(model)
        ids = [f"0000000{n}-0000-4000-8000-000000000000" for n in range(4)]
        for seed, adapter_id in enumerate(ids):
            make_adapter(model, settings.adapters / adapter_id, seed)
        data = Path(tmp) / "held-out.jsonl"
        rows = sample_rows()[: args.rows]
        data.write_text("".join(json.dumps(row) + "\n" for row in rows))
        print(f"CPU: {cpu_name()}; BLAS: {loaded_blas()}; model: {model.name}")
        print(f"{args.rows} rows, up to {args.max_tokens} tokens each, every metric")
        for count in (1, 4):
            models = [f"lora/{adapter_id}" for adapter_id in ids[:count]]
            times = {b: timed_eval(settings, models, data, b, args.max_tokens) for b in (1, 8)}
            answered = args.rows * count
            print(
                f"{count} adapter(s): one row at a time {answered / times[1]:.2f} rows/s, "
                f"batched (8) {answered / times[8]:.2f} rows/s: {times[1] / times[8]:.2f}x"
            )


if __name__ == "__main__":
    main()
