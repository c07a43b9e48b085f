"""Which device MLX computes on here: what the page and ``/v1/models`` tell people.

The same install trains on Apple silicon's GPU (Metal), an NVIDIA GPU (``mlx[cuda]``) or the
CPU (``mlx[cpu]`` on Linux); nothing in the studio depends on which, but speed and the right
settings (the BLAS preload, quantized bases) do, so it is said where people look.
"""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=1)
def describe() -> str:
    """``"gpu (NVIDIA H100 80GB HBM3, cuda)"``, ``"gpu (Apple M2 Max, metal)"``, ``"cpu (AMD
    EPYC ...)"``."""
    import mlx.core as mx

    if mx.cuda.is_available():
        backend = "cuda"
    elif mx.metal.is_available():
        backend = "metal"
    else:
        backend = "cpu"
    kind = "cpu" if mx.default_device() == mx.cpu else "gpu"
    try:
        name = str(mx.device_info().get("device_name") or "").strip()
    except (AttributeError, RuntimeError):
        name = ""
    if backend == kind:  # the CPU backend on the CPU: said once
        return f"{kind} ({name})" if name else kind
    return f"{kind} ({name}, {backend})" if name else f"{kind} ({backend})"
