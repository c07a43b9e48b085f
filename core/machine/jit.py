"""MLX's run-time CPU kernels, built for the CPU they run on.

On the CPU, ``mx.compile`` fuses element-wise operations into C++ kernels that MLX builds while
the program runs: it calls ``g++ -std=c++17 -O3 -Wall -fPIC -shared`` (the ``g++`` found on
PATH) and caches the libraries under ``$TMPDIR/mlx/<version>/cpu``. Without ``-march`` they are
built for the baseline x86-64 (SSE2, no AVX, no FMA): their ``exp`` runs one float at a time.
MLX has no setting for these flags. The training process is the studio's to start, so:

- its PATH begins with a folder whose ``g++`` adds ``-march=native`` and runs the real one;
- its TMPDIR is a folder of its own, one per CPU model and flag set, so kernels built for this
  CPU are never loaded by another one (a studio home shared between machines) and never mix with
  MLX's usual cache (where other programs expect baseline kernels).

Measured on the demo run (docs/benchmarks.md): 12% faster per step; losses agree to float
tolerance (FMA rounds differently), tested. Linux with MLX's CPU backend only: macOS computes
on Metal (its CPU kernels are clang's, built for the host already), CUDA on the GPU.
``LORA_STUDIO_NATIVE_JIT=0`` turns it off.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import sys
from pathlib import Path

import platformdirs

from core.machine.blas import gpu_backend

SHIM = """#!/bin/sh
# LoRA Studio: MLX's JIT kernels built for this CPU (see core/jit.py)
exec "{}" -march=native "$@"
"""


def cpu_key() -> str:
    """A short name for this CPU model and its instruction sets."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        info = ""
    wanted = [line for line in info.splitlines() if line.startswith(("model name", "flags"))]
    identity = "\n".join(sorted(set(wanted))) or platform.processor() or platform.machine()
    return hashlib.sha256(identity.encode()).hexdigest()[:12]


def cpu_name() -> str:
    """The CPU's model name, as people know it (``AMD EPYC 9B45``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def native_jit(env: dict[str, str], cache: Path | None = None) -> dict[str, str]:
    """``env`` for a training process whose MLX JIT kernels are built for this CPU; ``env``
    unchanged where that does not apply (not Linux, a GPU backend, no g++, turned off).

    ``cache`` defaults to the user's cache folder (``~/.cache/lora-studio``): kernels are
    built once per CPU model, for every studio."""
    if (
        env.get("LORA_STUDIO_NATIVE_JIT") == "0"
        or not sys.platform.startswith("linux")
        or gpu_backend()
    ):
        return env
    cache = cache or Path(platformdirs.user_cache_dir("lora-studio"))
    folder = cache / "jit-native" / cpu_key()
    shim = folder / "bin" / "g++"
    path = os.pathsep.join(
        entry
        for entry in env.get("PATH", os.defpath).split(os.pathsep)
        if Path(entry) != shim.parent  # never the shim itself
    )
    compiler = shutil.which("g++", path=path)
    if compiler is None:
        return env
    text = SHIM.format(os.path.realpath(compiler))
    if not shim.is_file() or shim.read_text() != text:
        shim.parent.mkdir(parents=True, exist_ok=True)
        partial = shim.with_name(f".g++.{os.getpid()}")
        partial.write_text(text)
        partial.chmod(0o755)
        os.replace(partial, shim)  # a concurrent run sees the old shim or the new, whole
    return env | {"PATH": f"{shim.parent}{os.pathsep}{path}", "TMPDIR": str(folder)}
