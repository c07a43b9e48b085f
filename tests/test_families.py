"""Every family the studio supports, through the steps a run takes: a tiny random model of
each (core/models/families.py, built from mlx-lm's own classes) trains with the default
settings, resumes exactly after a real SIGKILL, publishes an adapter mlx-lm loads; the
studio's loss (and its kept frozen outputs) gives mlx-lm's own loss and gradients on the same
batch; batched answers equal mlx-lm's one-at-a-time greedy answers; the adapter exports to
PEFT and fuses. docs/compatibility.md has the table, each cell one of these tests.
"""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten, tree_unflatten
from mlx_lm import generate, load, stream_generate
from mlx_lm.tuner import trainer
from mlx_lm.tuner.datasets import CacheDataset, create_dataset
from mlx_lm.tuner.utils import linear_to_lora_layers

from core import protocol
from core.models.families import FAMILIES, build_toy
from core.models.gguf_arch import EXPORTABLE
from core.models.inspect import inspect_model
from core.models.loading import load_model
from core.params import TrainingParams
from core.settings import Settings
from core.train.batches import sft_batch
from core.train.frozen import frozen_loss
from core.train.loss import choose_loss
from core.train.service import TrainingService
from tests.helpers import colour_preferences, colour_rows, write_jsonl

FAMILY_VERSION = "families-v6"  # bump when core/models/families.py changes
# the families llama.cpp's GGUF has a writer here for (qwen3_5 and gemma4_text: not yet)
GGUF_FAMILIES = [family for family, (model_type, _) in FAMILIES.items() if model_type in EXPORTABLE]
# the defaults, shortened: 2 epochs of 6 steps, samples of 16 tokens
RUN = dict(epochs=2, sample_tokens=16, seed=5)


@pytest.fixture(scope="session")
def family_models(request) -> dict[str, Path]:
    folder = request.config.cache.mkdir(FAMILY_VERSION)
    built = {}
    for family in FAMILIES:
        path = folder / family
        if not (path / "model.safetensors").is_file():
            build_toy(family, path)
        built[family] = path
    return built


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("family-data") / "colours.jsonl", colour_rows(32))


def adapted(path: Path, layers: int = 8):
    """The family's model with LoRA on its default keys (chosen as the studio chooses
    them), B made non-zero so the adapter's gradients flow everywhere."""
    params = TrainingParams(lora_layers=layers).for_model(inspect_model(path))
    model, tokenizer = load_model(path)
    model.freeze()
    linear_to_lora_layers(
        model, layers, {"rank": 4, "scale": 2.0, "dropout": 0.0, "keys": params.keys}
    )
    mx.random.seed(1)
    b = [
        (name, mx.random.normal(value.shape) * 0.05)
        for name, value in tree_flatten(model.trainable_parameters())
        if name.endswith("lora_b")
    ]
    model.update(tree_unflatten(b))
    return model, tokenizer


def assert_same(value_and_grad, expected, expected_grad, name: str) -> None:
    (value, tokens), grad = value_and_grad
    assert tokens.item() == expected[1].item(), name
    np.testing.assert_allclose(value.item(), expected[0].item(), rtol=1e-4, err_msg=name)
    flat, reference = dict(tree_flatten(grad)), dict(tree_flatten(expected_grad))
    assert flat.keys() == reference.keys() and flat, name
    for key, g in flat.items():
        scale = max(mx.abs(reference[key]).max().item(), 1e-6)
        np.testing.assert_allclose(
            g, reference[key], rtol=2e-3, atol=1e-5 * scale + 1e-7, err_msg=f"{name} {key}"
        )


@pytest.mark.parametrize("family", list(FAMILIES))
def test_the_studios_loss_gives_mlx_lms_loss_and_gradients(family_models, family):
    """On one batch: mlx-lm's ``default_loss`` against the studio's loss (completion-only
    where the model splits into body and head) and, where the model cuts at its first
    adapted layer, the loss from the frozen layers' kept outputs."""
    model, tokenizer = adapted(family_models[family])
    config = type("Config", (), {"mask_prompt": True})()
    dataset = CacheDataset(create_dataset(colour_rows(8), tokenizer, config))
    kept = frozen_loss(model, dataset, max_seq_length=2048)
    if kept is None:
        batch, hidden = sft_batch(dataset, list(range(8)), 2048), None
    else:
        loss, rows = kept
        *batch, hidden = next(rows.batches(dataset=dataset, batch_size=8, max_seq_length=2048))
    expected, expected_grad = nn.value_and_grad(model, trainer.default_loss)(model, *batch)
    studio = choose_loss(model, dataset, max_seq_length=2048).fn
    assert_same(nn.value_and_grad(model, studio)(model, *batch), expected, expected_grad, "studio")
    if kept is not None:
        frozen = nn.value_and_grad(model, loss.fn)(model, *batch, hidden)
        assert_same(frozen, expected, expected_grad, "frozen")


