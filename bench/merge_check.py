"""Does the studio's merge compute what PEFT's ``add_weighted_adapter`` computes?

Trains two LoRA adapters on a tiny model (core/models/families.py, llama by default), exports
both to PEFT, merges them in the studio (linear, svd, ties, cat) and in real PEFT (the same
weights, density and rank), and compares the merged models' next-token logits (mlx-lm with the
studio's merge against transformers + PEFT with its own), on 8 and 80 tokens. DARE is left out:
its random drops come from each library's own generator.

    .venv/bin/python bench/merge_check.py --torch-python /tmp/torch-venv/bin/python
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from peft_check import INPUTS, hf_layout, mlx_logits, print_differences  # noqa: E402

WEIGHTS = [0.6, 0.4]
# method -> (studio's settings, PEFT's add_weighted_adapter arguments)
MERGES = {
    "linear": ({}, {"combination_type": "linear"}),
    "svd": ({"rank": 8}, {"combination_type": "svd", "svd_rank": 8}),
    "ties": ({"density": 0.5}, {"combination_type": "ties", "density": 0.5}),
    "cat": ({}, {"combination_type": "cat"}),
}


def torch_side(base: str, first: str, second: str) -> None:
    """Logits of each PEFT merge of the two adapters, as JSON."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = {}
    for method, (_, arguments) in MERGES.items():
        model = AutoModelForCausalLM.from_pretrained(base, torch_dtype=torch.float32)
        model = PeftModel.from_pretrained(model, first, adapter_name="first")
        model.load_adapter(second, adapter_name="second")
        model.add_weighted_adapter(["first", "second"], WEIGHTS, "merged", **arguments)
        model.set_adapter("merged")
        with torch.no_grad():
            out[method] = {
                name: model(input_ids=torch.tensor([ids])).logits[0, -1].tolist()
                for name, ids in INPUTS.items()
            }
    print(json.dumps(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--torch-python", help="a Python with torch, transformers and peft")
    parser.add_argument("--family", default="llama", help="a family of core/models/families.py")
    parser.add_argument("--torch-side", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.torch_side:
        return torch_side(*args.torch_side)
    from core.adapters.export import export_adapter
    from core.adapters.merge import merge_adapters
    from core.adapters.store import AdapterStore
    from core.models.families import build_toy
    from core.models.inspect import inspect_model
    from core.params import TrainingParams
    from core.settings import Settings
    from core.train.service import TrainingService
    from tests.helpers import colour_rows, write_jsonl

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings.from_env(Path(tmp)).ensure()
        data = write_jsonl(Path(tmp) / "colours.jsonl", colour_rows(32))
        path = build_toy(args.family, Path(tmp) / "base")
        base, store = inspect_model(path), AdapterStore(settings.adapters)
        ids, exported = [], []
        for seed in (1, 2):
            params = TrainingParams(learning_rate=2e-3, lora_layers=-1, seed=seed)
            final = TrainingService(settings).start(path, data, params).wait(timeout=300)
            ids.append(final.adapter_id)
            folder = export_adapter(store, final.adapter_id, base, "peft", Path(tmp) / f"p{seed}")
            exported.append(str(folder))
        ours = {}
        for method, (settings_, _) in MERGES.items():
            merged = merge_adapters(
                store, ids, base, method=method, name=method, weights=WEIGHTS, **settings_
            )
            ours[method] = mlx_logits(path, settings.adapters / merged)
        hf_base = hf_layout(path, Path(tmp) / "hf-base")
        command = [args.torch_python, __file__, "--torch-side", str(hf_base), *exported]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        theirs = json.loads(done.stdout.strip().splitlines()[-1])
    print_differences(ours, theirs, "PEFT merge - studio merge")


if __name__ == "__main__":
    main()
