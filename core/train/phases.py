"""How long a training process took to be ready, phase by phase (the ``start`` event's
``ready_seconds`` and ``phases``)."""

from __future__ import annotations

import os
import time
from pathlib import Path


class Phases:
    """Seconds of each start-up phase, the first from the process's own start (the
    interpreter and the imports), read from /proc where Linux has it."""

    def __init__(self) -> None:
        self.phases: dict[str, float] = {}
        self._last = time.monotonic()
        since_start = _process_age()
        if since_start is not None:
            self.phases["imports"] = round(since_start, 2)

    def mark(self, name: str) -> None:
        now = time.monotonic()
        self.phases[name] = round(now - self._last, 2)
        self._last = now

    def total(self) -> float:
        return round(sum(self.phases.values()), 2)


def _process_age() -> float | None:
    """Seconds since this process started (Linux: /proc), or None."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None