@pytest.mark.parametrize("family", list(FAMILIES))
def test_batched_answers_equal_mlx_lms_greedy_answers(family_models, family):
    """The generation samples and evaluation use (mlx-lm's batch generation, rows of
    different lengths padded together) gives each row the answer it gets alone."""
    from core.eval.generation import Sampling, _generate

    model, tokenizer = load_model(family_models[family])
    questions = ["What colour is the sky?", "Hello", "Name a river in a city please now"]
    prompts = [
        tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True)
        for q in questions
    ]
    texts, _ = _generate(model, tokenizer, prompts, Sampling(max_tokens=8), seed=0)
    alone_model, _ = load(str(family_models[family]))
    for prompt, text in zip(prompts, texts, strict=True):
        # the tokens, decoded as batch generation decodes them: mlx-lm's streaming
        # detokenizer writes the byte 0x00 as "Ā" (its byte table's 0 reads as missing)
        steps = stream_generate(alone_model, tokenizer, prompt, max_tokens=8)
        alone = [s.token for s in steps if s.token not in tokenizer.eos_token_ids]
        assert text == tokenizer.decode(alone).strip(), family


@pytest.mark.parametrize("family", list(FAMILIES))
def test_the_engine_chats_as_mlx_lm_generates(family_models, family, tmp_path):
    """Chat (the page's and the API's) through the engine: greedy, mlx-lm's own answer."""
    import shutil

    from core.serve.engine import GenerationParams, InferenceEngine
    from core.serve.registry import ModelRegistry

    settings = Settings.from_env(tmp_path / "home").ensure()
    shutil.copytree(family_models[family], settings.models / family)
    engine = InferenceEngine(ModelRegistry(settings, hub=tmp_path / "no-hub"))
    try:
        question = [{"role": "user", "content": "What colour is the sky?"}]
        params = GenerationParams(temperature=0.0, max_tokens=8)
        reply, _ = engine.chat(family, question, params)
    finally:
        engine.close()
    model, tokenizer = load(str(family_models[family]))
    prompt = tokenizer.apply_chat_template(question, add_generation_prompt=True)
    assert reply.strip() == generate(model, tokenizer, prompt, max_tokens=8).strip()


@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_default_run_resumes_exactly_after_sigkill_exports_and_fuses(
    family_models, family, data, tmp_path
):
    path = family_models[family]
    straight_home, killed_home = tmp_path / "straight", tmp_path / "killed"
    straight = TrainingService(Settings.from_env(straight_home))
    reference = straight.start(path, data, TrainingParams(**RUN))
    assert isinstance(reference.wait(timeout=240), protocol.Complete), reference.last_event
    start = next(e for e in reference.events if isinstance(e, protocol.Start))
    assert start.trainable_params > 0

    service = TrainingService(Settings.from_env(killed_home))
    killed = service.start(path, data, TrainingParams(**RUN))
    for event in killed.follow(timeout=240):
        if isinstance(event, protocol.Checkpoint):  # the first epoch's
            os.kill(killed.pid, signal.SIGKILL)
            break
    assert "SIGKILL" in killed.wait(timeout=60).error
    resumed = service.resume(killed.id)
    assert isinstance(resumed.wait(timeout=240), protocol.Complete), resumed.last_event

    ours = mx.load(str(killed_home / "adapters" / killed.id / "adapters.safetensors"))
    theirs = mx.load(str(straight_home / "adapters" / reference.id / "adapters.safetensors"))
    assert ours.keys() == theirs.keys()
    for name in ours:
        np.testing.assert_allclose(ours[name], theirs[name], atol=1e-5, err_msg=name)
    check_exports(service.settings, killed.id, path, tmp_path)


def check_exports(settings: Settings, adapter_id: str, base_path: Path, tmp_path: Path) -> None:
    """mlx-lm loads the adapter; its PEFT export imports back to the same weights; it fuses
    into a base whose logits are the adapted model's."""
    from core.adapters.export import export_adapter, import_any
    from core.adapters.store import AdapterStore

    store, base = AdapterStore(settings.adapters), inspect_model(base_path)
    adapted_model, tokenizer = load(str(base_path), adapter_path=str(store.path(adapter_id)))
    peft = export_adapter(store, adapter_id, base, "peft", tmp_path / "peft")
    again = import_any(peft, store, base, "back from PEFT")
    ours = mx.load(str(store.path(adapter_id) / "adapters.safetensors"))
    back = mx.load(str(store.path(again) / "adapters.safetensors"))
    for name, value in ours.items():
        np.testing.assert_allclose(back[name], value, atol=1e-6, err_msg=name)
    fused = store.fuse(adapter_id, base, tmp_path / "fused", "fused")
    fused_model, _ = load(str(fused))
    probe = mx.array([tokenizer.encode("What colour is the sky?")])
    np.testing.assert_allclose(fused_model(probe), adapted_model(probe), rtol=1e-3, atol=1e-4)


