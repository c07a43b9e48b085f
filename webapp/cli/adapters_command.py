"""``lora-studio adapters``: what the Adapters tab does, from the shell.

Exit codes as for ``train``: 0 done, 2 refused (an unknown id, a bad name, an unconfirmed
delete), 1 failed (the operation itself went wrong).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from core.adapters.store import AdapterStore
from core.errors import StudioError
from core.settings import Settings
from webapp.cli import merge_command
from webapp.cli.train_command import EXIT_FAILED, EXIT_REFUSED


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "adapters", help="list, show, rename, delete, fuse or merge adapters"
    )
    sub = parser.add_subparsers(dest="adapters_command", required=True)
    listing = sub.add_parser("list", help="every adapter, with its base, dataset and losses")
    listing.add_argument("--json", action="store_true", help="print a JSON list")
    sub.add_parser("show", help="an adapter's metadata.json").add_argument("id")
    rename = sub.add_parser("rename", help="give an adapter a new name")
    rename.add_argument("id")
    rename.add_argument("name")
    delete = sub.add_parser("delete", help="delete an adapter for good")
    delete.add_argument("id")
    delete.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    fuse = sub.add_parser("fuse", help="fuse an adapter into its base: a new base model")
    fuse.add_argument("id")
    fuse.add_argument("--name", required=True, help="folder name of the new model")
    merge_command.add_parser(sub)


def add_transfer_parsers(commands) -> None:
    from core.adapters.export import FORMATS
    from core.adapters.gguf_export import GGUF_TYPES

    export = commands.add_parser("export", help="export an adapter (" + ", ".join(FORMATS) + ")")
    export.add_argument("id", help="the adapter: lora/<uuid> or the uuid")
    export.add_argument("--format", choices=FORMATS, default="zip", help="(default: zip)")
    export.add_argument("--out", required=True, help="the file (zip, gguf, gguf-adapter) or folder")
    export.add_argument("--type", choices=GGUF_TYPES, default="f16", help="GGUF weights (f16)")
    export.add_argument("--system", help="a system prompt for the Ollama Modelfile")
    imported = commands.add_parser(
        "import", help="import a studio .zip, a PEFT adapter (folder or .zip) or an mlx-lm folder"
    )
    imported.add_argument("path")
    imported.add_argument("--base", help="base model id (needed for PEFT and mlx-lm adapters)")
    imported.add_argument("--name", help="adapter name")


def export(args: argparse.Namespace) -> int:
    """``lora-studio export``: 0 written, 2 refused (before any work), 1 failed."""
    from core.adapters.export import export_adapter
    from core.serve.registry import ModelRegistry

    settings = Settings.from_env().ensure()
    store = AdapterStore(settings.adapters)
    try:
        adapter_id = store.find(args.id)
        base = ModelRegistry(settings).adapter_base(adapter_id)
    except StudioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    try:
        out = export_adapter(
            store,
            adapter_id,
            base,
            args.format,
            Path(args.out),
            kind=args.type,
            system=args.system,
            progress=lambda text: print(text, file=sys.stderr),
        )
    except StudioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except OSError as exc:
        print(f"error: the export failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"exported lora/{adapter_id} as {args.format} to {out}")
    if args.format == "ollama":
        print(f"then: ollama create NAME -f {out / 'Modelfile'}")
    return 0


def import_(args: argparse.Namespace) -> int:
    from core.adapters.export import import_any
    from core.serve.registry import ModelRegistry

    settings = Settings.from_env().ensure()
    try:
        base = ModelRegistry(settings).base_info(args.base) if args.base else None
        new_id = import_any(Path(args.path), AdapterStore(settings.adapters), base, args.name)
    except StudioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    print(f"imported as lora/{new_id}")
    return 0


def adapters(args: argparse.Namespace) -> int:
    settings = Settings.from_env().ensure()
    store = AdapterStore(settings.adapters)
    if args.adapters_command == "merge":
        return merge_command.merge(args, settings, store)
    try:
        if args.adapters_command != "list":
            args.id = store.find(args.id)  # an id, its first characters, or the name
        adapter = None if args.adapters_command == "list" else store.read(args.id)
    except StudioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    command = args.adapters_command
    if command == "list":
        return _list(settings, as_json=args.json)
    if command == "show":
        meta = adapter.metadata.model_dump(mode="json") if adapter.metadata else None
        print(json.dumps(meta or {"problem": adapter.problem}, indent=2, ensure_ascii=False))
        return 0
    if command == "delete" and not (args.yes or _confirm(f"delete '{adapter.name}'")):
        print("not deleted (confirm, or give --yes)", file=sys.stderr)
        return EXIT_REFUSED
    return _act(command, args, settings, store)


def _act(command: str, args, settings: Settings, store: AdapterStore) -> int:
    try:
        if command == "rename":
            store.rename(args.id, args.name)
            print(f"renamed lora/{args.id} to '{args.name.strip()}'")
        elif command == "delete":
            store.delete(args.id)
            print(f"deleted lora/{args.id}")
        elif command == "fuse":
            return _fuse(args, settings, store)
    except StudioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    return 0


def _fuse(args, settings: Settings, store: AdapterStore) -> int:
    from core.serve.registry import ModelRegistry

    base = ModelRegistry(settings).adapter_base(args.id)
    try:
        path = store.fuse(args.id, base, settings.models, args.name)
    except StudioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"fused into the base model {path.name}: {path}")
    return 0


def _confirm(question: str) -> bool:
    if not sys.stdin.isatty():
        return False
    return input(f"{question}? [y/N] ").strip().lower() in ("y", "yes")


def _list(settings: Settings, as_json: bool) -> int:
    from core.serve.registry import ModelRegistry

    entries = {e.id: e for e in ModelRegistry(settings).entries()}
    rows = []
    for adapter in AdapterStore(settings.adapters).list():
        meta = adapter.metadata
        entry = entries.get(f"lora/{adapter.id}")
        rows.append(
            {
                "id": f"lora/{adapter.id}",
                "name": adapter.name,
                "base": meta.baseModelId if meta else None,
                "dataset": meta.trainingDataset if meta else None,
                "created": meta.createdAt if meta else None,
                "steps": meta.trainingSteps if meta else None,
                "final_loss": meta.finalLoss if meta else None,
                "best_validation_loss": meta.bestValidationLoss if meta else None,
                "available": bool(entry and entry.available),
                "problem": (entry.reason if entry else adapter.problem),
            }
        )
    if as_json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
    elif not rows:
        print("no adapters")
    else:
        _table(rows)
    return 0


def _table(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("id", "name", "base", "dataset", "steps", "best val", "state", box=None)
    for r in rows:
        best = r["best_validation_loss"]
        state = "available" if r["available"] else f"unavailable: {r['problem']}"
        cells = [r["id"], r["name"], r["base"] or "?", r["dataset"] or "", str(r["steps"] or "")]
        table.add_row(*cells, "" if best is None else f"{best:.3f}", state)
    Console(width=200).print(table)
