"""What the benchmark scripts share: a function's wall time."""

from __future__ import annotations

import time
from collections.abc import Callable


def timed(function: Callable[[], object]) -> float:
    """Seconds ``function()`` took, by the monotonic high-resolution clock."""
    start = time.perf_counter()
    function()
    return time.perf_counter() - start
