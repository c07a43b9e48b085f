"""Small builders of test data."""

from __future__ import annotations

import json
import random
from pathlib import Path


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def colour_rows(n: int = 64, seed: int = 0) -> list[dict]:
    """Chat rows with one fixed answer pattern: easy to learn, so loss falls in an epoch."""
    rng = random.Random(seed)
    return [
        {
            "messages": [
                {"role": "user", "content": f"What colour is the sky number {i}?"},
                {"role": "assistant", "content": f"The sky is {rng.choice(['red', 'blue'])}."},
            ]
        }
        for i in range(n)
    ]
