"""Tiny random models of each family the studio supports, built from mlx-lm's own model
classes: what the tests (and ``lora-studio models toy --family F``) prove every step on.

Each family's entry is the smallest config its mlx-lm class accepts that still has what makes
the family itself: Llama 3's ``rope_scaling``, Qwen 3's ``head_dim`` and q/k norms, Gemma's
logit soft-capping and sliding windows, Phi-3's fused ``qkv_proj`` and ``gate_up_proj``,
SmolLM3's layers without RoPE, Qwen 3 MoE's experts. The weights are random and the tokenizer
is trained on the toy llama's corpus (``core.models.toy``), so the answers are noise; the
shapes, the modules and
the code paths are the family's, and so are the chat template and special tokens
(``core.models.chat_formats``).
"""

from __future__ import annotations

from pathlib import Path

from core.errors import StudioError
from core.models.chat_formats import CHATML, GEMMA, LLAMA3, MISTRAL, PHI, ChatFormat

_COMMON = {
    "hidden_size": 64,
    "num_hidden_layers": 10,  # the default 8 adapted, 2 frozen: both paths taken
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "max_position_embeddings": 4096,
    "tie_word_embeddings": True,
}
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 2048,
}
# family -> (mlx-lm's model_type, what its config adds to or changes in _COMMON)
FAMILIES: dict[str, tuple[str, dict]] = {
    "llama": ("llama", {"rope_scaling": LLAMA3_ROPE}),
    "mistral": ("mistral", {"tie_word_embeddings": False}),
    "qwen2": ("qwen2", {}),
    "qwen3": ("qwen3", {"head_dim": 16}),
    "qwen3_moe": (
        "qwen3_moe",
        {
            "head_dim": 16,
            "num_experts": 4,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": 32,
            "decoder_sparse_step": 1,
            "mlp_only_layers": [],
            "norm_topk_prob": True,
        },
    ),
    "gemma2": (
        "gemma2",
        {
            "head_dim": 16,
            "query_pre_attn_scalar": 16,
            "attn_logit_softcapping": 50.0,
            "final_logit_softcapping": 30.0,
            # Gemma 2's own window: mlx-lm's Gemma 2 attends over everything (no window),
            # llama.cpp slides it, so the two agree up to 4096 tokens
            "sliding_window": 4096,
        },
    ),
    "gemma3_text": (
        "gemma3_text",
        {
            "head_dim": 16,
            "query_pre_attn_scalar": 16,
            "sliding_window": 16,
            "sliding_window_pattern": 6,  # Gemma 3's own (and the one llama.cpp fixes)
            "rope_local_base_freq": 10000.0,
        },
    ),
    "phi3": (
        "phi3",
        {
            "tie_word_embeddings": False,
            # Phi-4-mini's long-context rope: 8 factors (head size 16), a context 64x the
            # original, so llama.cpp (which picks long factors past the original) runs as MLX
            "original_max_position_embeddings": 64,
            "rope_scaling": {
                "type": "longrope",
                "short_factor": [1.0] * 8,
                "long_factor": [1.0, 1.2, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0],
            },
        },
    ),
    "smollm3": ("smollm3", {"no_rope_layer_interval": 4}),
    # Qwen 3.5 (dense): linear-attention layers (gated delta rule), full attention every 4th
    "qwen3_5": (
        "qwen3_5",
        {
            "head_dim": 16,
            "linear_num_value_heads": 4,
            "linear_num_key_heads": 2,
            "linear_key_head_dim": 16,
            "linear_value_head_dim": 16,
            "linear_conv_kernel_dim": 4,
            "full_attention_interval": 4,
            "rope_parameters": {
                "type": "default",
                "rope_theta": 10000.0,
                "partial_rotary_factor": 0.25,
            },
        },
    ),
    # Gemma 4 (text): per-layer input embeddings, key/value caches shared by the last layers,
    # wider heads on its global layers
    "gemma4_text": (
        "gemma4_text",
        {
            "head_dim": 16,
            "global_head_dim": 32,
            "num_kv_shared_layers": 4,
            "hidden_size_per_layer_input": 16,
            "vocab_size_per_layer_input": None,  # the vocabulary's size, set below
            "sliding_window": 16,
            "sliding_window_pattern": 5,
            "final_logit_softcapping": 30.0,
        },
    ),
}


CHAT_FORMATS: dict[str, ChatFormat] = {
    "llama": LLAMA3,
    "mistral": MISTRAL,
    "qwen2": CHATML,
    "qwen3": CHATML,
    "qwen3_moe": CHATML,
    "gemma2": GEMMA,
    "gemma3_text": GEMMA,
    "phi3": PHI,
    "smollm3": CHATML,
    "qwen3_5": CHATML,
    "gemma4_text": GEMMA,  # Gemma 3's turns: Gemma 4's own template was not at hand here
}


# families whose checkpoints ship a SentencePiece-style tokenizer -> whether it puts a "▁"
# before the text (the others' are byte-level BPE, GPT-2's kind)
SENTENCEPIECE = {"mistral": True, "gemma2": False, "gemma3_text": False, "gemma4_text": False}


def build_toy(family: str, folder: str | Path, *, seed: int = 0, sizes: dict | None = None) -> Path:
    """Write a random-weight model folder of ``family`` that ``mlx_lm.load`` accepts.
    ``sizes`` changes the config's sizes the family has (benchmarks make larger models: a
    vocabulary larger than the tokenizer's leaves rows no token reaches)."""
    from core.models.toy import build_sentencepiece_tokenizer, build_tokenizer, save_random_model

    if family not in FAMILIES:
        raise StudioError(f"no toy model of family {family!r}", hint=", ".join(FAMILIES))
    model_type, extra = FAMILIES[family]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chat = CHAT_FORMATS[family]
    if family in SENTENCEPIECE:
        tokenizer = build_sentencepiece_tokenizer(folder, chat, space_prefix=SENTENCEPIECE[family])
    else:
        tokenizer = build_tokenizer(folder, chat=chat)
    # mlx-lm stops at every id config.json names: the end of a turn and the end of a text
    stops = [tokenizer.convert_tokens_to_ids(token) for token in chat.stop_tokens]
    config = {
        **_COMMON,
        **extra,
        "model_type": model_type,
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": stops[0] if len(stops) == 1 else stops,
        "pad_token_id": tokenizer.pad_token_id,
        "torch_dtype": "float32",
    }
    config |= {key: value for key, value in (sizes or {}).items() if key in config}
    if "vocab_size_per_layer_input" in config:  # Gemma 4's per-layer embeddings
        config["vocab_size_per_layer_input"] = config["vocab_size"]
    return save_random_model(folder, config, seed)
