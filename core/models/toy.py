"""Build a small llama from scratch: random weights and a locally trained tokenizer.

No model hub is needed: tests, benchmarks and a first look at the studio get a real
mlx-lm-loadable model folder (config.json, model.safetensors, tokenizer files with a chat
template) in a second. Its answers are noise, but it trains, generates and fuses like any
llama, which is what the pipeline needs to prove.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from core.models.chat_formats import TOY, ChatFormat

_VOCABULARY = (
    "the a an of to and in is it you that he was for on are with as his they be at one have "
    "this from or had by word but what some we can out other were all there when up use your "
    "how said each she which do their time if will way about many then them write would like "
    "so these her long make thing see him two has look more day could go come did number "
    "sound no most people my over know water than call first who may down side been now find "
    "question answer capital city river cat dog red blue green colour number hello please yes "
    "thanks paris france london rome sky sun moon one two three four five six seven eight nine"
)
_WORDS = _VOCABULARY.split()


def tokenizer_corpus(lines: int = 400, seed: int = 0) -> list[str]:
    """Deterministic English-like lines to train the toy tokenizer on."""
    rng = random.Random(seed)
    corpus = []
    for _ in range(lines):
        words = rng.choices(_WORDS, k=rng.randint(4, 14))
        corpus.append(" ".join(words).capitalize() + rng.choice([".", "?", "!"]))
    return corpus


def build_tokenizer(folder: Path, vocab_size: int = 512, chat: ChatFormat = TOY):
    """Train a byte-level BPE tokenizer (GPT-2's kind: Llama 3, Qwen, Phi-4) with ``chat``'s
    special tokens and template, and save it the way Hugging Face models ship one."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    unk = "<unk>" if "<unk>" in chat.special_tokens else None
    tokenizer = Tokenizer(models.BPE(unk_token=unk))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(chat.special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(tokenizer_corpus(), trainer=trainer)
    return _save(tokenizer, folder, chat)


def build_sentencepiece_tokenizer(
    folder: Path, chat: ChatFormat, *, space_prefix: bool, vocab_size: int = 512
):
    """Train a SentencePiece-style BPE tokenizer (Gemma's, Mistral's, Llama 2's kind): spaces
    as "▁", the 256 byte tokens ``<0x00>``... for what the vocabulary lacks, a "▁" put before
    the text when ``space_prefix`` (Mistral, Llama 2; not Gemma)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, trainers

    def normalizer():
        replace = normalizers.Replace(" ", "▁")
        if not space_prefix:
            return replace
        return normalizers.Sequence([normalizers.Prepend("▁"), replace])

    trained = Tokenizer(models.BPE(unk_token="<unk>"))
    trained.normalizer = normalizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - 256, special_tokens=list(chat.special_tokens), show_progress=False
    )
    trained.train_from_iterator(tokenizer_corpus(), trainer=trainer)
    model = json.loads(trained.to_str())["model"]
    ranked = sorted(model["vocab"].items(), key=lambda item: item[1])
    specials = [token for token, _ in ranked if token in chat.special_tokens]
    pieces = [f"<0x{byte:02X}>" for byte in range(256)]
    pieces += [token for token, _ in ranked if token not in chat.special_tokens]
    vocab = {token: index for index, token in enumerate(specials + pieces)}
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    tokenizer = Tokenizer(
        models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True)
    )
    tokenizer.normalizer = normalizer()
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if space_prefix:
        steps.append(decoders.Strip(" ", 1, 0))
    tokenizer.decoder = decoders.Sequence(steps)
    return _save(tokenizer, folder, chat)


def _save(tokenizer, folder: Path, chat: ChatFormat):
    """``tokenizer`` with ``chat``'s special tokens and template, saved as models ship it."""
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast

    tokenizer.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in chat.special_tokens]
    )
    unk = "<unk>" if "<unk>" in chat.special_tokens else None
    roles = {"bos_token": chat.bos, "eos_token": chat.eos, "pad_token": chat.pad, "unk_token": unk}
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, **{role: token for role, token in roles.items() if token}
    )
    wrapped.chat_template = chat.template
    wrapped.save_pretrained(str(folder))
    return wrapped


def build_toy_llama(
    folder: str | Path,
    *,
    hidden_size: int = 64,
    num_layers: int = 4,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    vocab_size: int = 512,
    seed: int = 0,
) -> Path:
    """Write a random-weight llama model folder that ``mlx_lm.load`` accepts.

    The defaults give about 180k parameters (seconds to train on a CPU); benchmarks pass
    larger sizes. The same arguments always give the same weights.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(folder, vocab_size)
    config = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": hidden_size,
        "num_hidden_layers": num_layers,
        "intermediate_size": intermediate_size,
        "num_attention_heads": num_heads,
        "num_key_value_heads": num_kv_heads,
        "rms_norm_eps": 1e-5,
        "vocab_size": len(tokenizer),
        "rope_theta": 10000.0,
        "max_position_embeddings": 4096,
        "tie_word_embeddings": True,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "torch_dtype": "float32",
    }
    return save_random_model(folder, config, seed)


def save_random_model(folder: Path, config: dict, seed: int) -> Path:
    """Random weights (from ``seed``) for ``config`` by mlx-lm's own class for its
    ``model_type``, saved with the config as a model folder mlx-lm loads."""
    import importlib

    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.utils import MODEL_REMAPPING

    model_type = config["model_type"]
    module = importlib.import_module(f"mlx_lm.models.{MODEL_REMAPPING.get(model_type, model_type)}")
    mx.random.seed(seed)
    model = module.Model(module.ModelArgs.from_dict(config))
    weights = dict(tree_flatten(model.parameters()))
    mx.save_safetensors(str(folder / "model.safetensors"), weights, metadata={"format": "mlx"})
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder
