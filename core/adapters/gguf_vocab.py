"""The tokenizer as llama.cpp reads it from a GGUF: the vocabulary, how text is split before
it is looked up, the special tokens, the chat template.

Two kinds, as the families ship them:
- byte-level BPE (GPT-2's kind: Llama 3, Qwen, Phi-4, SmolLM3): llama.cpp's "gpt2" model, the
  vocabulary with its merges and the name of the regex that splits text first
  (``core.models.gguf_arch.tokenizer_pre``);
- SentencePiece-style BPE (Gemma, Mistral, Llama 2: spaces as "▁", byte tokens ``<0x41>`` for
  what the vocabulary lacks): llama.cpp's "llama" model, which merges by score, so each token's
  score is minus the rank of the merge that makes it (the order the BPE merges in), and byte
  tokens are marked as such; whether a "▁" goes before the text is its own key.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from core.errors import StudioError
from core.models.gguf_arch import tokenizer_pre

# llama.cpp's token types (gguf.TokenType)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, BYTE = 1, 2, 3, 4, 6


def loaded_tokenizer(folder: Path) -> dict:
    """The tokenizer as the model's runs use it (mlx-lm loads it with transformers), in
    tokenizer.json's form. Not the file itself: for some families transformers builds the
    pre-tokenizer from its own class (Qwen 2's split, whatever tokenizer.json says), and
    llama.cpp must split text as the model was trained to."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    return json.loads(tokenizer.backend_tokenizer.to_str())


def vocabulary_kind(tokenizer: dict) -> str:
    """llama.cpp's tokenizer model for a tokenizer.json: "gpt2" or "llama"; a StudioError
    for any other kind."""
    model = tokenizer["model"]
    if model.get("type") == "BPE" and model.get("byte_fallback"):
        return "llama"
    if model.get("type") != "BPE":
        raise StudioError("GGUF export supports BPE tokenizers only", hint="export to PEFT instead")
    tokenizer_pre(tokenizer)  # refuses a split llama.cpp would not make the same way
    return "gpt2"


def chat_template(folder: Path) -> str | None:
    """The model's chat template: chat_template.jinja, or tokenizer_config.json's."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    template = config.get("chat_template")
    return template if isinstance(template, str) else None


def write_tokenizer(writer, folder: Path, config: dict) -> None:
    """The vocabulary, its special tokens and the chat template, into ``writer``."""
    tokenizer = loaded_tokenizer(folder)
    vocab = dict(tokenizer["model"]["vocab"])
    added = {t["content"]: t for t in tokenizer.get("added_tokens", [])}
    for token in added.values():
        vocab.setdefault(token["content"], token["id"])
    size = max(config["vocab_size"], max(vocab.values()) + 1)
    tokens = [f"[PAD{i}]" for i in range(size)]
    for token, index in vocab.items():
        tokens[index] = token
    merges = [m.split(" ", 1) if isinstance(m, str) else m for m in tokenizer["model"]["merges"]]
    special = {t for t, entry in added.items() if entry.get("special")}
    if vocabulary_kind(tokenizer) == "gpt2":
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(config.get("gguf_tokenizer_pre") or tokenizer_pre(tokenizer))
        writer.add_token_list(tokens)
        writer.add_token_types([CONTROL if t in special else NORMAL for t in tokens])
        writer.add_token_merges([" ".join(m) for m in merges])
    else:
        rank = {}
        for index, (left, right) in enumerate(merges):
            rank.setdefault(left + right, index)
        unk = tokenizer["model"].get("unk_token")
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(tokens)
        writer.add_token_scores([-float(rank.get(t, len(merges))) for t in tokens])
        writer.add_token_types([_piece_type(t, special, set(added), unk) for t in tokens])
        writer.add_add_space_prefix(_space_prefix(tokenizer))
    _special_tokens(writer, folder, config, vocab)


def _piece_type(token: str, special: set[str], added: set[str], unk: str | None) -> int:
    if token in special:
        return UNKNOWN if token == unk else CONTROL
    if token in added:
        return USER_DEFINED
    return BYTE if re.fullmatch(r"<0x[0-9A-F]{2}>", token) else NORMAL


def _space_prefix(tokenizer: dict) -> bool:
    """Whether the tokenizer puts a "▁" before the text (a Prepend normalizer, or a
    Metaspace pre-tokenizer that prepends)."""
    text = json.dumps([tokenizer.get("normalizer"), tokenizer.get("pre_tokenizer")])
    prepends = '"type": "Prepend"' in text
    metaspace = '"type": "Metaspace"' in text and '"prepend_scheme": "never"' not in text
    return prepends or metaspace


def _special_tokens(writer, folder: Path, config: dict, vocab: dict[str, int]) -> None:
    """BOS, EOS, UNK, PAD and end-of-turn ids, the chat template, and whether llama.cpp
    adds the BOS while tokenizing."""
    settings = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    roles = {}
    for role, add in (
        ("bos_token", writer.add_bos_token_id),
        ("eos_token", writer.add_eos_token_id),
        ("unk_token", writer.add_unk_token_id),
        ("pad_token", writer.add_pad_token_id),
    ):
        token = settings.get(role)
        token = token.get("content") if isinstance(token, dict) else token
        if token in vocab:
            roles[role] = vocab[token]
            add(vocab[token])
    for index in _ends_of_turn(config, roles.get("eos_token")):
        writer.add_eot_token_id(index)
    template = chat_template(folder)
    if template:
        writer.add_chat_template(template)
        # the template writes the BOS itself; llama.cpp adds it while tokenizing instead
        writer.add_add_bos_token("bos_token" in template)


def _ends_of_turn(config: dict, eos: int | None) -> list[int]:
    """The end-of-turn id mlx-lm also stops at (config.json lists it beside the end of
    sequence: Gemma's <end_of_turn>, Phi's <|end|>), for llama.cpp's ``eot_token_id``."""
    ids = config.get("eos_token_id")
    ids = ids if isinstance(ids, list) else [ids]
    return [i for i in ids if i is not None and i != eos][:1]
