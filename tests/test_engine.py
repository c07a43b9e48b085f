"""The inference engine on the toy llama with real adapters."""

from __future__ import annotations

import shutil
import threading
import uuid

import pytest
from mlx_lm import generate, load

from core.adapters.layout import WEIGHTS_FILE
from core.adapters.store import AdapterStore
from core.errors import StudioError
from core.params import TrainingParams
from core.serve.engine import GenerationParams, InferenceEngine, ModelUnavailable
from core.serve.registry import ModelRegistry
from core.serve.stops import StopScanner
from core.train.service import TrainingService
from tests.helpers import colour_rows, studio_with_toy, write_jsonl

GREEDY = GenerationParams(temperature=0.0, max_tokens=12)
QUESTION = [{"role": "user", "content": "What colour is the sky number 3?"}]


@pytest.fixture(scope="module")
def two_adapters(tmp_path_factory, toy_model):
    """A studio with the toy base and two adapters trained differently on it."""
    home = tmp_path_factory.mktemp("engine-studio")
    settings = studio_with_toy(home, toy_model)
    service = TrainingService(settings)
    ids = []
    for seed, lr in ((1, 5e-3), (2, 2e-2)):
        data = write_jsonl(home / f"d{seed}.jsonl", colour_rows(seed=seed))
        params = TrainingParams(learning_rate=lr, epochs=1, lora_layers=-1, seed=seed)
        run = service.start(settings.models / "toy", data, params)
        assert run.wait(timeout=120).type == "complete"
        ids.append(f"lora/{run.id}")
    return settings, ids


@pytest.fixture
def engine(two_adapters, tmp_path):
    settings, _ = two_adapters
    registry = ModelRegistry(settings, hub=tmp_path / "no-hub")
    engine = InferenceEngine(registry)
    yield engine
    engine.close()


def reference(settings, model_id=None) -> str:
    """What mlx-lm itself generates, greedy, for QUESTION."""
    adapter = str(settings.adapters / model_id.removeprefix("lora/")) if model_id else None
    model, tokenizer = load(str(settings.models / "toy"), adapter_path=adapter)
    prompt = tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True)
    return generate(model, tokenizer, prompt=prompt, max_tokens=GREEDY.max_tokens)


def test_greedy_output_equals_mlx_lm_with_the_adapter(engine, two_adapters):
    settings, (first, _) = two_adapters
    text, last = engine.chat(first, QUESTION, GREEDY)
    assert text == reference(settings, first)
    # a full-length reply ends for "length", a shorter one because the model said stop
    assert (last.finish_reason == "length") == (last.completion_tokens == GREEDY.max_tokens)
    assert last.finish_reason in ("length", "stop") and last.completion_tokens > 0


def test_switching_adapters_swaps_weights_without_reloading_the_base(engine, two_adapters):
    settings, (a, b) = two_adapters
    answers = {m: engine.chat(m, QUESTION, GREEDY)[0] for m in ("toy", a, b)}
    assert len(set(answers.values())) == 3  # three different models
    for model_id in ("toy", a, b, "toy", b, a):
        assert engine.chat(model_id, QUESTION, GREEDY)[0] == answers[model_id]
    assert engine.stats["base_loads"] == 1
    assert engine.stats["adapter_reads"] == 2  # each adapter read once, then cached
    assert answers["toy"] == reference(settings)
    assert answers[b] == reference(settings, b)


def test_the_prompt_cache_serves_the_next_turn(engine, two_adapters):
    _, (a, _) = two_adapters
    first_turn = [{"role": "user", "content": "Tell me a long story about the sky " * 4}]
    reply, _ = engine.chat(a, first_turn, GREEDY)
    processed = engine.stats["prompt_tokens_processed"]
    second_turn = [
        *first_turn,
        {"role": "assistant", "content": reply},
        {"role": "user", "content": "And the sea?"},
    ]
    cached_reply, last = engine.chat(a, second_turn, GREEDY)
    fresh = engine.stats["prompt_tokens_processed"] - processed
    assert fresh < last.prompt_tokens / 2  # most of the prompt came from the cache
    engine.call(engine.clear_prompt_caches)
    assert engine.chat(a, second_turn, GREEDY)[0] == cached_reply  # same answer without it


def test_the_prompt_cache_is_mlx_lms_and_bounded_by_bytes(two_adapters, tmp_path):
    settings, (a, _) = two_adapters
    bound = 600_000  # about two conversations of the toy model (its KV cache grows by 256 kB)
    engine = InferenceEngine(ModelRegistry(settings, hub=tmp_path), prompt_cache_bytes=bound)
    try:
        for i in range(5):
            engine.chat(a, [{"role": "user", "content": f"Story number {i} " * 20}], GREEDY)

        def held() -> tuple[int, int, str]:
            (base,) = engine._bases.values()
            return base.prompt_caches.nbytes, len(base.prompt_caches), type(base.prompt_caches)

        nbytes, conversations, kind = engine.call(held)
        assert kind.__module__ == "mlx_lm.models.cache" and kind.__name__ == "LRUPromptCache"
        assert 0 < nbytes <= bound and 1 <= conversations < 5
    finally:
        engine.close()


def test_a_failing_engine_job_does_not_stop_the_chats(engine, two_adapters):
    def broken():
        raise RuntimeError("a release that goes wrong")

    engine._jobs.put(broken)  # what a registry-change release is: a job on the engine thread
    replies = []
    chat = threading.Thread(target=lambda: replies.append(engine.chat("toy", QUESTION, GREEDY)))
    chat.start()
    chat.join(timeout=60)
    assert replies and replies[0][0], "the engine thread died with the failed job"


