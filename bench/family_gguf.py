"""Everything ``bench/llama_cpp_check.py --family F`` hands to llama.cpp, made with the studio
in its own venv: a tiny random model of family F (core/models/families.py), an adapter trained
on it, the adapter fused (MLX), the fused model as GGUF f32, the base as GGUF f32 and the
adapter as a GGUF LoRA. Prints the paths as one JSON object.

    .venv/bin/python bench/family_gguf.py --family qwen2 --out /tmp/gguf-qwen2
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.adapters.export import export_adapter  # noqa: E402
from core.adapters.gguf_export import write_model_gguf  # noqa: E402
from core.adapters.store import AdapterStore  # noqa: E402
from core.models.families import build_toy  # noqa: E402
from core.models.inspect import inspect_model  # noqa: E402
from core.params import TrainingParams  # noqa: E402
from core.settings import Settings  # noqa: E402
from core.train.service import TrainingService  # noqa: E402
from tests.helpers import colour_rows, write_jsonl  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", required=True)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    out = args.out
    shutil.rmtree(out, ignore_errors=True)  # made anew each time
    base = build_toy(args.family, out / "base")
    settings = Settings.from_env(out / "studio")
    data = write_jsonl(out / "colours.jsonl", colour_rows(64))
    # a learning rate a person would use: 1e-2 grew q 24x in 2 epochs, and attention that
    # sharp turns float rounding into logits 1e-1 apart (docs/compatibility.md)
    params = TrainingParams(epochs=2, learning_rate=2e-3, samples=0, lora_layers=-1)
    run = TrainingService(settings).start(base, data, params)
    final = run.wait(timeout=600)
    assert final.type == "complete", final
    store, info = AdapterStore(settings.adapters), inspect_model(base)
    fused = store.fuse(run.id, info, out / "models", "fused")
    paths = {
        "base": str(base),
        "adapter": str(store.path(run.id)),
        "fused": str(fused),
        "fused_gguf": str(
            export_adapter(store, run.id, info, "gguf", out / "fused.gguf", kind="f32")
        ),
        "base_gguf": str(write_model_gguf(base, out / "base.gguf", "f32")),
        "lora_gguf": str(export_adapter(store, run.id, info, "gguf-adapter", out / "lora.gguf")),
    }
    print(json.dumps(paths))


if __name__ == "__main__":
    main()
