"""DoRA adapters: trained by the studio, loaded by mlx-lm, served by the engine (swapped with
LoRA adapters on one base), exported and imported, fused. Real training on the toy llama."""

from __future__ import annotations

import json

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm import generate, load
from safetensors.numpy import load_file

from core import protocol
from core.adapters.export import export_adapter, import_any
from core.adapters.store import AdapterMetadata, AdapterStore
from core.errors import StudioError
from core.models.inspect import inspect_model
from core.params import TrainingParams
from core.serve.engine import GenerationParams, InferenceEngine
from core.serve.registry import ModelRegistry
from core.train.service import TrainingService
from tests.helpers import colour_rows, lora_studio, studio_with_toy, write_jsonl

QUESTION = [{"role": "user", "content": "What colour is the sky number 3?"}]
GREEDY = GenerationParams(temperature=0.0, max_tokens=10)


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, toy_model):
    """A studio with the toy base, a DoRA adapter and a LoRA adapter trained on it."""
    home = tmp_path_factory.mktemp("dora-studio")
    settings = studio_with_toy(home, toy_model)
    service = TrainingService(settings)
    data = write_jsonl(home / "colours.jsonl", colour_rows(32))
    ids = {}
    for kind in ("dora", "lora"):
        params = TrainingParams(learning_rate=2e-2, epochs=2, lora_layers=-1, fine_tune_type=kind)
        run = service.start(settings.models / "toy", data, params)
        final = run.wait(timeout=300)
        assert isinstance(final, protocol.Complete), final
        ids[kind] = final.adapter_id
    return settings, ids


def mlx_lm_reply(settings, adapter_id=None) -> str:
    adapter = str(settings.adapters / adapter_id) if adapter_id else None
    model, tokenizer = load(str(settings.models / "toy"), adapter_path=adapter)
    prompt = tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True)
    return generate(model, tokenizer, prompt=prompt, max_tokens=GREEDY.max_tokens)


def test_a_dora_adapter_is_recorded_as_such_and_carries_magnitudes(adapters):
    settings, ids = adapters
    folder = settings.adapters / ids["dora"]
    assert json.loads((folder / "adapter_config.json").read_text())["fine_tune_type"] == "dora"
    assert AdapterMetadata.read(folder).model_extra["fineTuneType"] == "dora"
    weights = mx.load(str(folder / "adapters.safetensors"))
    magnitudes = [name for name in weights if name.endswith(".m")]  # one per adapted layer
    # the toy's 4 layers x the 4 attention projections, as for the LoRA adapter
    assert len(magnitudes) == 16
    for kind in ("dora", "lora"):
        assert AdapterMetadata.read(settings.adapters / ids[kind]).layerCount == 16


def test_the_engine_serves_dora_and_lora_on_one_base_like_mlx_lm(adapters):
    settings, ids = adapters
    expected = {kind: mlx_lm_reply(settings, adapter_id) for kind, adapter_id in ids.items()}
    base = mlx_lm_reply(settings)
    assert expected["dora"] != base  # the adapter changes the model's output
    engine = InferenceEngine(ModelRegistry(settings, hub=settings.home / "no-hub"))
    try:
        for kind in ("dora", "lora", "dora"):  # swapped both ways on the same base
            reply, _ = engine.chat(f"lora/{ids[kind]}", QUESTION, GREEDY)
            assert reply == expected[kind], kind
        assert engine.chat("toy", QUESTION, GREEDY)[0] == base  # back to the bare base
    finally:
        engine.close()


def test_a_dora_adapter_exports_imports_and_fuses(adapters, tmp_path):
    settings, ids = adapters
    store = AdapterStore(settings.adapters)
    base = inspect_model(settings.models / "toy")
    zipped = export_adapter(store, ids["dora"], base, "zip", tmp_path / "dora.zip")
    again = import_any(zipped, store, base, name="DoRA again")
    assert mlx_lm_reply(settings, again) == mlx_lm_reply(settings, ids["dora"])

    fused = store.fuse(ids["dora"], base, tmp_path / "fused", "fused")
    model, tokenizer = load(str(fused))
    prompt = tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True)
    assert generate(model, tokenizer, prompt=prompt, max_tokens=10) == mlx_lm_reply(
        settings, ids["dora"]
    )
    peft = export_adapter(store, ids["dora"], base, "peft", tmp_path / "peft")
    assert json.loads((peft / "adapter_config.json").read_text())["use_dora"] is True
    magnitudes = load_file(str(peft / "adapter_model.safetensors"))
    mine = mx.load(str(settings.adapters / ids["dora"] / "adapters.safetensors"))
    stem = "model.layers.0.self_attn.q_proj"
    exported = magnitudes[f"base_model.model.{stem}.lora_magnitude_vector"]
    assert (exported == np.array(mine[f"{stem}.m"])).all()
    back = import_any(peft, store, base, name="DoRA from PEFT")
    assert AdapterMetadata.read(settings.adapters / back).model_extra["fineTuneType"] == "dora"
    assert mlx_lm_reply(settings, back) == mlx_lm_reply(settings, ids["dora"])
    with pytest.raises(StudioError, match="GGUF adapters are LoRA only") as refused:
        export_adapter(store, ids["dora"], base, "gguf-adapter", tmp_path / "a.gguf")
    assert "fused model" in refused.value.hint


def test_a_dora_peft_adapter_missing_a_module_is_refused(adapters, tmp_path):
    from safetensors.numpy import save_file

    settings, ids = adapters
    store = AdapterStore(settings.adapters)
    base = inspect_model(settings.models / "toy")
    peft = export_adapter(store, ids["dora"], base, "peft", tmp_path / "peft")
    weights = load_file(str(peft / "adapter_model.safetensors"))
    left_out = "base_model.model.model.layers.2.self_attn.v_proj.lora_magnitude_vector"
    del weights[left_out]
    save_file(weights, str(peft / "adapter_model.safetensors"))
    before = sorted(settings.adapters.iterdir())
    with pytest.raises(StudioError, match="leaves out model.layers.2.self_attn.v_proj"):
        import_any(peft, store, base, name=None)
    assert sorted(settings.adapters.iterdir()) == before  # nothing half-imported


def test_an_unknown_fine_tune_type_is_refused_naming_the_field(studio, toy_model, colour_dataset):
    args = ["--model", str(toy_model), "--data", str(colour_dataset), "--fine-tune-type", "lora4"]
    done = lora_studio("train", *args, home=studio.home)
    assert done.returncode == 2
    assert "--fine-tune-type" in done.stderr and "Traceback" not in done.stderr
