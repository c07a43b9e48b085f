"""``lora-studio doctor``: what this machine gives training and chat, measured: the CPU, each
BLAS available with its speed on training's matrix products, the one a run gets and why, and
the state of MLX's native JIT kernels."""

from __future__ import annotations

import argparse
import json
import os
import shutil


def add_parser(commands) -> None:
    doctor = commands.add_parser(
        "doctor", help="this machine: CPU, each BLAS's speed, the one runs get, the native JIT"
    )
    doctor.add_argument("--json", action="store_true", help="print one JSON object")


def doctor(args: argparse.Namespace) -> int:
    report = examine()
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(
        f"CPU: {report['cpu']} ({report['cores']} cores); MLX {report['mlx']} on {report['device']}"
    )
    print("BLAS (GFLOP/s on training's matrix products, measured now):")
    for name, gflops in report["blas"].items():
        mark = "  <- runs use this" if name == report["chosen"] else ""
        print(f"  {name:9} {gflops:7.1f}{mark}")
    print(f"chosen: {report['chosen']} ({report['why']})")
    for key, value in report["machine_settings"].items():
        print(f"kept as the machine sets it: {key}={value}")
    jit = report["native_jit"]
    print(f"native JIT: {'on' if jit['on'] else 'off'} ({jit['detail']})")
    return 0


def examine() -> dict:
    from importlib.metadata import version

    from core.machine import blas, blas_choice, device, jit

    found = [b for b in (blas.mkl(), blas.openblas()) if b]
    speeds = {"stock": blas_choice.time_blas(blas.Blas("stock"))}
    speeds |= {b.name: blas_choice.time_blas(b) for b in found}
    chosen = blas_choice.choose_blas()
    asked = os.environ.get("LORA_STUDIO_BLAS", "auto")
    if asked != "auto":
        why = f"LORA_STUDIO_BLAS={asked}" + (f"; {chosen.hint}" if chosen.hint else "")
    elif found and chosen.name == "stock":
        why = chosen.hint  # every fast one failed its measurement
    elif found:
        kept = blas_choice.cache_file()
        why = f"auto: the fastest here that ran, measured once and kept in {kept}"
    else:
        why = chosen.hint or "no other"
    settings = {k: v for k, v in os.environ.items() if k.startswith(("OPENBLAS_", "MKL_"))}
    return {
        "cpu": jit.cpu_name(),
        "cores": os.cpu_count(),
        "mlx": version("mlx"),
        "device": device.describe(),
        "blas": {name: round(gflops, 1) for name, gflops in speeds.items()},
        "chosen": chosen.name,
        "why": why,
        "machine_settings": settings,
        "native_jit": _native_jit(jit),
    }


def _native_jit(jit) -> dict:
    given = dict(os.environ)
    env = jit.native_jit(given)
    if env is given:  # left as it was: the native JIT does not apply
        off = os.environ.get("LORA_STUDIO_NATIVE_JIT") == "0"
        reason = "LORA_STUDIO_NATIVE_JIT=0" if off else "not Linux's CPU backend, or no g++"
        return {"on": False, "detail": reason}
    kernels = sum(1 for _ in os.scandir(env["TMPDIR"])) if os.path.isdir(env["TMPDIR"]) else 0
    compiler = shutil.which("g++") or "g++"
    detail = f"kernels built with {compiler} -march=native, cached in {env['TMPDIR']}"
    return {"on": True, "detail": f"{detail} ({kernels} entries)", "cache": env["TMPDIR"]}
