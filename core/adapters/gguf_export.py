"""GGUF out of the studio, with llama.cpp's own writer (the ``gguf`` package): a fused model
(base + adapter, f32 / f16 / q8_0) for llama.cpp, LM Studio and Ollama, or a GGUF LoRA adapter
(llama.cpp's ``--lora``, Ollama's ``ADAPTER``).

The families, their tensor names and llama.cpp's rules for each (q/k permuted for llama,
mistral and smollm3 only, Gemma's norm offset, experts stacked, the rope factors) come from
``core.models.gguf_arch``, which reads them from the ``gguf`` package's tables. The tokenizer
(byte-level or SentencePiece-style BPE) and the chat template travel in the metadata
(``core.adapters.gguf_vocab``).
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from core.adapters.gguf_vocab import loaded_tokenizer, vocabulary_kind, write_tokenizer
from core.errors import StudioError
from core.files import replacing
from core.models.gguf_arch import (
    GGUFFamily,
    gguf_family,
    head_dim,
    llama3_rope_factors,
    permute,
    phi3_rope_factors,
    tensor_names,
)
from core.models.inspect import ModelInfo, inspect_model, weight_files

log = logging.getLogger(__name__)

GGUF_TYPES = ("f32", "f16", "q8_0")


def check_exportable(base: ModelInfo) -> dict:
    """The base's config, if its family and tokenizer can go to GGUF; a StudioError saying
    why not before any work is done otherwise."""
    config = json.loads((base.path / "config.json").read_text(encoding="utf-8"))
    gguf_family(config)
    vocabulary_kind(loaded_tokenizer(base.path))
    return config


def gguf_limit(base: ModelInfo) -> str | None:
    """Why ``base`` cannot go to GGUF (and so to Ollama), in words; None when it can. What
    the model list and the Export panel say before anyone waits for a fuse."""
    try:
        check_exportable(base)
    except StudioError as error:
        return str(error)
    except (OSError, ValueError, KeyError) as error:  # no tokenizer, a config without a key
        return f"its files cannot be read for GGUF: {error}"
    return None


def _permuted(name: str, value: np.ndarray, family: GGUFFamily, config: dict) -> np.ndarray:
    """q and k weights (or a LoRA's b of them) in llama.cpp's rope layout, where the family
    keeps them so."""
    if not family.permute_qk:
        return value
    heads = config["num_attention_heads"]
    if "q_proj" in name:
        return permute(value, heads)
    if "k_proj" in name:
        return permute(value, config.get("num_key_value_heads") or heads)
    return value


def _load_float32(folder: Path) -> dict[str, np.ndarray]:
    import mlx.core as mx

    weights = {}
    for file in weight_files(folder):
        for name, value in mx.load(str(file)).items():
            weights[name] = np.array(value.astype(mx.float32))
    return weights


def _encoded(name: str, value: np.ndarray, kind: str):
    """(data, raw type or None) for ``value`` in the chosen type; norms and other 1-D
    tensors stay float32, as llama.cpp's converter keeps them."""
    import gguf

    if value.ndim < 2 or kind == "f32":
        return value.astype(np.float32), None
    if kind == "f16":
        return value.astype(np.float16), None
    if value.shape[-1] % 32:  # q8_0 blocks are 32 wide
        return value.astype(np.float16), None
    quantized = gguf.quants.quantize(value.astype(np.float32), gguf.GGMLQuantizationType.Q8_0)
    return quantized, gguf.GGMLQuantizationType.Q8_0


def write_model_gguf(
    folder: Path, target: Path, kind: str = "f16", progress: Callable[[str], None] = log.info
) -> Path:
    """The model in ``folder`` (MLX layout, float weights) as one GGUF file."""

    if kind not in GGUF_TYPES:
        raise StudioError(f"GGUF type {kind!r}: choose one of {', '.join(GGUF_TYPES)}")
    info = inspect_model(folder)
    config = check_exportable(info)
    family = gguf_family(config)
    name_of = tensor_names(family, config["num_hidden_layers"])
    progress("reading the fused weights")
    weights = _load_float32(folder)
    with _writing(target, family.name) as writer:
        _model_metadata(writer, config, info.id)
        write_tokenizer(writer, folder, config)
        progress(f"writing {len(weights)} tensors as {kind}")
        for name, value in sorted(weights.items()):
            value = _permuted(name, value, family, config) if name.endswith(".weight") else value
            if name.endswith("norm.weight"):
                value = value + family.norm_shift
            data, raw = _encoded(name, value, kind)
            writer.add_tensor(name_of(name), data, raw_dtype=raw)
        for name, value in _rope_tensors(config).items():  # the converter adds them too
            writer.add_tensor(name, value)
    return target


def _rope_tensors(config: dict) -> dict[str, np.ndarray]:
    factors = llama3_rope_factors(config)
    if factors is not None:
        return {"rope_freqs.weight": factors}
    return phi3_rope_factors(config)


@contextmanager
def _writing(target: Path, arch: str):
    """A GGUFWriter for ``arch`` whose file is written out and renamed to ``target`` when
    the block ends, and removed if anything fails: a GGUF appears whole or not at all."""
    import gguf

    with replacing(target) as partial:
        writer = gguf.GGUFWriter(str(partial), arch)
        yield writer
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()


def _model_metadata(writer, config: dict, name: str) -> None:
    """The hyperparameters llama.cpp reads, under the family's own keys."""
    heads = config["num_attention_heads"]
    writer.add_name(name)
    writer.add_context_length(config.get("max_position_embeddings", 4096))
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(config.get("num_key_value_heads", heads))
    writer.add_layer_norm_rms_eps(config.get("rms_norm_eps", 1e-5))
    writer.add_rope_freq_base(config.get("rope_theta", 10000.0))
    writer.add_rope_dimension_count(head_dim(config))
    writer.add_vocab_size(config["vocab_size"])
    if config.get("head_dim"):  # heads not as wide as hidden / heads (Qwen 3)
        writer.add_key_length(config["head_dim"])
        writer.add_value_length(config["head_dim"])
    if config.get("num_experts"):
        writer.add_expert_count(config["num_experts"])
        writer.add_expert_used_count(config["num_experts_per_tok"])
        writer.add_expert_feed_forward_length(config["moe_intermediate_size"])
    _family_metadata(writer, config)


def _family_metadata(writer, config: dict) -> None:
    """What one family adds: Gemma's soft-capping and sliding window, Phi-3's."""
    model_type = config["model_type"]
    if config.get("attn_logit_softcapping"):
        writer.add_attn_logit_softcapping(config["attn_logit_softcapping"])
    if config.get("final_logit_softcapping"):
        writer.add_final_logit_softcapping(config["final_logit_softcapping"])
    if model_type in ("gemma2", "gemma3_text") and config.get("sliding_window"):
        writer.add_sliding_window(config["sliding_window"])
    if model_type == "phi3":
        original = config.get("original_max_position_embeddings", 4096)
        writer.add_rope_scaling_orig_ctx_len(original)
        writer.add_sliding_window(config.get("sliding_window") or 0)  # 0: none (Phi-4)
        longer = config.get("max_position_embeddings", original) / original
        if phi3_rope_factors(config) and longer > 1:
            writer.add_rope_scaling_attn_factors(
                math.sqrt(1 + math.log(longer) / math.log(original))
            )


def export_fused_gguf(
    fuse: Callable[[Path], Path],
    base: ModelInfo,
    target: Path,
    kind: str,
    progress: Callable[[str], None] = log.info,
) -> Path:
    """Fuse (``fuse(folder)`` writes the fused model into ``folder``) and write the GGUF
    (``export_adapter`` has checked that ``base`` can go to GGUF)."""
    if kind not in GGUF_TYPES:
        raise StudioError(f"GGUF type {kind!r}: choose one of {', '.join(GGUF_TYPES)}")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fuse-") as tmp:
        progress("fusing the adapter into its base (mlx_lm fuse)")
        fused = fuse(Path(tmp))
        _keep_tokenizer_pre(base.path, fused)
        return write_model_gguf(fused, target, kind, progress)


def _keep_tokenizer_pre(base: Path, fused: Path) -> None:
    """Carry a GGUF-imported base's pre-tokenizer name (mlx_lm fuse rewrites config.json)."""
    pre = json.loads((base / "config.json").read_text()).get("gguf_tokenizer_pre")
    if pre:
        config = json.loads((fused / "config.json").read_text())
        config["gguf_tokenizer_pre"] = pre
        (fused / "config.json").write_text(json.dumps(config, indent=2))


def write_adapter_gguf(folder: Path, base: ModelInfo, target: Path) -> Path:
    """A GGUF LoRA adapter (llama.cpp's ``--lora`` format) of the studio adapter in
    ``folder``: per layer, ``.lora_a`` (r, in) and ``.lora_b`` (out, r), b's rows permuted
    for q and k like the base's, ``adapter.lora.alpha`` = scale x rank."""
    import gguf
    import mlx.core as mx

    config = check_exportable(base)
    family = gguf_family(config)
    name_of = tensor_names(family, config["num_hidden_layers"])
    adapter = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    if adapter.get("fine_tune_type", "lora") != "lora":
        raise StudioError(
            f"llama.cpp's GGUF adapters are LoRA only; this one is {adapter.get('fine_tune_type')}",
            hint="export the fused model instead (GGUF model, or Ollama with the fused model)",
        )
    lora = adapter["lora_parameters"]
    if any("switch_mlp" in key for key in lora.get("keys") or []):
        raise StudioError(
            "a GGUF LoRA adapter cannot carry LoRA on a mixture of experts' experts",
            hint="export the fused model instead (GGUF model, or Ollama)",
        )
    with _writing(target, family.name) as writer:
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(lora["scale"] * lora["rank"]))
        weights = mx.load(str(folder / "adapters.safetensors"))
        for name, value in sorted(weights.items()):
            stem, _, side = name.rpartition(".lora_")
            data = np.array(value.astype(mx.float32)).T  # a: (r, in); b: (out, r)
            if side == "b":
                data = _permuted(stem, data, family, config)
            name = f"{name_of(stem + '.weight')}.lora_{side}"
            writer.add_tensor(name, np.ascontiguousarray(data))
    return target
