"""The memory plan: what it reads from the model and the dataset, how it answers, and the
refusal of a run that would not fit (the budget set with LORA_STUDIO_MEMORY_GB).

Its accuracy against measured peaks is bench/memory_plan.py's job (docs/benchmarks.md)."""

from __future__ import annotations

import argparse
import json
import shlex

import pytest

from core.data.scan import SAMPLE_ROWS, scan_dataset
from core.errors import StudioError
from core.models.inspect import inspect_model, tokenizer
from core.params import TrainingParams, add_arguments, params_from_args
from core.train.loss import target_window
from core.train.plan import DataShape, ModelShape, estimate, plan
from core.train.service import TrainingService
from tests.helpers import colour_rows, lora_studio, write_jsonl


def long_row(words: int) -> dict:
    return {
        "messages": [
            {"role": "user", "content": "Tell me about the sky."},
            {"role": "assistant", "content": " ".join(["the sky is blue"] * words)},
        ]
    }


@pytest.fixture
def shapes(toy_model):
    info = inspect_model(toy_model)
    data = DataShape(longest=120, window=100, tokens=5000, size_bytes=20000)
    return ModelShape.of(info), TrainingParams(lora_layers=4).for_model(info), data


def test_the_model_shape_comes_from_config_and_headers(toy_model):
    shape = ModelShape.of(inspect_model(toy_model))
    config = json.loads((toy_model / "config.json").read_text())
    assert (shape.hidden, shape.layers, shape.vocab) == (64, 4, config["vocab_size"])
    assert shape.dtype_bytes == 4 and not shape.quantized
    assert shape.weights_bytes == (toy_model / "model.safetensors").stat().st_size
    assert shape.projections["self_attn.k_proj"] == (64, 32)  # 2 of 4 heads for keys/values
    assert shape.quantized_bytes < shape.weights_bytes / 4


def test_the_data_shape_finds_the_longest_row_beyond_the_sample(tmp_path, toy_model):
    """The longest row sits after the sample: the scan's heap keeps it, and the plan's
    width and loss window equal what the worker's mlx-lm datasets give."""
    rows = colour_rows(SAMPLE_ROWS + 50)
    rows[SAMPLE_ROWS + 20] = long_row(30)
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    scan = scan_dataset(path, batch_size=4)
    tok = tokenizer(toy_model)
    data = DataShape.of(scan, tok, mask_prompt=True)
    from types import SimpleNamespace

    from mlx_lm.tuner.datasets import create_dataset

    worker = create_dataset(rows, tok, SimpleNamespace(mask_prompt=True))
    items = [worker.process(row) for row in rows]
    assert data.longest == max(len(tokens) for tokens, _ in items)
    assert data.window == target_window(items, max_seq_length=10**6)
    assert data.window < data.longest  # the prompt is masked
    # the dataset's tokens in all, scaled from the rows seen: within 10% of the real count
    assert data.tokens == pytest.approx(sum(len(tokens) for tokens, _ in items), rel=0.1)


def test_the_estimate_follows_the_run(shapes):
    model, params, data = shapes
    base = estimate(model, params, data)
    parts = base.weights_gb + base.trained_gb + base.activations_gb + base.loss_gb
    assert base.peak_gb == pytest.approx(parts + base.data_gb + base.runtime_gb)
    halved = estimate(model, params.model_copy(update={"batch_size": 2}), data)
    assert halved.activations_gb == pytest.approx(base.activations_gb / 2)
    assert halved.loss_gb == pytest.approx(base.loss_gb / 2)
    checkpointed = estimate(model, params.model_copy(update={"grad_checkpoint": True}), data)
    assert checkpointed.activations_gb < base.activations_gb / 2
    truncated = estimate(model, params.model_copy(update={"max_seq_length": 32}), data)
    assert truncated.activations_gb < base.activations_gb / 3
    dora = estimate(model, params.model_copy(update={"fine_tune_type": "dora"}), data)
    assert dora.trained_gb > base.trained_gb
    two_ranks = estimate(model, params, data, ranks=2)
    assert two_ranks.activations_gb == pytest.approx(halved.activations_gb)


