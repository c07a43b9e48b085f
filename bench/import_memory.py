"""Memory for a large CSV import: ``lora-studio data import``'s path (streamed through the
mapping and the row checks into datasets/NAME.jsonl) against reading the CSV whole with
pandas (the reference: what a conversion script usually does).

A CSV of ``--mb`` megabytes (question, answer with line breaks inside quotes, a number
column) is generated; each measurement runs in a fresh Python process and reports its peak
RSS (``ru_maxrss``) minus that of the same process before the step (imports included).

    python bench/import_memory.py [--mb 1024]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

from peak_rss import measure

IMPORTS = "import pandas, pyarrow, core.data.imports"
STEPS = {
    "lora-studio data import (streamed)": """
from core.data.imports import Options, import_dataset
report = import_dataset(str(path), "big", home / "datasets",
                        Options(pairs=("prompt=question", "completion=answer")))
assert report.rows_written > 0
""",
    "reference: pandas.read_csv, whole": """
import pandas
frame = pandas.read_csv(path)
""",
}


def make_csv(path: Path, megabytes: int) -> int:
    """A CSV of about ``megabytes`` MB; returns its row count."""
    answer = 'It is a long answer,\nwith a line break, and quotes: "like these". ' * 8
    rows = 0
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "question", "answer", "score"])
        while f.tell() < megabytes * 1_000_000:
            for _ in range(1000):
                writer.writerow([rows, f"What is question number {rows}?", answer, rows % 5])
                rows += 1
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=1024, help="the CSV's size in MB")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        path = home / "big.csv"
        started = time.perf_counter()
        rows = make_csv(path, args.mb)
        print(
            f"generated {path.stat().st_size / 1e6:.0f} MB, {rows} rows "
            f"in {time.perf_counter() - started:.0f} s",
            file=sys.stderr,
        )
        results = {"csv_mb": round(path.stat().st_size / 1e6), "rows": rows}
        for name, step in STEPS.items():
            before, peak, seconds = measure(step, path, home, IMPORTS)
            results[name] = {"added_mb": round(peak - before, 1), "seconds": round(seconds, 1)}
            print(name, results[name], file=sys.stderr)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
