"""Choose a fast BLAS for the training process.

The Linux CPU wheel of MLX links the reference (Netlib) BLAS, about 20x slower for the
matrix products training is made of. The training process is ours to start, so we preload
a faster library into it with LD_PRELOAD: MKL from PyPI (a dependency of this package on
x86_64 Linux, so set-up stays one pip command) or a system OpenBLAS. Both export the
standard ``sgemm_`` symbol that MLX calls; numbers agree with the reference to float
tolerance. macOS uses Accelerate through MLX and needs none of this, nor do GPU backends
(``mlx[cuda]``).
"""

from __future__ import annotations

import ctypes.util
import os
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


def _mkl() -> Blas | None:
    prefixes = {sys.prefix, sys.base_prefix, site.getuserbase()}
    for prefix in prefixes:
        found = sorted(Path(prefix, "lib").glob("libmkl_rt.so*"))
        if found:
            # GNU OpenMP threads measured fastest; without libgomp MKL runs one thread.
            layer = "GNU" if ctypes.util.find_library("gomp") else "SEQUENTIAL"
            return Blas("mkl", {"LD_PRELOAD": str(found[0]), "MKL_THREADING_LAYER": layer})
    return None


def _openblas() -> Blas | None:
    candidates = [
        "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
        "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0",
    ]
    found = next((p for p in candidates if Path(p).is_file()), None)
    found = found or ctypes.util.find_library("openblas")
    return Blas("openblas", {"LD_PRELOAD": found}) if found else None


def choose_blas(choice: str | None = None) -> Blas:
    """The BLAS the training process should use.

    ``choice`` (or ``LORA_STUDIO_BLAS``) is one of auto, mkl, openblas, stock; auto takes a
    system OpenBLAS, else MKL, else falls back to the stock one with a one-line hint.
    """
    choice = (choice or os.environ.get("LORA_STUDIO_BLAS") or "auto").lower()
    if choice not in CHOICES:
        choice = "auto"
    if not sys.platform.startswith("linux") or choice == "stock" or gpu_backend():
        return Blas("stock")
    # A system OpenBLAS trained 14% faster than MKL here, but only MKL comes with pip install.
    finders = {"mkl": [_mkl], "openblas": [_openblas], "auto": [_openblas, _mkl]}[choice]
    for find in finders:
        blas = find()
        if blas:
            return blas
    return Blas(
        "stock",
        hint="training uses MLX's slow reference BLAS: `pip install mkl` (x86_64) or "
        "`apt-get install libopenblas0-pthread` makes it many times faster",
    )


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


def reexec_with_fast_blas(argv: list[str]) -> None:
    """Restart this process with the fast BLAS preloaded, if it is not loaded yet.

    LD_PRELOAD only acts at process start, so a server that generates text (the page, the
    API) re-executes itself once; a marker variable prevents a loop. Call it before MLX is
    imported. Returns (without doing anything) when there is nothing to gain.
    """
    if os.environ.get("LORA_STUDIO_BLAS_REEXEC") or loaded_blas() != "stock":
        return
    blas = choose_blas()
    if blas.name == "stock":
        return
    env = with_blas(dict(os.environ), blas)
    env["LORA_STUDIO_BLAS_REEXEC"] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *argv], env)