def test_a_mixture_of_experts_adapts_its_experts_when_asked(family_models, data, tmp_path):
    """qwen3_moe's experts are one SwitchLinear per projection: LoRA on them as mlx-lm puts
    it (a low-rank update per expert), named by the model's own module names."""
    keys = ["self_attn.q_proj", "mlp.switch_mlp.gate_proj", "mlp.switch_mlp.up_proj"]
    params = TrainingParams(epochs=1, samples=0, keys=keys)
    service = TrainingService(Settings.from_env(tmp_path / "home"))
    run = service.start(family_models["qwen3_moe"], data, params)
    assert isinstance(run.wait(timeout=240), protocol.Complete), run.last_event
    start = next(e for e in run.events if isinstance(e, protocol.Start))
    assert start.lora_modules == 3 * 8  # 3 modules in each of the 8 adapted layers
    # rank 8: q (64 -> 64) and, per expert of 4, gate and up (64 -> 32)
    assert start.trainable_params == 8 * (8 * (64 + 64) + 2 * 4 * 8 * (64 + 32))
    adapter = service.settings.adapters / run.id
    model, _ = load(str(family_models["qwen3_moe"]), adapter_path=str(adapter))
    assert model is not None


@pytest.mark.parametrize("family", GGUF_FAMILIES)
def test_a_gguf_of_each_family_llama_cpp_knows_has_its_own_names_and_keys(
    family_models, family, tmp_path
):
    """The fused-model GGUF, read back with the ``gguf`` package: the family's architecture,
    every tensor one llama.cpp's table has for it (``gguf.MODEL_TENSORS``), every weight
    there, the hyperparameters under the family's keys; q and k permuted only where
    llama.cpp's converter permutes them; Llama 3's rope factors as ``rope_freqs``.
    (llama.cpp itself runs them in bench/llama_cpp_check.py, docs/compatibility.md.)"""
    import gguf

    from core.adapters.gguf_export import write_model_gguf
    from core.models.gguf_arch import gguf_family, permute

    path = family_models[family]
    config = json.loads((path / "config.json").read_text())
    written = write_model_gguf(path, tmp_path / "model.gguf", "f32")
    reader = gguf.GGUFReader(str(written))
    arch = gguf_family(config).name
    field = reader.fields["general.architecture"]
    assert bytes(field.parts[field.data[0]]).decode() == arch
    member = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch)
    allowed = {
        gguf.TENSOR_NAMES[t].format(bid=b)
        for t in gguf.MODEL_TENSORS[member]
        for b in range(config["num_hidden_layers"])
    }
    tensors = {t.name: t for t in reader.tensors}
    assert {name.rsplit(".", 1)[0] for name in tensors} <= allowed
    weights = mx.load(str(path / "model.safetensors"))
    rope = {"llama": 1, "phi3": 2}.get(family, 0)  # rope_freqs; rope_factors_long, _short
    assert len(tensors) == len(weights) + rope
    assert int(reader.fields[f"{arch}.block_count"].parts[-1][0]) == config["num_hidden_layers"]
    assert int(reader.fields[f"{arch}.attention.head_count_kv"].parts[-1][0]) == 2
    mlx_q, gguf_q = ("qkv_proj", "attn_qkv") if family == "phi3" else ("q_proj", "attn_q")
    q = np.array(weights[f"model.layers.1.self_attn.{mlx_q}.weight"])
    stored = np.array(tensors[f"blk.1.{gguf_q}.weight"].data)
    permuted = family in ("llama", "mistral", "smollm3")
    np.testing.assert_array_equal(stored.reshape(q.shape), permute(q, 4) if permuted else q)
    norm = np.array(weights["model.layers.1.input_layernorm.weight"])
    shift = 1.0 if family.startswith("gemma") else 0.0  # Gemma's norms hold weight - 1
    np.testing.assert_array_equal(tensors["blk.1.attn_norm.weight"].data, norm + shift)
    if family == "llama":
        assert tensors["rope_freqs.weight"].data.shape == (16 // 2,)
    if family == "phi3":
        long = np.float32(config["rope_scaling"]["long_factor"])
        np.testing.assert_array_equal(tensors["rope_factors_long.weight"].data, long)
    if family == "gemma2":
        assert float(reader.fields[f"{arch}.final_logit_softcapping"].parts[-1][0]) == 30.0
    if family == "qwen3_moe":
        assert int(reader.fields[f"{arch}.expert_count"].parts[-1][0]) == 4
        assert tuple(tensors["blk.0.ffn_gate_exps.weight"].shape) == (64, 32, 4)


@pytest.mark.parametrize(
    ("family", "change", "reason"),
    [
        ("gemma3_text", {"sliding_window_pattern": 2}, "5 layers of 6"),
        ("gemma2", {"query_pre_attn_scalar": 144}, "query_pre_attn_scalar 144"),
        ("smollm3", {"no_rope_layer_interval": 3}, "every 4th layer"),
        ("qwen3_5", {}, "not 'qwen3_5'"),  # no writer here yet for its linear attention
        ("gemma4_text", {}, "not 'gemma4_text'"),
    ],
)
def test_a_config_llama_cpp_would_run_otherwise_is_refused_before_export(
    family_models, family, change, reason
):
    """llama.cpp fixes some settings per family instead of reading them from the file: a
    model that departs from them is refused with the reason, not exported to run wrong."""
    from core.errors import StudioError
    from core.models.gguf_arch import gguf_family

    config = {**json.loads((family_models[family] / "config.json").read_text()), **change}
    with pytest.raises(StudioError, match=reason):
        gguf_family(config)


# a conversation none of the Ollama format probes uses: two system lines, three user turns
CONVERSATION = [
    {"role": "system", "content": "Answer as a sailor.\nKeep it short."},
    {"role": "user", "content": "Where is the harbour?"},
    {"role": "assistant", "content": "Past the red light."},
    {"role": "user", "content": "And the inn?"},
    {"role": "assistant", "content": "By the water, mate."},
    {"role": "user", "content": "Thanks."},
]


@pytest.mark.parametrize("family", GGUF_FAMILIES)
def test_the_chat_template_and_stop_tokens_survive_export(family_models, family, tmp_path):
    """The prompt and the stop token after export are the ones the adapter was trained with:
    the GGUF carries the model's own chat template, its end-of-sequence and end-of-turn ids
    and whether llama.cpp adds the BOS; the Ollama TEMPLATE, rendered as Ollama renders it,
    writes the prompt transformers writes from the Hugging Face template for a conversation
    with a system prompt and several turns; the stop lines hold every token mlx-lm stops at;
    the PEFT export's tokenizer renders the same prompt."""
    import gguf
    from transformers import AutoTokenizer

    from core.adapters import ollama
    from core.adapters.gguf_export import write_model_gguf
    from core.adapters.go_template import ollama_values, render
    from core.adapters.peft import TOKENIZER_FILES
    from core.models.families import CHAT_FORMATS

    path, chat = family_models[family], CHAT_FORMATS[family]
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    reader = gguf.GGUFReader(str(write_model_gguf(path, tmp_path / "m.gguf", "f32")))

    def field(key):
        found = reader.fields[key]
        value = found.parts[found.data[0]]
        return bytes(value).decode() if value.dtype == np.uint8 else value[0]

    assert field("tokenizer.chat_template") == tokenizer.chat_template == chat.template
    assert field("tokenizer.ggml.eos_token_id") == tokenizer.convert_tokens_to_ids(chat.eos)
    if chat.end_of_turn != chat.eos:
        eot = tokenizer.convert_tokens_to_ids(chat.end_of_turn)
        assert field("tokenizer.ggml.eot_token_id") == eot
    assert bool(field("tokenizer.ggml.add_bos_token")) == (chat.bos is not None)

    def hf_render(messages):
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    template, stops = ollama.ollama_template(hf_render, tokenizer.bos_token, tokenizer.eos_token)
    assert template is not None, f"no Ollama format renders {family}'s template"
    for messages in (CONVERSATION, CONVERSATION[1:], CONVERSATION[:2]):
        ollama_prompt = (chat.bos or "") + render(template, ollama_values(messages))
        assert ollama_prompt == hf_render(messages)
    _, mlx_tokenizer = load(str(path))
    stopped_at = {mlx_tokenizer.convert_ids_to_tokens(i) for i in mlx_tokenizer.eos_token_ids}
    assert stopped_at == set(chat.stop_tokens) and stopped_at <= set(stops)
    peft_folder = tmp_path / "peft"
    peft_folder.mkdir()
    for name in TOKENIZER_FILES:
        if (path / name).is_file():
            (peft_folder / name).write_bytes((path / name).read_bytes())
    again = AutoTokenizer.from_pretrained(str(peft_folder))
    assert again.apply_chat_template(CONVERSATION, tokenize=False) == tokenizer.apply_chat_template(
        CONVERSATION, tokenize=False
    )


def test_a_base_that_cannot_go_to_gguf_says_why_in_the_model_list(family_models, tmp_path):
    """Before anyone waits for a fuse: ``lora-studio models --json`` (and the Export panel,
    through the same ``gguf_limit``) says which bases go to GGUF, and why one does not."""
    import shutil

    from tests.helpers import lora_studio

    models = tmp_path / "home" / "models"
    shutil.copytree(family_models["qwen3"], models / "qwen3")
    odd = shutil.copytree(family_models["gemma3_text"], models / "odd-gemma")
    config = json.loads((odd / "config.json").read_text())
    (odd / "config.json").write_text(json.dumps({**config, "sliding_window_pattern": 2}))
    done = lora_studio("models", "list", "--json", home=tmp_path / "home")
    assert done.returncode == 0, done.stderr
    rows = {row["id"]: row for row in json.loads(done.stdout)}
    assert rows["qwen3"]["gguf"] == "yes"
    assert "5 layers of 6" in rows["odd-gemma"]["gguf"]
    listed = lora_studio("models", "list", home=tmp_path / "home").stdout
    assert "GGUF / Ollama export: no, llama.cpp would run this gemma3_text model" in listed


@pytest.mark.parametrize("family", GGUF_FAMILIES)
def test_a_gguf_of_each_family_imports_back_as_the_same_model(family_models, family, tmp_path):
    """``models import-gguf`` reads every family the export writes (LM Studio's and Ollama's
    folders hold GGUFs people already have): the imported model's config names the family,
    its chat prompt tokenizes the same, it stops at the same tokens, and its logits are the
    original's (f32: exactly, llama.cpp's permutations and Gemma's norm offset undone)."""
    from core.adapters.gguf_export import write_model_gguf
    from core.models.gguf_import import import_gguf

    path = family_models[family]
    gguf_file = write_model_gguf(path, tmp_path / "m.gguf", "f32")
    back = import_gguf(gguf_file, tmp_path / "models", "back", progress=lambda _: None)
    expected = "llama" if family == "mistral" else family  # one llama.cpp architecture
    assert json.loads((back / "config.json").read_text())["model_type"] == expected
    original, original_tokenizer = load(str(path))
    imported, imported_tokenizer = load(str(back))
    prompt = original_tokenizer.apply_chat_template(CONVERSATION, add_generation_prompt=True)
    assert (
        imported_tokenizer.apply_chat_template(CONVERSATION, add_generation_prompt=True) == prompt
    )
    assert imported_tokenizer.eos_token_ids == original_tokenizer.eos_token_ids
    np.testing.assert_array_equal(
        np.array(imported(mx.array([prompt]))), np.array(original(mx.array([prompt])))
    )


@pytest.mark.parametrize("family", list(FAMILIES))
def test_grpo_dpo_and_full_fine_tuning_train_on_each_family(family_models, family, tmp_path):
    """The methods beyond SFT on every family: GRPO (answers drawn by mlx-lm's batch
    generation, the reference with the adapter switched off), DPO (the base's reference
    pass), and full fine-tuning, whose new model mlx-lm loads and runs."""
    path = family_models[family]
    settings = Settings.from_env(tmp_path / "studio")
    service = TrainingService(settings)
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"Sky {i}?"} for i in range(24)])
    preferences = write_jsonl(tmp_path / "prefs.jsonl", colour_preferences(24))
    sft = write_jsonl(tmp_path / "colours.jsonl", colour_rows(24))
    grpo = dict(method="grpo", reward=["length:1-3"], group_size=2, max_completion_tokens=6)
    runs = {
        "grpo": (prompts, TrainingParams(**RUN, **grpo, samples=0)),
        "dpo": (preferences, TrainingParams(**RUN, method="dpo")),
        "full": (sft, TrainingParams(**RUN, fine_tune_type="full", lora_layers=1)),
    }
    for method, (rows, params) in runs.items():
        run = service.start(path, rows, params.model_copy(update={"epochs": 1}))
        final = run.wait(timeout=240)
        assert isinstance(final, protocol.Complete), (method, final)
        assert all(math.isfinite(e.loss) for e in run.events if isinstance(e, protocol.Progress))
    model, tokenizer = load(str(settings.models / final.model_id))
    probe = mx.array([tokenizer.encode("What colour is the sky?")])
    assert np.isfinite(np.array(model(probe))).all()
