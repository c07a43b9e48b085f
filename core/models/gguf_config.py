"""A config.json from a GGUF's metadata: what the export (and llama.cpp's converter) writes,
read back per family, so ``models import-gguf`` gives mlx-lm the model llama.cpp runs.

Some of a family's settings are not in a GGUF at all: llama.cpp fixes them per architecture
(Gemma 3's sliding window on 5 layers of 6 with a local rope base of 10000, Gemma's attention
scale from the head size, SmolLM3's rope-less layers every 4th, Qwen 3 MoE's normalised
routing weights); the config takes the values llama.cpp uses. Llama 3's ``rope_scaling`` is
stored only as its per-frequency factors (``rope_freqs``): the settings that give exactly
those factors are found among Llama 3's known ones, or the import is refused.
"""

from __future__ import annotations

import numpy as np

from core.errors import StudioError
from core.models.gguf_arch import head_dim, llama3_rope_factors, model_type_for


def value(meta: dict, key: str, default=None):
    """A GGUF metadata value as a plain Python value (MLX gives scalars as arrays)."""
    found = meta.get(key, default)
    return found.item() if hasattr(found, "item") and getattr(found, "size", 2) == 1 else found


def model_config(meta: dict, tensors: dict) -> dict:
    """config.json for the GGUF whose metadata is ``meta`` and tensors ``tensors``."""
    arch = value(meta, "general.architecture")
    model_type = model_type_for(arch)
    if model_type is None:
        raise StudioError(
            f"GGUF architecture {arch!r} is not supported (the families GGUF export writes are)"
        )
    heads = value(meta, f"{arch}.attention.head_count")
    config = {
        "model_type": model_type,
        "hidden_size": value(meta, f"{arch}.embedding_length"),
        "num_hidden_layers": value(meta, f"{arch}.block_count"),
        "intermediate_size": value(meta, f"{arch}.feed_forward_length"),
        "num_attention_heads": heads,
        "num_key_value_heads": value(meta, f"{arch}.attention.head_count_kv", heads),
        "rms_norm_eps": float(value(meta, f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": float(value(meta, f"{arch}.rope.freq_base", 10000.0)),
        "max_position_embeddings": value(meta, f"{arch}.context_length", 4096),
        "vocab_size": tensors["token_embd.weight"].shape[0],
        "tie_word_embeddings": "output.weight" not in tensors,
        "bos_token_id": value(meta, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": _stops(meta),
        "pad_token_id": value(meta, "tokenizer.ggml.padding_token_id"),
        "torch_dtype": "float32",
    }
    missing = [
        k for k, v in config.items() if v is None and k not in ("bos_token_id", "pad_token_id")
    ]
    if missing:
        raise StudioError(f"the GGUF metadata lacks {', '.join(missing)}")
    key_length = value(meta, f"{arch}.attention.key_length")
    if key_length:
        config["head_dim"] = key_length
    config |= _family_settings(model_type, arch, meta, config)
    config |= _rope_settings(config, tensors)
    return config


def _stops(meta: dict) -> int | list[int] | None:
    """config.json's eos_token_id: the end of sequence, and the end of a turn if the GGUF
    names another (mlx-lm stops at each)."""
    eos, eot = (
        value(meta, "tokenizer.ggml.eos_token_id"),
        value(meta, "tokenizer.ggml.eot_token_id"),
    )
    return [eot, eos] if eot is not None and eot != eos else eos


def _family_settings(model_type: str, arch: str, meta: dict, config: dict) -> dict:
    """What one family's config holds beyond the common keys, from its GGUF keys or, where
    llama.cpp fixes it, llama.cpp's value."""
    window = value(meta, f"{arch}.attention.sliding_window")
    if model_type == "qwen3_moe":
        return {
            "num_experts": value(meta, f"{arch}.expert_count"),
            "num_experts_per_tok": value(meta, f"{arch}.expert_used_count"),
            "moe_intermediate_size": value(meta, f"{arch}.expert_feed_forward_length"),
            "decoder_sparse_step": 1,
            "mlp_only_layers": [],
            "norm_topk_prob": True,
        }
    if model_type in ("gemma2", "gemma3_text"):
        size = head_dim(config)
        large = config["num_hidden_layers"] in (46, 62)  # llama.cpp's 27B rule
        settings = {
            "head_dim": size,
            "query_pre_attn_scalar": config["hidden_size"] // config["num_attention_heads"]
            if large
            else size,
            "final_logit_softcapping": value(meta, f"{arch}.final_logit_softcapping"),
            "sliding_window": window or 4096,
        }
        if model_type == "gemma2":
            return settings | {
                "attn_logit_softcapping": value(meta, f"{arch}.attn_logit_softcapping")
            }
        return settings | {"sliding_window_pattern": 6, "rope_local_base_freq": 10000.0}
    if model_type == "phi3":
        original = value(meta, f"{arch}.rope.scaling.original_context_length", 4096)
        return {"original_max_position_embeddings": original, "sliding_window": window or None}
    if model_type == "smollm3":
        return {"no_rope_layer_interval": 4}
    return {}


def _rope_settings(config: dict, tensors: dict) -> dict:
    """rope_scaling from the rope tensors: Phi's long and short factors as they are, Llama
    3's factors as the settings that give them."""
    if "rope_factors_long.weight" in tensors:
        return {
            "rope_scaling": {
                "type": "longrope",
                "long_factor": np.array(tensors["rope_factors_long.weight"]).tolist(),
                "short_factor": np.array(tensors["rope_factors_short.weight"]).tolist(),
            }
        }
    if "rope_freqs.weight" not in tensors:
        return {}
    stored = np.array(tensors["rope_freqs.weight"])
    for original in (8192, 2048, 4096, 16384, 32768, 131072):
        scaling = {
            "rope_type": "llama3",
            "factor": float(stored.max()),
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": original,
        }
        factors = llama3_rope_factors({**config, "rope_scaling": scaling})
        if np.allclose(factors, stored, rtol=1e-6):
            return {"rope_scaling": scaling}
    raise StudioError(
        "this GGUF's rope_freqs are not Llama 3's known rope scaling",
        hint="import the model from its Hugging Face folder instead",
    )
