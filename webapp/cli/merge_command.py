"""``lora-studio adapters merge``: two or more adapters of one base as one new adapter
(core/adapters/merge.py has the methods, as PEFT defines them)."""

from __future__ import annotations

import argparse
import json
import sys

from core.adapters.merge import METHODS, parse_weights
from core.adapters.store import AdapterStore
from core.errors import StudioError
from core.settings import Settings
from webapp.cli.train_command import EXIT_REFUSED


def add_parser(sub) -> None:
    merge = sub.add_parser("merge", help="merge two or more adapters of one base into a new one")
    merge.add_argument("ids", nargs="+", metavar="ID", help="the adapters (ids, or their names)")
    merge.add_argument("--method", choices=METHODS, default="linear", help="(default: linear)")
    merge.add_argument(
        "--weights", help="one weight per adapter, comma-separated (default: 1 each)"
    )
    merge.add_argument("--density", type=float, default=1.0, help="ties, dare: share kept (1)")
    merge.add_argument("--rank", type=int, help="svd: the merged rank (default: the largest)")
    merge.add_argument("--seed", type=int, default=0, help="dare: the random drops' seed (0)")
    merge.add_argument("--name", required=True, help="the merged adapter's name")
    merge.add_argument("--json", action="store_true", help="print the new adapter as JSON")


def merge(args: argparse.Namespace, settings: Settings, store: AdapterStore) -> int:
    """0 merged, 2 refused (before anything is written)."""
    from core.adapters.merge import merge_adapters
    from core.serve.registry import ModelRegistry

    try:
        ids = [store.find(text) for text in args.ids]
        weights = parse_weights(args.weights)
        base = ModelRegistry(settings).adapter_base(ids[0])
        new_id = merge_adapters(
            store,
            ids,
            base,
            method=args.method,
            name=args.name,
            weights=weights,
            density=args.density,
            rank=args.rank,
            seed=args.seed,
        )
    except StudioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    if args.json:
        print(json.dumps({"id": new_id, "name": args.name, "parts": ids, "method": args.method}))
    else:
        print(f"merged {len(ids)} adapters ({args.method}) into lora/{new_id} '{args.name}'")
    return 0
