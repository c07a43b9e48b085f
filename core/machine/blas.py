"""The fast BLAS libraries the training process can get, and how it gets them.

The Linux CPU wheel of MLX links the reference (Netlib) BLAS, about 20x slower for the
matrix products training is made of. The training process is ours to start, so we preload
a faster library into it with LD_PRELOAD: MKL from PyPI (a dependency of this package on
x86_64 Linux, so set-up stays one pip command) or a system OpenBLAS. Both export the
standard ``sgemm_`` symbol that MLX calls; numbers agree with the reference to float
tolerance. macOS uses Accelerate through MLX and needs none of this, nor do GPU backends
(``mlx[cuda]``). Which one a process gets is ``core.machine.blas_choice``'s to say.
"""

from __future__ import annotations

import ctypes.util
import site
import sys
from dataclasses import dataclass, field
from importlib.metadata import distributions
from pathlib import Path

CHOICES = ("auto", "mkl", "openblas", "stock")


@dataclass(frozen=True)
class Blas:
    """A BLAS choice: its name and the environment the training process needs for it."""

    name: str
    env: dict[str, str] = field(default_factory=dict)
    hint: str | None = None


def mkl() -> Blas | None:
    """MKL from PyPI (libmkl_rt), if it is installed."""
    prefixes = {sys.prefix, sys.base_prefix, site.getuserbase()}
    for prefix in prefixes:
        found = sorted(Path(prefix, "lib").glob("libmkl_rt.so*"))
        if found:
            # GNU OpenMP threads measured fastest; without libgomp MKL runs one thread.
            layer = "GNU" if ctypes.util.find_library("gomp") else "SEQUENTIAL"
            return Blas("mkl", {"LD_PRELOAD": str(found[0]), "MKL_THREADING_LAYER": layer})
    return None


def openblas() -> Blas | None:
    """A system OpenBLAS (Debian's libopenblas0-pthread, or any on the library path)."""
    candidates = [
        "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
        "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0",
    ]
    found = next((p for p in candidates if Path(p).is_file()), None)
    found = found or ctypes.util.find_library("openblas")
    return Blas("openblas", {"LD_PRELOAD": found}) if found else None


def gpu_backend() -> str | None:
    """The installed MLX GPU backend's package (``mlx-cuda-12``...), read from the package
    metadata: this runs before MLX is imported. The preload is a CPU fix; on a GPU the
    matrix products are not the CPU's BLAS at all."""
    for dist in distributions():
        name = (dist.metadata["Name"] or "").lower()
        if name.startswith("mlx-cuda") or name.startswith("mlx_cuda"):
            return name
    return None


def with_blas(env: dict[str, str], blas: Blas) -> dict[str, str]:
    """``env`` with ``blas`` added, keeping any LD_PRELOAD the user already set."""
    merged = dict(env)
    for key, value in blas.env.items():
        if key == "LD_PRELOAD" and merged.get(key):
            value = f"{value}:{merged[key]}"
        merged[key] = value
    return merged


def loaded_blas() -> str:
    """Which BLAS this process actually runs with (read from its memory map)."""
    if sys.platform == "darwin":
        return "accelerate"
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return "unknown"
    if "libmkl_rt" in maps:
        return "mkl"
    if "libopenblas" in maps:
        return "openblas"
    return "stock"
