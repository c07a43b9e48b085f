"""A Hugging Face tokenizer rebuilt from a GGUF's vocabulary, for ``models import-gguf``.

The two kinds llama.cpp holds (``core.adapters.gguf_vocab`` writes both):
- "gpt2", byte-level BPE: the vocabulary and merges as they are, and the regex split the
  pre-tokenizer's name stands for (GPT-2's, Qwen 2's, Llama 3's);
- "llama", SentencePiece-style BPE: no merges are stored, only each token's score, and
  llama.cpp merges the adjacent pair whose joined text is in the vocabulary with the highest
  score. The merges that do the same are every split of a token into two tokens, ranked by
  the joined token's score (as transformers rebuilds them from a SentencePiece model); spaces
  are "▁", unknown characters fall back to the byte tokens, and a "▁" goes first where the
  GGUF says so.
"""

from __future__ import annotations

from pathlib import Path

from core.errors import StudioError
from core.models.gguf_arch import SPLITS
from core.models.gguf_config import value

CONTROL, USER_DEFINED = 3, 4  # llama.cpp token types
# llama.cpp pre-tokenizers that split text like GPT-2's byte-level regex
GPT2_PRE_TOKENIZERS = (None, "default", "gpt2", "gpt-2", "smollm")


def build_tokenizer(meta: dict, folder: Path) -> None:
    """tokenizer.json + tokenizer_config.json in ``folder`` from the GGUF metadata, with the
    chat template stored in the GGUF."""
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast

    kind = value(meta, "tokenizer.ggml.model")
    tokens = list(meta["tokenizer.ggml.tokens"])
    types = meta.get("tokenizer.ggml.token_type")
    types = types.tolist() if hasattr(types, "tolist") else [1] * len(tokens)
    if kind == "gpt2":
        tokenizer = _byte_level(meta, tokens)
    elif kind == "llama":
        tokenizer = _sentencepiece(meta, tokens)
    else:
        raise StudioError(
            f"GGUF tokenizer model {kind!r} is not supported ('gpt2' and 'llama' BPE are)"
        )
    tokenizer.add_special_tokens(
        [
            AddedToken(t, special=token_type == CONTROL, normalized=False)
            for t, token_type in zip(tokens, types, strict=False)
            if token_type in (CONTROL, USER_DEFINED)
        ]
    )

    def token(key: str) -> str | None:
        index = value(meta, key)
        return tokens[index] if index is not None and 0 <= index < len(tokens) else None

    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=token("tokenizer.ggml.bos_token_id"),
        eos_token=token("tokenizer.ggml.eos_token_id"),
        unk_token=token("tokenizer.ggml.unknown_token_id"),
        pad_token=token("tokenizer.ggml.padding_token_id"),
    )
    template = value(meta, "tokenizer.chat_template")
    if template:
        wrapped.chat_template = template
    wrapped.save_pretrained(str(folder))


def _byte_level(meta: dict, tokens: list[str]):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    pre = value(meta, "tokenizer.ggml.pre")
    splits = {name: regex for regex, name in SPLITS.items()}
    if pre not in GPT2_PRE_TOKENIZERS and pre not in splits:
        raise StudioError(f"GGUF pre-tokenizer {pre!r} is not supported yet")
    merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    tokenizer = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    if pre in splits:  # the regex split first, then the bytes (as tokenizer.json has it)
        split = pre_tokenizers.Split(Regex(splits[pre]), behavior="isolated")
        byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([split, byte_level])
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def _sentencepiece(meta: dict, tokens: list[str]):
    from tokenizers import Tokenizer, decoders, models, normalizers

    scores = [float(s) for s in meta["tokenizer.ggml.scores"].tolist()]
    vocab = {token: index for index, token in enumerate(tokens)}
    merges = sorted(
        (
            (-scores[index], vocab[token[:cut]], vocab[token[cut:]], token[:cut], token[cut:])
            for token, index in vocab.items()
            for cut in range(1, len(token))
            if token[:cut] in vocab and token[cut:] in vocab
        ),
    )
    unk = value(meta, "tokenizer.ggml.unknown_token_id")
    tokenizer = Tokenizer(
        models.BPE(
            vocab=vocab,
            merges=[(left, right) for *_, left, right in merges],
            unk_token=tokens[unk] if unk is not None else None,
            byte_fallback=True,
            fuse_unk=True,
        )
    )
    space_prefix = bool(value(meta, "tokenizer.ggml.add_space_prefix", True))
    replace = normalizers.Replace(" ", "\u2581")
    tokenizer.normalizer = (
        normalizers.Sequence([normalizers.Prepend("\u2581"), replace]) if space_prefix else replace
    )
    steps = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    if space_prefix:
        steps.append(decoders.Strip(" ", 1, 0))
    tokenizer.decoder = decoders.Sequence(steps)
    return tokenizer
