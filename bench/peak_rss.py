"""What one step of a benchmark adds to a process's peak memory: the step runs in a fresh
Python process, whose peak RSS (``ru_maxrss``) is read before the step (the imports the step
needs included) and after it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

MEASURE = """
import resource, sys, time
from pathlib import Path
{imports}  # the imports every step pays, before the baseline
path, home = Path(sys.argv[1]), Path(sys.argv[2])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
{step}
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(before / 1024, peak / 1024, seconds)
"""


def measure(step: str, path: Path, home: Path, imports: str) -> tuple[float, float, float]:
    """(MB before the step, peak MB, seconds) of ``step`` (code that reads ``path`` and
    ``home``), after ``imports`` (an import line)."""
    code = MEASURE.format(step=step.strip(), imports=imports)
    done = subprocess.run(
        [sys.executable, "-c", code, str(path), str(home)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    before, peak, seconds = map(float, done.stdout.split())
    return before, peak, seconds
