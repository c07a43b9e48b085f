"""Quantized copies of base models, for QLoRA: mlx-lm's own conversion, into the models folder.

mlx-lm trains LoRA on a quantized base as it is (the LoRA layers wrap its QuantizedLinear
layers), so a 4-bit copy of a model is what makes a 7-8B base fit in 16 GB. The copy is
written next to the models it comes from under a dot-name and renamed into place when whole,
so the model pickers (which watch the folder) never list half a model.

On Apple silicon quantized matrix products are fast; on MLX's Linux CPU backend they are not
(measured: a 4-bit SmolLM2-135M trained about 30x slower per step than float32), which
``cpu_slowdown_warning`` says where it matters.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import uuid
from pathlib import Path

from core.errors import StudioError
from core.models.inspect import ModelInfo, inspect_model

BITS = (4, 8)
GROUP_SIZES = (32, 64, 128)


def quantized_name(name: str, bits: int, group_size: int) -> str:
    suffix = f"-{bits}bit"
    return name + (suffix if group_size == 64 else f"{suffix}-g{group_size}")


def quantize(
    source: Path, models: Path, bits: int, group_size: int = 64, name: str | None = None
) -> Path:
    """Write a ``bits``-bit copy of the model at ``source`` into ``models``; its folder."""
    if bits not in BITS:
        raise StudioError(f"bits = {bits}: choose 4 or 8")
    if group_size not in GROUP_SIZES:
        raise StudioError(f"group_size = {group_size}: choose 32, 64 or 128")
    info = inspect_model(source)
    if info.quantization:
        raise StudioError(
            f"{info.id} is already quantized ({info.quantization.get('bits')}-bit)",
            hint="quantize the float model it came from",
        )
    target = models / (name or quantized_name(info.id, bits, group_size))
    if target.exists():
        raise StudioError(f"{target.name} already exists in {models}", hint="give --name")
    partial = models / f".{target.name}.partial-{uuid.uuid4().hex[:8]}"
    from mlx_lm import convert

    try:
        with contextlib.redirect_stdout(sys.stderr):  # mlx-lm narrates on stdout
            convert(
                str(info.path), str(partial), quantize=True, q_bits=bits, q_group_size=group_size
            )
        partial.rename(target)
    except (OSError, ValueError) as exc:
        raise StudioError(f"quantizing {info.id} failed: {exc}") from exc
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return target


def cpu_slowdown_warning(info: ModelInfo) -> str | None:
    """What to say before training on a quantized base on a CPU backend; None elsewhere."""
    if not info.quantization:
        return None
    import mlx.core as mx

    if mx.default_device() != mx.cpu:
        return None
    bits = info.quantization.get("bits")
    return (
        f"{info.id} is {bits}-bit quantized: on this CPU backend quantized training runs about "
        "30x slower per step than float32 (measured on SmolLM2-135M; docs/benchmarks.md). "
        "It saves memory; if the float32 model fits, train on that."
    )
