"""Which model families go to GGUF, and how: the ``gguf`` package's own tables (llama.cpp's
architecture names, ``TensorNameMap``, its metadata keys) and the few rules llama.cpp's
converter applies per family, never a hand-written table of tensor names.

The rules, as ``convert_hf_to_gguf.py`` applies them:
- llama and mistral (llama.cpp's ``llama`` architecture) keep q and k with their rows
  permuted for llama.cpp's rope layout; qwen2, qwen3 and qwen3_moe do not (NeoX rope).
- a mixture of experts' experts are one tensor per projection (``ffn_gate_exps``: experts x
  out x in), which is how mlx-lm already holds them (``mlp.switch_mlp``).
- Llama 3's ``rope_scaling`` becomes a ``rope_freqs`` tensor of per-frequency factors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from core.errors import StudioError


@dataclass(frozen=True)
class GGUFFamily:
    name: str  # llama.cpp's architecture name (gguf.MODEL_ARCH_NAMES)
    permute_qk: bool


# mlx-lm model_type -> (gguf.MODEL_ARCH member, permuted q/k)
_FAMILIES = {
    "llama": ("LLAMA", True),
    "mistral": ("LLAMA", True),
    "qwen2": ("QWEN2", False),
    "qwen3": ("QWEN3", False),
    "qwen3_moe": ("QWEN3MOE", False),
}
EXPORTABLE = tuple(_FAMILIES)


def gguf_family(config: dict) -> GGUFFamily:
    """The GGUF family of a model's config.json; a StudioError naming the ones the export
    knows when it is none of them."""
    import gguf

    model_type = config.get("model_type")
    if model_type not in _FAMILIES:
        raise StudioError(
            f"GGUF export supports the {', '.join(EXPORTABLE)} families, not {model_type!r}",
            hint="export to PEFT instead, and convert with llama.cpp's convert_hf_to_gguf.py",
        )
    member, permute_qk = _FAMILIES[model_type]
    return GGUFFamily(gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH[member]], permute_qk)


def tensor_names(family: GGUFFamily, blocks: int):
    """``hf_name -> gguf name`` for this family (``model.layers.3.self_attn.q_proj.weight``
    -> ``blk.3.attn_q.weight``), from the ``gguf`` package's map."""
    import gguf

    arch = next(a for a, name in gguf.MODEL_ARCH_NAMES.items() if name == family.name)
    names = gguf.get_tensor_name_map(arch, blocks)

    def name(hf_name: str) -> str:
        stem, _, leaf = hf_name.rpartition(".")
        found = names.get_name(stem.replace(".switch_mlp.", ".experts."))
        if found is None:
            raise StudioError(f"{hf_name} has no place in llama.cpp's {family.name} tensors")
        return f"{found}.{leaf}"

    return name


def permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's rope permutation of q/k rows (what its ``unpermute`` undoes)."""
    rows = weight.shape[0]
    return (
        weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def head_dim(config: dict) -> int:
    return config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]


def llama3_rope_factors(config: dict) -> np.ndarray | None:
    """Llama 3's frequency factors (``rope_freqs``), as llama.cpp's converter computes them;
    None for a model without llama3 rope scaling."""
    scaling = config.get("rope_scaling") or {}
    if str(scaling.get("rope_type", scaling.get("type", ""))).lower() != "llama3":
        return None
    dim, base = head_dim(config), config.get("rope_theta", 10000.0)
    factor = scaling.get("factor", 8.0)
    low, high = scaling.get("low_freq_factor", 1.0), scaling.get("high_freq_factor", 4.0)
    old_context = scaling.get("original_max_position_embeddings", 8192)
    low_wavelen, high_wavelen = old_context / low, old_context / high
    factors = []
    for i in range(0, dim, 2):
        wavelen = 2 * math.pi * base ** (i / dim)
        if wavelen < high_wavelen:
            factors.append(1.0)
        elif wavelen > low_wavelen:
            factors.append(factor)
        else:
            smooth = (old_context / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(factors, dtype=np.float32)


# llama.cpp's name for a byte-level BPE pre-tokenizer (``tokenizer.ggml.pre``), by the regex
# that splits text before the bytes are mapped (llama.cpp's converter finds the same names by
# hashing a test string's tokens)
_SPLITS = {
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+"
    r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": "qwen2",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+"
    r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": "llama-bpe",
}


def tokenizer_pre(tokenizer: dict) -> str:
    """llama.cpp's pre-tokenizer name for a tokenizer.json: GPT-2's byte-level split, or a
    known regex split before it (Qwen 2, Llama 3); a StudioError for any other."""
    pre = tokenizer.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [part.get("type") for part in parts]
    if kinds == ["ByteLevel"]:
        return "gpt-2"
    if kinds == ["Split", "ByteLevel"]:
        regex = (parts[0].get("pattern") or {}).get("Regex")
        if regex in _SPLITS:
            return _SPLITS[regex]
    raise StudioError(
        "GGUF export supports byte-level BPE tokenizers (GPT-2's split, or Qwen 2's or "
        "Llama 3's) only",
        hint="export to PEFT instead",
    )
