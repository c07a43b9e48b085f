"""Do PEFT exports compute what the studio's adapters compute? LoRA and DoRA, in PyTorch + PEFT.

Trains a LoRA and a DoRA adapter on the toy llama (a few seconds each), exports both to PEFT,
then loads the base in transformers with each PEFT adapter (in a separate Python with torch,
transformers and peft: nothing is installed by this script) and compares next-token logits with
mlx-lm's, base model included.

    python bench/peft_check.py --torch-python /tmp/torch-venv/bin/python [--family F]

``--family F`` checks a tiny random model of family F (core/models/families.py) instead of
the toy llama.
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
TOY = REPO / ".pytest_cache/d/toy-llama-v1/toy"
TOKENS = [1, 5, 17, 42, 99, 7, 3, 12]


def torch_side(base: Path, adapters: list[str]) -> None:
    """Logits of the base alone and with each PEFT adapter, as JSON."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = {}
    for adapter in [None, *adapters]:
        model = AutoModelForCausalLM.from_pretrained(base, torch_dtype=torch.float32)
        if adapter:
            model = PeftModel.from_pretrained(model, adapter)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([TOKENS])).logits[0, -1]
        out[adapter or "base"] = logits.tolist()
    print(json.dumps(out))


def mlx_logits(base: Path, adapter: Path | None) -> list[float]:
    import mlx.core as mx
    from mlx_lm import load

    model, _ = load(str(base), adapter_path=str(adapter) if adapter else None)
    return model(mx.array([TOKENS]))[0, -1].tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--torch-python", help="a Python with torch, transformers and peft")
    parser.add_argument("--family", help="a family of core/models/families.py (default: toy llama)")
    parser.add_argument("--torch-side", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.torch_side:
        return torch_side(Path(args.torch_side[0]), args.torch_side[1:])
    import numpy as np

    from core.adapters.export import export_adapter
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
        service, store = TrainingService(settings), AdapterStore(settings.adapters)
        path = build_toy(args.family, Path(tmp) / "base") if args.family else TOY
        base = inspect_model(path)
        exported, ours = [], {}
        for kind in ("lora", "dora"):
            params = TrainingParams(learning_rate=2e-2, lora_layers=-1, fine_tune_type=kind)
            final = service.start(path, data, params).wait(timeout=300)
            folder = export_adapter(store, final.adapter_id, base, "peft", Path(tmp) / kind)
            exported.append(str(folder))
            ours[str(folder)] = mlx_logits(path, settings.adapters / final.adapter_id)
        ours["base"] = mlx_logits(path, None)
        command = [args.torch_python, __file__, "--torch-side", str(path), *exported]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        theirs = json.loads(done.stdout.strip().splitlines()[-1])
    for name, want in ours.items():
        got, want = np.array(theirs[name]), np.array(want)
        error = np.abs(got - want).max() / np.abs(want).max()
        label = "base" if name == "base" else Path(name).name
        changed = np.abs(want - np.array(ours["base"])).max()
        print(
            f"{label}: max |PEFT - mlx-lm| / max |logit| = {error:.2e} (adapter moves "
            f"logits by up to {changed:.3f})"
        )


if __name__ == "__main__":
    main()
