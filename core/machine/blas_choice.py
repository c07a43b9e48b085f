"""Which BLAS the training process (and the server) gets: the one ``LORA_STUDIO_BLAS`` names,
or ``auto``'s choice, made by measurement on this machine.

No BLAS is the fastest everywhere: on an AMD Zen 5 the system OpenBLAS trained 8% faster than
MKL, on an Intel Xeon (AVX-512, AMX) MKL trained 2.3x faster than Debian's OpenBLAS. So when
more than one is available, ``auto`` times each on the matrix products training runs (in a
subprocess that has it preloaded, well under a second a shape), takes the fastest, and keeps
the choice in the user's cache, keyed by the CPU model, MLX's version and each library's file:
a new CPU, a new MLX or a changed library is measured again. Settings the machine's owner
made (``OPENBLAS_CORETYPE`` and the like) pass through untouched. ``lora-studio doctor``
prints the table.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

import platformdirs

from core.files import write_json_atomic
from core.machine.blas import CHOICES, Blas, gpu_backend, mkl, openblas, with_blas
from core.machine.jit import cpu_key, cpu_name

# (tokens, in, out) of the products a LoRA step on a small model runs: a batch of 4 x 128
# tokens through 576-wide projections and a 1,536-wide MLP (SmolLM2-135M's shapes)
SHAPES = ((512, 576, 576), (512, 576, 1536), (512, 1536, 576))
SECONDS_PER_SHAPE = 0.25
STOCK_HINT = (
    "training uses MLX's slow reference BLAS: `pip install mkl` (x86_64) or "
    "`apt-get install libopenblas0-pthread` makes it many times faster"
)
FAILED_HINT = (
    "no fast BLAS ran here (each one measured 0 GFLOP/s: it crashed, or did not finish in "
    "time on a loaded machine), so runs use MLX's stock BLAS; nothing was kept, and the next "
    "start (or `lora-studio doctor`) measures again"
)


@dataclass(frozen=True)
class Measured:
    """auto's choice among ``gflops`` (each candidate's speed), and whether it was cached."""

    chosen: Blas
    gflops: dict[str, float]
    cached: bool


def choose_blas(
    choice: str | None = None,
    *,
    cache: Path | None = None,
    timer: Callable[[Blas], float] | None = None,
) -> Blas:
    """The BLAS a training process should use: ``choice`` (or ``LORA_STUDIO_BLAS``: auto,
    mkl, openblas or stock); auto measures when there is more than one to choose from."""
    choice = (choice or os.environ.get("LORA_STUDIO_BLAS") or "auto").lower()
    if choice not in CHOICES:
        choice = "auto"
    if not sys.platform.startswith("linux") or choice == "stock" or gpu_backend():
        return Blas("stock")
    named = {"mkl": mkl, "openblas": openblas}
    found = [blas for find in named.values() for blas in [find()] if blas]
    if choice in named:
        found = [blas for blas in found if blas.name == choice]
    if not found:
        return Blas("stock", hint=STOCK_HINT)
    # even a single library is measured (once): one that crashes here must not be chosen
    return measure_choice(found, cache or cache_file(), timer or time_blas).chosen


def measure_choice(candidates: list[Blas], cache: Path, timer: Callable[[Blas], float]) -> Measured:
    """The fastest of ``candidates`` by ``timer`` (GFLOP/s), from ``cache`` when it was
    measured for this CPU, this MLX and these very library files; the stock BLAS, cached
    nowhere, when none of them ran."""
    key = _key(candidates)
    try:
        stored = json.loads(cache.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        stored = {}
    if isinstance(stored, dict) and stored.get("key") == key:
        chosen = next((c for c in candidates if c.name == stored.get("chosen")), None)
        if chosen is not None:
            return Measured(chosen, stored.get("gflops", {}), cached=True)
    gflops = {blas.name: round(timer(blas), 1) for blas in candidates}
    working = [blas for blas in candidates if gflops[blas.name] > 0]
    if not working:  # the stock BLAS, and no record: a passing failure is not kept
        return Measured(Blas("stock", hint=FAILED_HINT), gflops, cached=False)
    chosen = max(working, key=lambda blas: gflops[blas.name])
    cache.parent.mkdir(parents=True, exist_ok=True)
    record = {"key": key, "chosen": chosen.name, "gflops": gflops, "cpu": cpu_name()}
    write_json_atomic(cache, record | {"measured_at": datetime.now(UTC).isoformat()})
    return Measured(chosen, gflops, cached=False)


def cache_file() -> Path:
    return Path(platformdirs.user_cache_dir("lora-studio")) / "blas-choice.json"


def _key(candidates: list[Blas]) -> str:
    """What a measurement holds for: the CPU, MLX's version, each library file as it is."""
    parts = [cpu_key(), version("mlx")]
    for blas in candidates:
        library = Path(blas.env.get("LD_PRELOAD", ""))
        try:
            stat = library.stat()
            parts.append(f"{blas.name}:{library}:{stat.st_size}:{stat.st_mtime_ns}")
        except OSError:
            parts.append(f"{blas.name}:{library}:missing")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def time_blas(blas: Blas) -> float:
    """GFLOP/s of ``blas`` on SHAPES, in a subprocess that has it preloaded (0 when it
    cannot run there: a library built for another CPU dies of an illegal instruction)."""
    env = with_blas(dict(os.environ), blas)
    command = [sys.executable, "-m", "core.machine.blas_choice", "--time"]
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
        return float(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else 0.0
    except (subprocess.TimeoutExpired, ValueError, IndexError):
        return 0.0


def _time_here() -> float:
    """GFLOP/s of this process's BLAS on SHAPES (MLX on the CPU, one warm-up each)."""
    import mlx.core as mx

    mx.set_default_device(mx.cpu)
    flops, seconds = 0.0, 0.0
    for m, k, n in SHAPES:
        a, b = mx.random.normal((m, k)), mx.random.normal((k, n))
        mx.eval(a @ b)
        count, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < SECONDS_PER_SHAPE or count == 0:
            mx.eval(a @ b)
            count += 1
        flops, seconds = flops + 2.0 * m * k * n * count, seconds + elapsed
    return flops / seconds / 1e9


def reexec_with_fast_blas(argv: list[str]) -> None:
    """Restart this process with the chosen BLAS preloaded, if it is not loaded yet.

    LD_PRELOAD only acts at process start, so a server that generates text (the page, the
    API) re-executes itself once; a marker variable prevents a loop. Call it before MLX is
    imported. Returns (without doing anything) when there is nothing to gain.
    """
    from core.machine.blas import loaded_blas

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


if __name__ == "__main__" and sys.argv[1:] == ["--time"]:
    print(f"{_time_here():.2f}")
elif __name__ == "__main__" and sys.argv[1:] == ["--env"]:
    # the chosen BLAS's variables, NAME=VALUE per line, for `env $(...) command`: a
    # benchmark or the test suite computing in its own process as the studio's runs do
    print("\n".join(f"{key}={value}" for key, value in choose_blas().env.items()))