def test_alternatives_are_what_their_flags_give(shapes):
    """Each alternative, applied through its own flags, gives the estimate it shows."""
    model, params, data = shapes
    base = estimate(model, params, data)
    budget = base.runtime_gb + base.weights_gb + (base.activations_gb + base.loss_gb) / 2
    found = plan(model, params, data, budget)
    assert not found.fits and found.peak_gb == pytest.approx(base.peak_gb)
    kinds = {a.change.split(" ")[0] for a in found.alternatives}
    assert kinds == {"gradient", "batch", "LoRA", "a"}  # a 4-bit base; the rows are short
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    for alternative in found.alternatives:
        assert alternative.peak_gb < base.peak_gb
        assert alternative.fits == (alternative.peak_gb <= budget)
        if alternative.flags:
            argv = params.to_argv() + shlex.split(alternative.flags)
            changed = params_from_args(parser.parse_args(argv))
            assert estimate(model, changed, data).peak_gb == pytest.approx(alternative.peak_gb)
    assert plan(model, params, data, base.peak_gb + 0.01).fits


def test_a_run_that_does_not_fit_is_refused_until_forced(studio, toy_model, tmp_path, monkeypatch):
    data = write_jsonl(tmp_path / "colours.jsonl", colour_rows(24))
    monkeypatch.setenv("LORA_STUDIO_MEMORY_GB", "0.05")
    service = TrainingService(studio)
    params = TrainingParams(lora_layers=-1, epochs=1)
    with pytest.raises(StudioError, match="needs about .* GB of 0.05 GB available") as refused:
        service.start(toy_model, data, params)
    assert "--grad-checkpoint" in refused.value.hint and "--force" in refused.value.hint
    assert not [p for p in studio.runs.iterdir() if p.is_dir()]
    run = service.start(toy_model, data, params, force=True)
    assert run.wait(timeout=120).type == "complete"
    assert run.memory is not None and not run.memory.fits


def test_the_cli_plans_refuses_and_forces(studio, toy_model, tmp_path, monkeypatch):
    data = write_jsonl(tmp_path / "colours.jsonl", colour_rows(24))
    flags = ("--model", str(toy_model), "--data", str(data), "--lora-layers", "-1")
    monkeypatch.setenv("LORA_STUDIO_MEMORY_GB", "64")
    done = lora_studio("plan", *flags, "--json", home=studio.home)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["available_gb"] == 64 and answer["fits"] is True
    assert 0.1 < answer["peak_gb"] < 0.5 and answer["longest_tokens"] > 0

    monkeypatch.setenv("LORA_STUDIO_MEMORY_GB", "0.05")
    figures = json.loads(lora_studio("plan", *flags, "--json", home=studio.home).stdout)
    gbs = [figures["peak_gb"], *(a["peak_gb"] for a in figures["alternatives"])]
    assert figures["alternatives"] and all(gb == round(gb, 3) for gb in gbs), gbs
    done = lora_studio("plan", *flags, home=studio.home)
    assert done.returncode == 0 and "too much" in done.stdout
    assert "what would make it fit:" in done.stdout and "--batch-size 1" in done.stdout
    refused = lora_studio("train", *flags, "--epochs", "1", home=studio.home)
    assert refused.returncode == 2, refused.stderr
    assert "would not fit in memory" in refused.stderr and "Traceback" not in refused.stderr
    assert not [p for p in studio.runs.iterdir() if p.is_dir()]
    forced = lora_studio("train", *flags, "--epochs", "1", "--force", home=studio.home)
    assert forced.returncode == 0, forced.stderr
    assert "memory: needs about" in forced.stdout and "of 0.05 GB available" in forced.stdout


def test_a_bad_budget_setting_is_named(studio, toy_model, tmp_path, monkeypatch):
    data = write_jsonl(tmp_path / "colours.jsonl", colour_rows(24))
    monkeypatch.setenv("LORA_STUDIO_MEMORY_GB", "lots")
    flags = ("--model", str(toy_model), "--data", str(data), "--lora-layers", "2")
    done = lora_studio("plan", *flags, home=studio.home)
    assert done.returncode == 2 and "LORA_STUDIO_MEMORY_GB = 'lots'" in done.stderr


def test_a_run_that_leaves_layers_frozen_counts_their_kept_outputs(shapes):
    model, params, data = shapes
    every = estimate(model, params, data)
    half = estimate(model, params.model_copy(update={"lora_layers": 2}), data)
    kept_gb = data.tokens * model.hidden * model.dtype_bytes / 1e9
    assert half.data_gb == pytest.approx(every.data_gb + kept_gb)
    dpo = params.model_copy(update={"lora_layers": 2, "method": "dpo"})
    assert estimate(model, dpo, data).data_gb == pytest.approx(every.data_gb)  # SFT only
