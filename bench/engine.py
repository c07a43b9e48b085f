"""Engine benchmark: base load vs adapter switch, memory of cached adapters, prompt-cache TTFT.

On a random-weight llama (29.8M parameters by default) with 10 real adapters trained on it
(a few steps each, by the studio's own training service):
- base load time vs adapter switch time: each measured as the time of a 1-token reply minus
  that of a 1-token reply from the model already active (prompt caches dropped before each);
- MLX memory with the base alone vs the base with all 10 adapters read and cached;
- time to first token of the 2nd turn of a long conversation, with and without the prompt cache.

    python bench/engine.py [--adapters 10] [--history-turns 12]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.timing import timed  # noqa: E402
from core.machine.blas_choice import reexec_with_fast_blas  # noqa: E402
from core.models.toy import build_toy_llama, tokenizer_corpus  # noqa: E402
from core.params import TrainingParams  # noqa: E402
from core.serve.engine import GenerationParams, InferenceEngine  # noqa: E402
from core.serve.registry import ModelRegistry  # noqa: E402
from core.settings import Settings  # noqa: E402
from core.train.service import TrainingService  # noqa: E402
from tests.helpers import colour_rows, write_jsonl  # noqa: E402

ONE_TOKEN = GenerationParams(temperature=0.0, max_tokens=1)
QUESTION = [{"role": "user", "content": "What colour is the sky?"}]


def train_adapters(settings: Settings, base: Path, count: int, tmp: Path) -> list[str]:
    service = TrainingService(settings)
    ids = []
    for seed in range(count):
        data = write_jsonl(tmp / f"d{seed}.jsonl", colour_rows(n=10, seed=seed))
        params = TrainingParams(epochs=1, lora_layers=-1, seed=seed, learning_rate=1e-3)
        run = service.start(base, data, params)
        assert run.wait().type == "complete"
        ids.append(f"lora/{run.id}")
    return ids


def memory_mb(engine: InferenceEngine) -> float:
    """MLX memory held by models and adapters (prompt caches dropped first)."""
    import mlx.core as mx

    def measure() -> int:
        engine.clear_prompt_caches()
        mx.clear_cache()
        return mx.get_active_memory()

    return engine.call(measure) / 2**20


def main() -> None:
    reexec_with_fast_blas([__file__, *sys.argv[1:]])  # generation in this process, like a server
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapters", type=int, default=10)
    parser.add_argument("--history-turns", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        settings = Settings.from_env(tmp / "studio").ensure()
        base = build_toy_llama(
            settings.models / "base",
            hidden_size=args.hidden,
            num_layers=args.layers,
            num_heads=8,
            num_kv_heads=4,
            intermediate_size=1408,
        )
        adapters = train_adapters(settings, base, args.adapters, tmp)
        registry = ModelRegistry(settings, hub=tmp / "no-hub")
        engine = InferenceEngine(registry)

        def chat(model_id: str) -> None:
            # without prompt caches, every reply processes the same whole prompt
            engine.call(engine.clear_prompt_caches)
            engine.chat(model_id, QUESTION, ONE_TOKEN)

        load = timed(lambda: chat("base"))
        same = median(timed(lambda: chat("base")) for _ in range(5))
        base_memory = memory_mb(engine)
        switches = []
        for adapter in adapters:  # first switch to each: reads its weights from disk
            switches.append(timed(lambda a=adapter: chat(a)))
        cached_switches = [timed(lambda a=a: chat(a)) for a in adapters]  # weights cached
        all_memory = memory_mb(engine)
        print(
            f"base load {1000 * (load - same):.0f} ms; adapter switch, first "
            f"{1000 * (median(switches) - same):.1f} ms, cached "
            f"{1000 * (median(cached_switches) - same):.1f} ms (medians; a 1-token reply "
            f"from the active model, {1000 * same:.1f} ms, subtracted)"
        )
        print(
            f"load / cached switch: {(load - same) / (median(cached_switches) - same):.0f}x; "
            f"base loads: {engine.stats['base_loads']}"
        )
        print(
            f"memory: base alone {base_memory:.1f} MB, base + {len(adapters)} cached adapters "
            f"{all_memory:.1f} MB (ratio {all_memory / base_memory:.3f})"
        )

        history = []
        for text in tokenizer_corpus(args.history_turns * 2, seed=3)[: args.history_turns]:
            history += [
                {"role": "user", "content": text * 3},
                {"role": "assistant", "content": text},
            ]
        first_turn = [*history, {"role": "user", "content": "Which colour is the sea?"}]
        reply, last = engine.chat(adapters[0], first_turn, GenerationParams(max_tokens=8))
        second = [
            *first_turn,
            {"role": "assistant", "content": reply},
            {"role": "user", "content": "And the grass?"},
        ]

        def ttft(use_cache: bool) -> float:
            engine.chat(adapters[0], first_turn, GenerationParams(max_tokens=8, temperature=0))
            if not use_cache:
                engine.call(engine.clear_prompt_caches)
            start = time.perf_counter()
            stream = engine.stream(adapters[0], second, ONE_TOKEN)
            next(stream)
            elapsed = time.perf_counter() - start
            stream.close()
            return elapsed

        with_cache = median(ttft(True) for _ in range(3))
        without = median(ttft(False) for _ in range(3))
        print(
            f"2nd turn of a {last.prompt_tokens}-token conversation: time to first token "
            f"{1000 * with_cache:.0f} ms with the prompt cache, {1000 * without:.0f} ms "
            f"without ({without / with_cache:.1f}x)"
        )
        engine.close()


if __name__ == "__main__":
    main()
