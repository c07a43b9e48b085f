"""Full fine-tuning: the last layers' own weights trained in the one loop, published as a new
base model in models/ that mlx-lm loads, the registry lists and later adapters train on.

Real worker processes on the toy llama; the kill is a real SIGKILL.
"""

from __future__ import annotations

import json

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm import generate, load

from core import protocol
from core.errors import StudioError
from core.models.inspect import ModelInfo, inspect_model
from core.params import TrainingParams
from core.serve.registry import ModelRegistry
from core.settings import Settings
from core.train import checkpoints
from core.train.plan import DataShape, ModelShape, estimate, plan
from core.train.service import TrainingService
from tests.helpers import colour_preferences, colour_rows, lora_studio, sigkill_at, write_jsonl

# 48 training rows: 12 steps an epoch at batch 4; checkpoints every 5 steps fall mid-epoch;
# the toy's last 2 of 4 layers trained (the first two give their kept outputs)
FULL = dict(
    fine_tune_type="full", learning_rate=1e-3, epochs=3, lora_layers=2, save_every=5, seed=3
)


def model_weights(folder) -> dict[str, np.ndarray]:
    return {k: np.array(v) for k, v in mx.load(str(folder / "model.safetensors")).items()}


@pytest.fixture(scope="module")
def straight(tmp_path_factory, toy_model):
    """The full fine-tuning run, never interrupted: (settings, its final event, the data)."""
    home = tmp_path_factory.mktemp("full")
    settings = Settings.from_env(home).ensure()
    data = write_jsonl(home / "colours.jsonl", colour_rows())
    run = TrainingService(settings).start(toy_model, data, TrainingParams(**FULL), name="Sky")
    final = run.wait(timeout=240)
    assert isinstance(final, protocol.Complete), final
    return settings, final, data


def test_the_result_is_a_new_base_model_that_mlx_lm_loads(straight, toy_model):
    settings, final, _ = straight
    assert final.model_id == "sky" and final.adapter_id is None
    folder = settings.models / "sky"
    assert final.adapter_path == str(folder)
    record = json.loads((folder / "metadata.json").read_text())
    assert record["fineTuneType"] == "full" and record["baseModelPath"] == str(toy_model)
    assert record["trainingDataset"] == "colours.jsonl"
    assert json.loads((folder / "training_config.json").read_text())["fine_tune_type"] == "full"
    trained, base = model_weights(folder), model_weights(toy_model)
    assert trained.keys() == base.keys()
    changed = {name for name in base if not np.array_equal(trained[name], base[name])}
    assert changed and all(".layers.2." in n or ".layers.3." in n for n in changed)
    model, tokenizer = load(str(folder))  # a base like any other
    assert generate(model, tokenizer, "What colour is the sky?", max_tokens=4)
    registry = ModelRegistry(settings)
    registry.reload()
    assert registry.get("sky").kind == "base"


def test_a_full_run_resumes_bitwise_after_sigkill(studio, toy_model, straight):
    """SIGKILL mid-run, resume: the published model is the uninterrupted run's, bit for bit;
    only the newest and the best checkpoints were kept (they are whole layers)."""
    reference, expected, data = straight
    service = TrainingService(studio)
    killed = service.start(toy_model, data, TrainingParams(**FULL), name="Sky")
    sigkill_at(killed, 22)
    assert "SIGKILL" in killed.last_event.error
    kept = checkpoints.steps(studio.runs / killed.id / "checkpoints")
    assert 1 <= len(kept) <= 2 and kept[-1] >= 20, kept
    resumed = service.resume(killed.id)
    final = resumed.wait(timeout=240)
    assert isinstance(final, protocol.Complete), final
    again, reference_weights = (
        model_weights(studio.models / "sky"),
        model_weights(reference.models / "sky"),
    )
    for name, value in reference_weights.items():
        assert np.array_equal(again[name], value), name
    assert final.kept_step == expected.kept_step and final.best_loss == expected.best_loss


def test_an_adapter_trains_on_the_new_model(straight, tmp_path):
    """The new model is a base for later adapters: the CLI trains one on it by its id."""
    settings, _, data = straight
    done = lora_studio(
        *("train", "--model", "sky", "--data", str(data), "--epochs", "1", "--lora-layers", "2"),
        home=settings.home,
    )
    assert done.returncode == 0, done.stderr
    adapter = next(settings.adapters.iterdir())
    meta = json.loads((adapter / "metadata.json").read_text())
    assert meta["baseModelId"] == "sky"
    load(str(settings.models / "sky"), adapter_path=str(adapter))


def test_orpo_and_dpo_fully_fine_tune(tmp_path, toy_model):
    """No frozen copy is needed: DPO's reference log-probabilities are computed from the
    base before the first step, and ORPO has none."""
    data = write_jsonl(tmp_path / "prefs.jsonl", colour_preferences(40))
    for method in ("orpo", "dpo"):
        done = lora_studio(
            *("train", "--method", method, "--fine-tune-type", "full", "--epochs", "1"),
            *("--lora-layers", "1", "--name", method, "--model", str(toy_model)),
            *("--data", str(data)),
            home=tmp_path / "home",
        )
        assert done.returncode == 0, done.stderr
        assert f"model id: {method}" in done.stdout
        meta = json.loads((tmp_path / "home" / "models" / method / "metadata.json").read_text())
        assert meta["method"] == method and meta["rewardAccuracy"] is not None


def test_a_quantized_base_is_refused_with_the_lora_alternative(toy_model):
    info = inspect_model(toy_model)
    quantized = ModelInfo(**{**vars(info), "quantization": {"bits": 4, "group_size": 64}})
    with pytest.raises(StudioError) as refused:
        TrainingParams(fine_tune_type="full").for_model(quantized)
    assert "quantized" in refused.value.message and "--fine-tune-type lora" in refused.value.hint


def test_the_plan_counts_the_trained_layers_and_offers_lora_first(toy_model):
    info = inspect_model(toy_model)
    shape = ModelShape.of(info)
    data = DataShape(longest=120, window=100, tokens=5000, size_bytes=20000)
    full = TrainingParams(fine_tune_type="full", lora_layers=2).for_model(info)
    lora = TrainingParams(lora_layers=2).for_model(info)
    layer = shape.layer_bytes
    assert layer == sum(int(np.prod(s)) * 4 for n, s in info.tensors.items() if ".layers.3." in n)
    assert estimate(shape, full, data).trained_gb == pytest.approx(2 * layer * 3 / 1e9)
    assert estimate(shape, full, data).trained_gb > estimate(shape, lora, data).trained_gb
    between = (estimate(shape, lora, data).peak_gb + estimate(shape, full, data).peak_gb) / 2
    tight = plan(shape, full, data, available_gb=between)
    first = tight.alternatives[0]
    assert not tight.fits and first.flags == "--fine-tune-type lora" and first.fits
    assert not any("bit base" in a.change for a in tight.alternatives)