def test_an_unavailable_adapter_is_a_message_and_the_engine_goes_on(engine, two_adapters):
    settings, (a, _) = two_adapters
    store = AdapterStore(settings.adapters)
    broken_id = store.import_zip(store.export(a, settings.home / "a.zip"))
    (settings.adapters / broken_id / WEIGHTS_FILE).write_bytes(b"\x08" + b"\x00" * 7 + b"{}")
    engine.registry.reload()
    with pytest.raises(ModelUnavailable, match="adapter unavailable"):
        engine.chat(f"lora/{broken_id}", QUESTION, GREEDY)
    with pytest.raises(StudioError, match="unknown model"):
        engine.chat(f"lora/{uuid.uuid4()}", QUESTION, GREEDY)
    assert engine.chat(a, QUESTION, GREEDY)[0] == reference(settings, a)


def test_corrupt_weights_behind_a_valid_header_are_caught_at_load(engine, two_adapters):
    settings, (a, _) = two_adapters
    store = AdapterStore(settings.adapters)
    broken_id = store.import_zip(store.export(a, settings.home / "b.zip"))
    weights = settings.adapters / broken_id / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:-100])  # truncated tensor data
    engine.registry.reload()
    with pytest.raises(ModelUnavailable, match="adapter unavailable"):
        engine.chat(f"lora/{broken_id}", QUESTION, GREEDY)
    assert engine.chat("toy", QUESTION, GREEDY)[0] == reference(settings)


def test_concurrent_chats_are_served_one_after_another(engine, two_adapters):
    _, (a, b) = two_adapters
    expected = {m: engine.chat(m, QUESTION, GREEDY)[0] for m in ("toy", a, b)}
    results, errors = [], []

    def ask(model_id):
        try:
            results.append((model_id, engine.chat(model_id, QUESTION, GREEDY)[0]))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=ask, args=(m,)) for m in ("toy", a, b) * 3]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == [] and len(results) == 9
    assert all(text == expected[m] for m, text in results)


def test_closing_a_stream_stops_the_generation(engine, two_adapters):
    long = GenerationParams(temperature=0.0, max_tokens=500)  # the toy base never stops early
    before = engine.stats["generated_tokens"]
    assert engine.chat("toy", QUESTION, long)[1].completion_tokens == 500
    assert engine.stats["generated_tokens"] - before == 500

    stream = engine.stream("toy", QUESTION, long)
    next(stream)
    stream.close()
    engine.call(lambda: None)  # the engine is free again
    assert engine.stats["generated_tokens"] - before - 500 < 100


def test_a_cancel_event_set_from_another_thread_stops_the_generation(engine, two_adapters):
    cancelled = threading.Event()
    before = engine.stats["generated_tokens"]
    chunks = engine.stream("toy", QUESTION, GenerationParams(0.0, max_tokens=500), cancelled)
    next(chunks)
    cancelled.set()
    rest = list(chunks)
    assert engine.stats["generated_tokens"] - before < 100 and len(rest) < 100


def test_stop_sequences_cut_the_text_even_across_chunks():
    scanner = StopScanner(["STOP"])
    out = [scanner.feed(piece) for piece in ("hello ST", "O", "P and more")]
    assert "".join(text for text, _ in out) == "hello " and out[-1][1] is True
    assert StopScanner([]).feed("abc") == ("abc", False)


def test_another_base_replaces_the_old_one_unless_more_are_allowed(two_adapters, tmp_path):
    settings, _ = two_adapters
    second = settings.models / "toy-copy"
    shutil.copytree(settings.models / "toy", second)
    try:
        for max_bases, loads in ((1, 3), (2, 2)):
            engine = InferenceEngine(ModelRegistry(settings, hub=tmp_path), max_bases=max_bases)
            for model_id in ("toy", "toy-copy", "toy"):
                engine.chat(model_id, QUESTION, GREEDY)
            assert engine.stats["base_loads"] == loads
            engine.close()
    finally:
        shutil.rmtree(second)


def test_an_adapter_missing_a_tensor_never_runs_on_anothers_values(two_adapters, tmp_path):
    """Two adapters of one shape reuse the LoRA layers: one whose file lacks a tensor is
    refused (naming it), never served with the previous adapter's value for it; the
    import check refuses it too."""
    import mlx.core as mx

    from core.models.inspect import inspect_model

    settings, (a, b) = two_adapters
    partial_id = str(uuid.uuid4())
    folder = settings.adapters / partial_id
    shutil.copytree(settings.adapters / b.removeprefix("lora/"), folder)
    weights = mx.load(str(folder / WEIGHTS_FILE))
    dropped = sorted(weights)[0]
    del weights[dropped]
    mx.save_safetensors(str(folder / WEIGHTS_FILE), weights, metadata={"format": "mlx"})
    engine = InferenceEngine(ModelRegistry(settings, hub=tmp_path))
    try:
        engine.chat(a, QUESTION, GREEDY)  # a's values in the layers
        with pytest.raises(ModelUnavailable, match="lack 1 LoRA tensor") as refused:
            engine.chat(f"lora/{partial_id}", QUESTION, GREEDY)
        assert dropped in str(refused.value)
        assert engine.chat("toy", QUESTION, GREEDY)[0] == reference(settings)
        assert engine.chat(a, QUESTION, GREEDY)[0] == reference(settings, a)
    finally:
        engine.close()
    from core.adapters.store import check_fits_base

    with pytest.raises(StudioError, match=f"{dropped}: missing"):
        check_fits_base(folder, inspect_model(settings.models / "toy"))
