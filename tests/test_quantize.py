"""Quantized bases (QLoRA): mlx-lm's conversion into the models folder, training on it, chatting.

Real 4- and 8-bit copies of the toy llama; real training processes; the engine against mlx-lm.
"""

from __future__ import annotations

import json
import shutil

import pytest
from mlx_lm import generate, load

from core import protocol
from core.adapters.store import AdapterMetadata
from core.errors import StudioError
from core.models.quantize import cpu_slowdown_warning, quantize
from core.params import TrainingParams
from core.serve.engine import GenerationParams, InferenceEngine
from core.serve.registry import ModelRegistry
from core.train.service import TrainingService
from tests.helpers import colour_rows, lora_studio, write_jsonl

QUESTION = [{"role": "user", "content": "What colour is the sky number 3?"}]


@pytest.fixture
def toy_in_studio(studio, toy_model):
    shutil.copytree(toy_model, studio.models / "toy")
    return studio


def test_the_cli_writes_a_quantized_copy_and_refuses_what_it_cannot(toy_in_studio):
    studio = toy_in_studio
    done = lora_studio("models", "quantize", "toy", "--bits", "4", home=studio.home)
    assert done.returncode == 0, done.stderr
    config = json.loads((studio.models / "toy-4bit" / "config.json").read_text())
    assert config["quantization"]["bits"] == 4 and config["quantization"]["group_size"] == 64
    assert sorted(p.name for p in studio.models.iterdir()) == ["toy", "toy-4bit"]  # no partial

    again = lora_studio("models", "quantize", "toy", "--bits", "4", home=studio.home)
    assert again.returncode == 1 and "toy-4bit already exists" in again.stderr
    twice = lora_studio("models", "quantize", "toy-4bit", "--bits", "8", home=studio.home)
    assert twice.returncode == 1 and "already quantized (4-bit)" in twice.stderr
    odd = lora_studio("models", "quantize", "toy", "--bits", "3", home=studio.home)
    assert odd.returncode == 2 and "argument --bits: invalid choice: 3" in odd.stderr
    assert "Traceback" not in again.stderr + twice.stderr + odd.stderr
    with pytest.raises(StudioError, match="group_size = 48: choose 32, 64 or 128"):
        quantize(studio.models / "toy", studio.models, 8, group_size=48)


@pytest.mark.parametrize("bits", [4, 8])
def test_an_adapter_trained_on_a_quantized_base_chats_like_mlx_lm(toy_in_studio, bits):
    studio = toy_in_studio
    base = quantize(studio.models / "toy", studio.models, bits)
    service = TrainingService(studio)
    data = studio.home / "colours.jsonl"
    write_jsonl(data, colour_rows(32))
    params = TrainingParams(learning_rate=1e-2, epochs=1, lora_layers=-1, batch_size=4)
    run = service.start(base, data, params)
    final = run.wait(timeout=300)
    assert isinstance(final, protocol.Complete), final
    metadata = AdapterMetadata.read(run.adapter_path)
    assert metadata.model_extra["baseQuantization"]["bits"] == bits
    assert cpu_slowdown_warning(run.model) and "30x slower" in cpu_slowdown_warning(run.model)

    engine = InferenceEngine(ModelRegistry(studio, hub=studio.home / "no-hub"))
    try:
        greedy = GenerationParams(temperature=0.0, max_tokens=10)
        reply, _ = engine.chat(f"lora/{final.adapter_id}", QUESTION, greedy)
    finally:
        engine.close()
    model, tokenizer = load(str(base), adapter_path=str(run.adapter_path))
    prompt = tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True)
    assert reply == generate(model, tokenizer, prompt=prompt, max_tokens=10)
