"""Import a GGUF file as an MLX base model folder (llama architecture).

MLX reads GGUF itself, tensors (F32, F16, Q4_0, Q4_1, Q8_0) and metadata alike; what it lacks
is the mapping to mlx-lm's layout: Hugging Face tensor names, the q/k rows that llama.cpp
permuted for its rope layout, a config.json, and a tokenizer rebuilt from the GGUF vocabulary.
Weights are saved in float32: on Linux CPUs the fast BLAS path is float32 (bf16 runs ~30x slower).
"""

from __future__ import annotations

import json
import logging
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from core.errors import StudioError

log = logging.getLogger(__name__)

SUPPORTED_ARCHITECTURES = ("llama",)
LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
TOP_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
CONTROL_TOKEN = 3  # llama.cpp token_type of special tokens
# llama.cpp pre-tokenizers that split text like GPT-2's byte-level regex; others (llama-bpe,
# qwen2, ...) split differently and would give wrong token ids here, so they are refused.
GPT2_PRE_TOKENIZERS = (None, "default", "gpt2", "gpt-2", "smollm")


def _value(meta: dict, key: str, default=None):
    """A GGUF metadata value as a plain Python value (MLX gives scalars as arrays)."""
    value = meta.get(key, default)
    return value.item() if hasattr(value, "item") and getattr(value, "size", 2) == 1 else value


def hf_name(gguf_name: str) -> str:
    """``blk.3.attn_q.weight`` -> ``model.layers.3.self_attn.q_proj.weight``."""
    stem, _, leaf = gguf_name.rpartition(".")
    parts = stem.split(".")
    if parts[0] == "blk" and len(parts) == 3 and parts[2] in LAYER_NAMES:
        return f"model.layers.{parts[1]}.{LAYER_NAMES[parts[2]]}.{leaf}"
    if stem in TOP_NAMES:
        return f"{TOP_NAMES[stem]}.{leaf}"
    raise StudioError(f"unknown GGUF tensor {gguf_name} for the llama architecture")


def unpermute(weight, heads: int):
    """Undo llama.cpp's rope permutation of q/k rows (the inverse of its convert script's
    ``reshape(heads, 2, d, ...).swapaxes(1, 2)``); without it the model talks nonsense."""
    rows = weight.shape[0]
    return (
        weight.reshape(heads, rows // heads // 2, 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def dequantized(tensors: dict) -> dict:
    """float32 tensors, packed (weight, scales, biases) triplets expanded; GGUF quants use
    groups of 32 and the bit width follows from the packed and unpacked widths."""
    import mlx.core as mx

    out = {}
    for name, value in tensors.items():
        if name.endswith((".scales", ".biases")):
            continue
        stem = name.removesuffix(".weight")
        if f"{stem}.scales" in tensors:
            scales, biases = tensors[f"{stem}.scales"], tensors[f"{stem}.biases"]
            width = scales.shape[-1] * 32
            bits = 32 * value.shape[-1] // width
            value = mx.dequantize(value, scales, biases, group_size=32, bits=bits)
        out[name] = value.astype(mx.float32)
    return out


def llama_config(meta: dict, vocab_size: int, tied: bool) -> dict:
    arch = "llama"
    heads = _value(meta, f"{arch}.attention.head_count")
    config = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": _value(meta, f"{arch}.embedding_length"),
        "num_hidden_layers": _value(meta, f"{arch}.block_count"),
        "intermediate_size": _value(meta, f"{arch}.feed_forward_length"),
        "num_attention_heads": heads,
        "num_key_value_heads": _value(meta, f"{arch}.attention.head_count_kv", heads),
        "rms_norm_eps": float(_value(meta, f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": float(_value(meta, f"{arch}.rope.freq_base", 10000.0)),
        "max_position_embeddings": _value(meta, f"{arch}.context_length", 4096),
        "vocab_size": vocab_size,
        "tie_word_embeddings": tied,
        "bos_token_id": _value(meta, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": _value(meta, "tokenizer.ggml.eos_token_id"),
        "torch_dtype": "float32",
    }
    missing = [k for k, v in config.items() if v is None and k not in ("bos_token_id",)]
    if missing:
        raise StudioError(f"the GGUF metadata lacks {', '.join(missing)}")
    return config


def build_tokenizer(meta: dict, folder: Path) -> None:
    """tokenizer.json + tokenizer_config.json from the GGUF vocabulary (byte-level BPE, the
    "gpt2" tokenizer model), with the chat template stored in the GGUF."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    kind = _value(meta, "tokenizer.ggml.model")
    if kind != "gpt2":
        raise StudioError(
            f"GGUF tokenizer model {kind!r} is not supported (byte-level BPE 'gpt2' is)"
        )
    pre = _value(meta, "tokenizer.ggml.pre")
    if pre not in GPT2_PRE_TOKENIZERS:
        raise StudioError(f"GGUF pre-tokenizer {pre!r} is not supported yet")
    tokens = list(meta["tokenizer.ggml.tokens"])
    merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    types = meta.get("tokenizer.ggml.token_type")
    types = types.tolist() if hasattr(types, "tolist") else [1] * len(tokens)
    tokenizer = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    specials = [t for t, kind in zip(tokens, types, strict=False) if kind == CONTROL_TOKEN]
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])

    def token(key: str) -> str | None:
        index = _value(meta, key)
        return tokens[index] if index is not None and 0 <= index < len(tokens) else None

    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=token("tokenizer.ggml.bos_token_id"),
        eos_token=token("tokenizer.ggml.eos_token_id"),
        unk_token=token("tokenizer.ggml.unknown_token_id"),
        pad_token=token("tokenizer.ggml.padding_token_id"),
    )
    template = _value(meta, "tokenizer.chat_template")
    if template:
        wrapped.chat_template = template
    wrapped.save_pretrained(str(folder))


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
    arch = _value(meta, "general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise StudioError(f"GGUF architecture {arch!r} is not supported (only llama for now)")
    staging = models_folder / f".import-{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)
    try:
        progress("dequantizing to float32")
        weights = {hf_name(k): v for k, v in dequantized(tensors).items()}
        config = llama_config(
            meta,
            weights["model.embed_tokens.weight"].shape[0],
            tied="lm_head.weight" not in weights,
        )
        pre = _value(meta, "tokenizer.ggml.pre")
        if pre:  # kept so that a GGUF export names llama.cpp's pre-tokenizer again
            config["gguf_tokenizer_pre"] = pre
        for layer in range(config["num_hidden_layers"]):
            prefix = f"model.layers.{layer}.self_attn"
            q, k = f"{prefix}.q_proj.weight", f"{prefix}.k_proj.weight"
            weights[q] = unpermute(weights[q], config["num_attention_heads"])
            weights[k] = unpermute(weights[k], config["num_key_value_heads"])
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
