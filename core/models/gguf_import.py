"""Import a GGUF file as an MLX base model folder, for every family the export writes.

MLX reads GGUF itself, tensors (F32, F16, Q4_0, Q4_1, Q8_0) and metadata alike; what it lacks
is the mapping to mlx-lm's layout: a config.json (``core.models.gguf_config``), Hugging Face
tensor names (the export's own map, ``core.models.gguf_arch``, read backwards over the
parameters of mlx-lm's class for the family), llama.cpp's per-family changes undone (q/k rows
permuted for its rope layout, Gemma's norms held as the factor itself), and a tokenizer rebuilt
from the GGUF vocabulary. Weights are saved in float32: on Linux CPUs the fast BLAS path is
float32 (bf16 runs ~30x slower).
"""

from __future__ import annotations

import json
import logging
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from core.errors import StudioError
from core.models.gguf_arch import gguf_family, tensor_names
from core.models.gguf_config import model_config, value
from core.models.gguf_tokenizer import build_tokenizer

log = logging.getLogger(__name__)

# tensors llama.cpp adds that mlx-lm's models compute instead (read into config.json)
ROPE_TENSORS = ("rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight")


def unpermute(weight, heads: int):
    """Undo llama.cpp's rope permutation of q/k rows (the inverse of its convert script's
    ``reshape(heads, 2, d, ...).swapaxes(1, 2)``); without it the model talks nonsense."""
    rows = weight.shape[0]
    return (
        weight.reshape(heads, rows // heads // 2, 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def hf_names(config: dict) -> dict[str, str]:
    """``gguf name -> mlx-lm name`` for the model ``config`` describes: mlx-lm's class for
    the family lists its parameters (no weights are made), the export's map names them."""
    import importlib

    from mlx.utils import tree_flatten
    from mlx_lm.utils import MODEL_REMAPPING

    model_type = config["model_type"]
    module = importlib.import_module(f"mlx_lm.models.{MODEL_REMAPPING.get(model_type, model_type)}")
    model = module.Model(module.ModelArgs.from_dict(config))
    name_of = tensor_names(gguf_family(config), config["num_hidden_layers"])
    return {name_of(name): name for name, _ in tree_flatten(model.parameters())}


def mlx_weights(tensors: dict, config: dict) -> dict:
    """The GGUF's tensors under mlx-lm's names, llama.cpp's changes undone."""
    family, names = gguf_family(config), hf_names(config)
    weights = {}
    for name, tensor in tensors.items():
        if name in ROPE_TENSORS:
            continue
        if name not in names:
            raise StudioError(f"GGUF tensor {name} has no place in mlx-lm's {config['model_type']}")
        mlx_name = names[name]
        if family.permute_qk and ".q_proj." in mlx_name:
            tensor = unpermute(tensor, config["num_attention_heads"])
        elif family.permute_qk and ".k_proj." in mlx_name:
            tensor = unpermute(tensor, config["num_key_value_heads"])
        if mlx_name.endswith("norm.weight"):
            tensor = tensor - family.norm_shift
        weights[mlx_name] = tensor
    missing = sorted(set(names.values()) - set(weights))
    if missing:
        raise StudioError(
            f"the GGUF lacks {len(missing)} of the model's tensors: {missing[0]}, ..."
        )
    return weights


def dequantized(tensors: dict) -> dict:
    """float32 tensors, packed (weight, scales, biases) triplets expanded; GGUF quants use
    groups of 32 and the bit width follows from the packed and unpacked widths."""
    import mlx.core as mx

    out = {}
    for name, tensor in tensors.items():
        if name.endswith((".scales", ".biases")):
            continue
        stem = name.removesuffix(".weight")
        if f"{stem}.scales" in tensors:
            scales, biases = tensors[f"{stem}.scales"], tensors[f"{stem}.biases"]
            width = scales.shape[-1] * 32
            bits = 32 * tensor.shape[-1] // width
            tensor = mx.dequantize(tensor, scales, biases, group_size=32, bits=bits)
        out[name] = tensor.astype(mx.float32)
    return out


def import_gguf(
    gguf: Path, models_folder: Path, name: str, progress: Callable[[str], None] = log.info
) -> Path:
    """Convert ``gguf`` into ``models_folder/name`` (appears whole, by one rename)."""
    import mlx.core as mx

    target = models_folder / name
    if target.exists():
        raise StudioError(f"a model named {name} already exists in {models_folder}")
    progress(f"reading {gguf.name}")
    try:
        tensors, meta = mx.load(str(gguf), return_metadata=True)
    except Exception as exc:  # noqa: BLE001 - MLX names the unsupported tensor type
        raise StudioError(
            f"MLX cannot read {gguf.name}: {exc}",
            hint="GGUF files with F32, F16, Q4_0, Q4_1 or Q8_0 tensors can be imported",
        ) from None
    staging = models_folder / f".import-{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)
    try:
        progress("dequantizing to float32")
        tensors = dequantized(tensors)
        config = model_config(meta, tensors)
        weights = mlx_weights(tensors, config)
        pre = value(meta, "tokenizer.ggml.pre")
        if pre:  # kept so that a GGUF export names llama.cpp's pre-tokenizer again
            config["gguf_tokenizer_pre"] = pre
        progress("writing model.safetensors")
        mx.save_safetensors(str(staging / "model.safetensors"), weights, metadata={"format": "mlx"})
        (staging / "config.json").write_text(json.dumps(config, indent=2))
        progress("building the tokenizer")
        build_tokenizer(meta, staging)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    progress(f"imported {gguf.name} as {target}")
    return target
