"""Which model families go to GGUF, and how: the ``gguf`` package's own tables (llama.cpp's
architecture names, ``TensorNameMap``, its metadata keys) and the few rules llama.cpp's
converter applies per family, never a hand-written table of tensor names.

The rules, as ``convert_hf_to_gguf.py`` applies them:
- llama and mistral (llama.cpp's ``llama`` architecture) keep q and k with their rows
  permuted for llama.cpp's rope layout; qwen2, qwen3 and qwen3_moe do not (NeoX rope).
- a mixture of experts' experts are one tensor per projection (``ffn_gate_exps``: experts x
  out x in), which is how mlx-lm already holds them (``mlp.switch_mlp``).
- Llama 3's ``rope_scaling`` becomes a ``rope_freqs`` tensor of per-frequency factors;
  Phi-3's long-context factors (``longrope``) become ``rope_factors_long`` / ``_short``.
- smollm3 is llama's layout (permuted q/k); phi3 keeps its fused ``qkv_proj`` and
  ``gate_up_proj`` as llama.cpp's ``attn_qkv`` and ``ffn_up``.
- Gemma's norms hold ``weight - 1`` (its RMSNorm multiplies by ``1 + weight``); llama.cpp's
  hold the factor itself, so the converter adds 1 to every ``*norm.weight``.

Some settings llama.cpp does not read from the file but fixes per family (Gemma 3's sliding
window on 5 layers of 6 with a local rope base of 10000, Gemma's attention scale from the
head size, SmolLM3's layers without rope every 4th): ``llama_cpp_differences`` names a
config that departs from them, so the export refuses it before any work instead of writing
a file llama.cpp would run differently.
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
    norm_shift: float  # added to every *norm.weight (Gemma: 1)


# mlx-lm model_type -> (gguf.MODEL_ARCH member, permuted q/k, norm shift)
_FAMILIES = {
    "llama": ("LLAMA", True, 0.0),
    "mistral": ("LLAMA", True, 0.0),
    "qwen2": ("QWEN2", False, 0.0),
    "qwen3": ("QWEN3", False, 0.0),
    "qwen3_moe": ("QWEN3MOE", False, 0.0),
    "gemma2": ("GEMMA2", False, 1.0),
    "gemma3_text": ("GEMMA3", False, 1.0),
    "phi3": ("PHI3", False, 0.0),
    "smollm3": ("SMOLLM3", True, 0.0),
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
    differences = llama_cpp_differences(config)
    if differences:
        raise StudioError(
            f"llama.cpp would run this {model_type} model otherwise than MLX does: "
            + "; ".join(differences),
            hint="export to PEFT instead",
        )
    member, permute_qk, norm_shift = _FAMILIES[model_type]
    return GGUFFamily(gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH[member]], permute_qk, norm_shift)


def model_type_for(arch: str) -> str | None:
    """The mlx-lm model_type of llama.cpp's architecture ``arch`` (llama for llama and
    mistral, which llama.cpp does not tell apart); None for one the studio does not know."""
    import gguf

    for model_type, (member, _, _) in _FAMILIES.items():
        if gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH[member]] == arch:
            return model_type
    return None


def llama_cpp_differences(config: dict) -> list[str]:
    """What in this config llama.cpp fixes otherwise for the family (it reads these from
    the architecture, not from the file): empty when it runs the model as mlx-lm does."""
    model_type, found = config.get("model_type"), []
    if model_type in ("gemma2", "gemma3_text"):
        scalar = config.get("query_pre_attn_scalar", head_dim(config))
        wide = config["hidden_size"] // config["num_attention_heads"]
        # llama.cpp scales by the head size, or by hidden / heads for the 27B models
        large = config["num_hidden_layers"] in (46, 62) and scalar == wide
        if scalar != head_dim(config) and not large:
            found.append(f"query_pre_attn_scalar {scalar} is not the head size {head_dim(config)}")
    if model_type == "gemma3_text":
        if config.get("sliding_window_pattern", 6) != 6:
            found.append("llama.cpp slides the window on 5 layers of 6 (sliding_window_pattern 6)")
        if config.get("rope_local_base_freq", 10000.0) != 10000.0:
            found.append("llama.cpp's local layers use rope base 10000")
    if model_type == "smollm3":
        interval = config.get("no_rope_layer_interval", 4)
        layers = config.get("no_rope_layers")
        expected = [int((i + 1) % 4 != 0) for i in range(config["num_hidden_layers"])]
        if interval != 4 or (layers is not None and list(layers) != expected):
            found.append("llama.cpp leaves rope out of every 4th layer only")
    return found


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


def phi3_rope_factors(config: dict) -> dict[str, np.ndarray]:
    """Phi-3's long-context rope factors as llama.cpp's tensors (empty without them)."""
    scaling = config.get("rope_scaling") or {}
    if not scaling.get("long_factor"):
        return {}
    return {
        "rope_factors_long.weight": np.array(scaling["long_factor"], dtype=np.float32),
        "rope_factors_short.weight": np.array(scaling["short_factor"], dtype=np.float32),
    }


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
SPLITS = {
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
        if regex in SPLITS:
            return SPLITS[regex]
    raise StudioError(
        "GGUF export supports byte-level BPE tokenizers (GPT-2's split, or Qwen 2's or "
        "Llama 3's) only",
        hint="export to PEFT instead",
    )
