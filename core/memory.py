"""How much memory a run may use on this machine.

``LORA_STUDIO_MEMORY_GB`` sets the budget by hand (a shared machine, or a test); otherwise it
is the memory the kernel could hand out now (Linux's ``MemAvailable``), or the machine's whole
memory where that is not known (macOS, where Metal's working set is a share of it).
"""

from __future__ import annotations

import os
from pathlib import Path


def available_memory_gb() -> float | None:
    """The budget in GB, or None when this platform does not say."""
    budget = os.environ.get("LORA_STUDIO_MEMORY_GB")
    if budget:
        return float(budget)
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024 / 1e9
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (ValueError, OSError, AttributeError):
        return None
