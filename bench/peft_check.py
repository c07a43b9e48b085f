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
# two inputs: 8 tokens, and 80 (longer than the Phi toy's 64-token original context, where
# transformers switches Phi-3's rope from its short factors to its long ones)
INPUTS = {"8 tokens": [1, 5, 17, 42, 99, 7, 3, 12], "80 tokens": [1, 5, 17, 42, 99, 7, 3, 12] * 10}


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
            out[adapter or "base"] = {
                name: model(input_ids=torch.tensor([tokens])).logits[0, -1].tolist()
                for name, tokens in INPUTS.items()
            }
    print(json.dumps(out))


def mlx_logits(base: Path, adapter: Path | None) -> dict[str, list[float]]:
    import mlx.core as mx
    from mlx_lm import load

    model, _ = load(str(base), adapter_path=str(adapter) if adapter else None)
    return {name: model(mx.array([ids]))[0, -1].tolist() for name, ids in INPUTS.items()}


def hf_layout(folder: Path, out: Path) -> Path:
    """The model as transformers reads a checkpoint: a mixture of experts' stacked
    ``switch_mlp`` weights (mlx-lm's layout) as one tensor per expert; others as they are."""
    import shutil

    import mlx.core as mx

    shutil.copytree(folder, out)
    weights = mx.load(str(folder / "model.safetensors"))
    for name in [n for n in weights if ".switch_mlp." in n]:
        stacked = weights.pop(name)
        for expert in range(stacked.shape[0]):
            weights[name.replace(".switch_mlp.", f".experts.{expert}.")] = stacked[expert]
    mx.save_safetensors(str(out / "model.safetensors"), weights, metadata={"format": "pt"})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--torch-python", help="a Python with torch, transformers and peft")
    parser.add_argument("--family", help="a family of core/models/families.py (default: toy llama)")
    parser.add_argument("--torch-side", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.torch_side:
        return torch_side(Path(args.torch_side[0]), args.torch_side[1:])

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
        hf_base = hf_layout(path, Path(tmp) / "hf-base")
        command = [args.torch_python, __file__, "--torch-side", str(hf_base), *exported]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        theirs = json.loads(done.stdout.strip().splitlines()[-1])
    print_differences(ours, theirs, "PEFT - mlx-lm", baseline=ours["base"])


def print_differences(ours: dict, theirs: dict, what: str, baseline: dict | None = None) -> None:
    """Per model and input: the largest logit difference relative to the largest logit (and
    how far the model's logits are from ``baseline``'s, when given)."""
    import numpy as np

    for name, logits in ours.items():
        for length, want in logits.items():
            got, want = np.array(theirs[name][length]), np.array(want)
            error = np.abs(got - want).max() / np.abs(want).max()
            label = Path(name).name  # an adapter folder by its name; "base", a method as is
            line = f"{label}, {length}: max |{what}| / max |logit| = {error:.2e}"
            if baseline is not None:
                moved = np.abs(want - np.array(baseline[length])).max()
                line += f" (adapter moves logits by up to {moved:.3f})"
            print(line)


if __name__ == "__main__":
    main()
