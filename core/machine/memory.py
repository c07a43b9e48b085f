"""How much memory a run may use on this machine.

``LORA_STUDIO_MEMORY_GB`` sets the budget by hand (a shared machine, or a test). Otherwise,
on Apple silicon it is Metal's recommended working set (what MLX itself sizes its wired
memory by); on a CUDA GPU, the device's memory; on a CPU, the memory the kernel could hand
out now (Linux's ``MemAvailable``), or the machine's whole memory where that is not known.
"""

from __future__ import annotations

import os
from pathlib import Path

from core.errors import StudioError


def available_memory_gb() -> float | None:
    """The budget in GB, or None when this platform does not say."""
    budget = os.environ.get("LORA_STUDIO_MEMORY_GB")
    if budget:
        try:
            return float(budget)
        except ValueError:
            raise StudioError(
                f"LORA_STUDIO_MEMORY_GB = {budget!r} is not a number of GB",
                hint="set it to a number (e.g. 16), or unset it to use the machine's memory",
            ) from None
    return _accelerator_gb() or _system_gb()


def _accelerator_gb() -> float | None:
    import mlx.core as mx

    if mx.default_device() == mx.cpu:
        return None
    info = mx.device_info()
    size = info.get("max_recommended_working_set_size") or info.get("memory_size")
    return size / 1e9 if size else None


def _system_gb() -> float | None:
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
