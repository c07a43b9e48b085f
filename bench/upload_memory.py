"""Memory for a large upload: the server's path (store, check, split, preview) against reading
the rows whole (the reference), and the training process, which must hold them.

A chat .jsonl of ``--mb`` megabytes is generated; each measurement runs in a fresh Python
process and reports its peak RSS (``ru_maxrss``), minus that of the same process before the
step (imports included), so the figure is what the step itself costs.

    python bench/upload_memory.py [--mb 500]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from peak_rss import measure

IMPORTS = "import mlx.core, mlx_lm"
STEPS = {
    # what the page does with an upload, up to the run folder's data/
    "server: store, check, split (streamed)": """
from core.data.uploads import store_upload
from core.data.scan import scan_dataset
stored = store_upload(path, home / "datasets")
scan = scan_dataset(stored, batch_size=4)
scan.write(home / "run" / "data")
""",
    # the reference: every row in memory, as the studio did before
    "reference: every row read into memory": """
from core.data.scan import load_dataset
rows = load_dataset(path, batch_size=4)
""",
    # the training process reads the run's split whole: mlx-lm's datasets index the rows
    "worker: the run's rows loaded for training": """
from core.data.scan import load_dataset
data = load_dataset(home / "run" / "data", batch_size=4)
""",
}


def make_dataset(path: Path, megabytes: int) -> int:
    """A chat dataset of about ``megabytes`` MB; returns its row count."""
    rows = 0
    with path.open("w", encoding="utf-8") as f:
        while f.tell() < megabytes * 1_000_000:
            question = f"Question {rows}: what colour is the sky over city {rows % 977}? " * 3
            answer = f"Arr, the sky over city {rows % 977} be blue, matey! " * 4
            messages = [
                {"role": "user", "content": question},
                {"role": "assistant", "content": answer},
            ]
            f.write(json.dumps({"messages": messages}) + "\n")
            rows += 1
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home, path = Path(tmp), Path(tmp) / "upload.jsonl"
        start = time.perf_counter()
        rows = make_dataset(path, args.mb)
        size = path.stat().st_size / 1e6
        print(f"dataset: {size:.0f} MB, {rows:,} rows ({time.perf_counter() - start:.0f} s)")
        print(f"{'step':42} {'RSS added':>10} {'time':>7}")
        for name, step in STEPS.items():
            before, peak, seconds = measure(step, path, home, IMPORTS)
            print(f"{name:42} {peak - before:8.0f} MB {seconds:6.1f} s")


if __name__ == "__main__":
    main()
